"""One pub/sub connection to one primary of a Redis Cluster, read by its own task.

``cluster.py``'s ``ClusterBroker`` owns one per primary and decides which
channels each carries; a link only sends ``SSUBSCRIBE``/``SUNSUBSCRIBE``,
matches each answer to its request (answers come in order; an error such as
``MOVED`` names no channel, so it answers the oldest request), and reports
messages, pushed ``sunsubscribe``s and its own loss to its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any, Protocol

from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError, RedisError, ResponseError

from gateway.brokers.base import cancel_and_wait
from gateway.brokers.redis_store import MESSAGE_KINDS, SUBSCRIBE_TIMEOUT_S, Canary

logger = logging.getLogger(__name__)


class LinkOwner(Protocol):
    def _map_changed(self) -> None:
        """Something may have moved: read the slot map again and re-home channels."""

    def _received(self, name: bytes, payload: bytes) -> None:
        """A message of a channel."""

    def _unsubscribed(self, link: ShardLink, name: bytes) -> None:
        """A ``sunsubscribe`` the node pushed: the name's slot left it."""


class ShardLink:
    """One pub/sub connection to one primary, read by its own task."""

    def __init__(self, node: str, conn: Connection, canary: bytes, broker: LinkOwner) -> None:
        self.node = node
        self.conn = conn
        self.canary = Canary(canary)
        self.broker = broker
        self.alive = False
        self._asked: deque[tuple[bytes, asyncio.Future[bool]]] = deque()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.conn.connect()
        await self._check_primary()
        self.alive = True
        self._reader = asyncio.get_running_loop().create_task(self._pump())
        if self.canary.name not in await self.subscribe([self.canary.name]):
            await self.close()
            raise ConnectionError(f"{self.node} refused the canary's subscription")

    async def _check_primary(self) -> None:
        """Refuse a node that is a replica now: its subscriptions may hear nothing.

        Redis 7 accepts ``SSUBSCRIBE`` on a replica of the slot's primary, but
        a primary forwards its shard's messages only to the replicas it knows
        of. A primary just failed over is a replica at once and its new
        primary learns so by gossip, a second or more later: a link opened
        there on a slot map read a moment too early (another node still
        listed the old primary) subscribed fine, heard nothing meanwhile,
        then delivered live messages after that silent hole (seen in
        test_manual_failover_of_the_channels_primary under load).
        """
        await self.conn.send_command("ROLE")
        role = await self.conn.read_response()
        if not role or role[0] != b"master":
            await self.conn.disconnect(nowait=True)
            raise ConnectionError(f"{self.node} is not a primary now")

    async def send(self, *args: Any) -> None:
        try:
            await self.conn.send_command(*args)
        except (RedisError, OSError):
            self._lost()

    async def subscribe(self, names: list[bytes]) -> set[bytes]:
        """``SSUBSCRIBE`` each name (their slots differ); the names the node confirmed."""
        loop = asyncio.get_running_loop()
        asked = [(name, loop.create_future()) for name in names]
        self._asked.extend(asked)
        for name, _ in asked:
            await self.send("SSUBSCRIBE", name)
        done = set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                for name, answer in asked:
                    if await answer:
                        done.add(name)
        return done

    async def close(self) -> None:
        self._lost()
        if self._reader is not None:
            await cancel_and_wait(self._reader)
        await self.conn.disconnect(nowait=True)

    def _lost(self) -> None:
        if self.alive:
            self.alive = False
            self.broker._map_changed()
        while self._asked:
            _, answer = self._asked.popleft()
            if not answer.done():
                answer.set_result(False)

    async def _pump(self) -> None:
        try:
            while True:
                try:
                    reply = await self.conn.read_response(
                        timeout=float("inf"), disconnect_on_error=True
                    )
                except ResponseError as refused:  # MOVED, CLUSTERDOWN: for the oldest ask
                    logger.info("%s refused a subscription: %s", self.node, refused)
                    self._answer(None, False)
                    self.broker._map_changed()
                    continue
                self._dispatch(reply)
        except Exception as exc:  # the edge of the link
            if self.alive:
                logger.warning("pub/sub link to %s lost (%s)", self.node, exc)
        finally:
            self._lost()

    def _dispatch(self, reply: Any) -> None:
        kind, name, payload = reply[0], reply[1], reply[2]
        canary = kind in MESSAGE_KINDS and name == self.canary.name
        self.canary.heard(payload if canary else None)
        if kind in MESSAGE_KINDS and not canary:
            self.broker._received(name, payload)
        elif kind == b"ssubscribe":
            self._answer(name, True)
        elif kind == b"sunsubscribe":
            self.broker._unsubscribed(self, name)

    def _answer(self, name: bytes | None, ok: bool) -> None:
        if not self._asked:
            return
        asked, answer = self._asked.popleft()
        assert name is None or name == asked, (name, asked)
        if not answer.done():
            answer.set_result(ok)
