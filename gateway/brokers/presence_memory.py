"""Presence for the embedded broker: one process, so one node, its table in memory.

The same port as Redis's (presence_wire.PresenceStore): joins and leaves
are announced by a plain call, as the embedded broker hands over messages.
There are no other nodes whose lease could run out, so ``sweep`` only says
our lease is there.
"""

from __future__ import annotations

from gateway.presence_table import ChannelTable
from gateway.presence_wire import Announce, Change, Snapshot


class MemoryPresenceStore:
    def __init__(self) -> None:
        self.node = "local"
        self._channels: dict[str, ChannelTable] = {}
        self._announce: Announce | None = None

    async def start(self, announce: Announce) -> None:
        self._announce = announce

    async def stop(self) -> None:
        self._announce = None

    async def update(self, channel: str, changes: list[Change]) -> None:
        table = self._channels.get(channel)
        if table is None:
            table = self._channels[channel] = ChannelTable()
        joins, leaves = table.update(self.node, changes)
        if not table.counts:
            del self._channels[channel]
        if (joins or leaves) and self._announce is not None:
            self._announce(channel, joins, leaves, table.users)

    async def sweep(self, channel: str, mine: bool) -> bool:
        return True

    async def snapshot(self, channel: str, most: int) -> Snapshot:
        table = self._channels.get(channel)
        if table is None:
            return Snapshot(channel, 0, 0, [])
        return table.snapshot(channel, most)
