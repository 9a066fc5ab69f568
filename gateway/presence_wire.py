"""Presence's shapes: the join/leave event on each wire, the snapshot, the store port.

* A ``PresenceEvent`` travels the same road as a message (a subscription's
  bounded queue, the fast-path sink, a batch built once for every
  listener), so it *is* a ``Message`` without an id: no ``id:`` line, no
  cursor, never history, never deduplicated. Only its encodings differ:
  SSE ``event: join`` / ``leave`` with ``data: {"user","info"}`` (on the
  several-channel ``/sse`` the data carries the ``channel`` too), WebSocket
  ``{"type":"join"|"leave","channel","user","info"}``.
* ``PresenceStore`` is the port the core calls (habit 13): the embedded
  broker's is in memory (brokers/presence_memory.py), Redis's is three
  functions (brokers/presence_redis.py, presence.lua).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.message import Message, sse_frame

JOIN = "join"
LEAVE = "leave"


@dataclass(eq=False, slots=True)
class PresenceEvent(Message):
    """A user's first connection arrived (``join``) or their last one left (``leave``).

    ``data`` is the ``{"user","info"}`` JSON; every encoding is built once
    (``ws_frame`` is Message's, over this ``ws_text``).
    """

    @classmethod
    def of(cls, channel: str, kind: str, user: str, info: str) -> PresenceEvent:
        """``info``: the JSON text of the user's info object, or ``null``."""
        data = b'{"user":' + orjson.dumps(user) + b',"info":' + info.encode() + b"}"
        return cls(channel, kind, data.decode())

    @property
    def json(self) -> bytes:
        if self._json is None:
            self._json = b'{"channel":' + orjson.dumps(self.channel) + b"," + self.data[1:].encode()
        return self._json

    @property
    def ws_text(self) -> str:
        if self._ws is None:
            self._ws = '{"type":"' + self.event + '",' + self.json[1:].decode()
        return self._ws

    @property
    def mux_sse(self) -> bytes:
        if self._mux_sse is None:
            self._mux_sse = b"event: " + self.event.encode() + b"\ndata: " + self.json + b"\n\n"
        return self._mux_sse

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = sse_frame(self.event, self.data)
        return self._sse


# One user's change on one node: (user, connections here now (0: gone), info JSON text).
Change = tuple[str, int, str]
# A store's announcement: channel, joins and leaves as (user, info), users on the channel after.
Announce = Callable[[str, list[tuple[str, str]], list[tuple[str, str]], int], None]


@dataclass(frozen=True, slots=True)
class Member:
    user: str
    info: str  # JSON text
    connections: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    channel: str
    users: int
    connections: int
    members: list[Member] | None  # None past GATEWAY_PRESENCE_MAX_MEMBERS: counts only

    def body(self) -> bytes:
        head: dict[str, Any] = {
            "channel": self.channel,
            "users": self.users,
            "connections": self.connections,
        }
        if self.members is None:
            return orjson.dumps({**head, "members": None, "counts_only": True})
        parts = [
            b'{"user":'
            + orjson.dumps(m.user)
            + b',"info":'
            + m.info.encode()
            + b',"connections":'
            + str(m.connections).encode()
            + b"}"
            for m in sorted(self.members, key=lambda m: m.user)
        ]
        return orjson.dumps(head)[:-1] + b',"members":[' + b",".join(parts) + b"]}"


class PresenceStore(Protocol):
    """Where members are kept for every node; each call is atomic on its channel.

    ``update`` and ``sweep`` announce the joins and leaves they produced to
    every node (``announce``), exactly once across all nodes and calls.
    """

    node: str

    async def start(self, announce: Announce) -> None: ...

    async def stop(self) -> None: ...

    async def update(self, channel: str, changes: list[Change]) -> None:
        """Set this node's connection count of each user (0: gone); renews this node's lease."""

    async def sweep(self, channel: str, mine: bool) -> bool:
        """Drop the members of nodes whose lease ran out; renew ours when ``mine``.

        Returns whether our lease was still there (False: presence was lost
        here, Redis wiped or we were swept as dead: re-assert every member).
        """

    async def snapshot(self, channel: str, most: int) -> Snapshot: ...
