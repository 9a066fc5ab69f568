"""The presence bookkeeping of one store, in memory: what presence.lua does, in Python.

The embedded broker keeps presence here, and the property tests check the
rules on it (tests/test_presence_units.py), the same rules the Redis
functions follow key for key:

* ``counts[(node, user)]``: connections a node holds for a user (``gw:{C}:pm``);
* ``nodes[user]``: how many nodes hold the user (``gw:{C}:pu``): the user
  joins when it goes 0 -> 1, leaves when it goes 1 -> 0, whatever the
  number of connections or tabs behind it;
* ``info[user]``: the last info a node gave for the user (``gw:{C}:pi``).
"""

from __future__ import annotations

from gateway.presence_wire import Change, Member, Snapshot

Said = list[tuple[str, str]]  # (user, info) joined or left


class ChannelTable:
    __slots__ = ("counts", "info", "nodes")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.nodes: dict[str, int] = {}
        self.info: dict[str, str] = {}

    def update(self, node: str, changes: list[Change]) -> tuple[Said, Said]:
        """Set ``node``'s counts; the joins and leaves this produced."""
        joins: Said = []
        leaves: Said = []
        for user, count, info in changes:
            old = self.counts.get((node, user), 0)
            if count > 0:
                self.counts[(node, user)] = count
                self.info[user] = info
                if old == 0 and self._add_node(user):
                    joins.append((user, info))
            elif old > 0:
                self._drop(node, user, leaves)
        return joins, leaves

    def drop_nodes(self, dead: set[str]) -> Said:
        """Every member of the ``dead`` nodes gone; the leaves this produced."""
        leaves: Said = []
        for node, user in [key for key in self.counts if key[0] in dead]:
            self._drop(node, user, leaves)
        return leaves

    def snapshot(self, channel: str, most: int) -> Snapshot:
        per_user: dict[str, int] = {}
        for (_, user), count in self.counts.items():
            per_user[user] = per_user.get(user, 0) + count
        total = sum(per_user.values())
        if len(per_user) > most:
            return Snapshot(channel, len(per_user), total, None)
        members = [Member(u, self.info.get(u, "null"), n) for u, n in per_user.items()]
        return Snapshot(channel, len(per_user), total, members)

    @property
    def users(self) -> int:
        return len(self.nodes)

    def _add_node(self, user: str) -> bool:
        self.nodes[user] = self.nodes.get(user, 0) + 1
        return self.nodes[user] == 1

    def _drop(self, node: str, user: str, leaves: Said) -> None:
        del self.counts[(node, user)]
        left = self.nodes.get(user, 0) - 1
        if left > 0:
            self.nodes[user] = left
            return
        self.nodes.pop(user, None)
        leaves.append((user, self.info.pop(user, "null")))
