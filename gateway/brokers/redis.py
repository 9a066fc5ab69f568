"""The Redis broker: history in a capped stream per channel, live by pub/sub.

Why both: pub/sub alone forgets (a subscriber that blinks loses messages) and
a stream alone cannot wake thousands of nodes cheaply. Publishing is one
Redis Function (``gateway.lua``) that appends to the stream and publishes
the id with the payload, atomically, so every node delivers the same id,
and any language's Redis client can publish. What a Redis Cluster needs
instead of this module's single link is in ``cluster.py``; both share
``redis_store.py``.

Decisions:

* One pub/sub connection per process, one ``SSUBSCRIBE`` and one
  ``SUBSCRIBE`` per active channel (never a ``PSUBSCRIBE`` firehose). The
  Function publishes by ``SPUBLISH``, as it must on a cluster (one library
  for both); the plain subscription keeps a raw ``PUBLISH`` fire-and-forget
  message deliverable on a single Redis. We own that connection's loop
  instead of redis-py's ``PubSub``, whose reconnect-and-resubscribe happens
  silently: the hub must *know* the link was lost so it can backfill.
* The reader never waits on subscribers: messages are handed to the hub by
  a plain call. A reader that lagged would be cut off by Redis itself
  (``client-output-buffer-limit pubsub``). Every message parsed from what
  one socket read brought is handed over together, at the end of that loop
  turn (``call_soon``), so a burst is fanned out as one batch.
* A half-open TCP link looks alive. The hub's canary publishes to this
  process's own canary name and waits for it on the pub/sub link; after
  ``DEAF_AFTER`` failed round-trips the link is dropped and rebuilt.
* Any broker failure on a request path is ``BrokerUnavailable`` (503 with
  ``Retry-After``), never a silent drop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from gateway.brokers.backoff import Backoff
from gateway.brokers.base import BrokerListener, Published, cancel_and_wait
from gateway.brokers.functions import publish_call
from gateway.brokers.publish_batch import Call, PublishBatch
from gateway.brokers.publish_link import PublishLink, ReadReplies
from gateway.brokers.redis_store import (
    COMMAND_TIMEOUT_S,
    MESSAGE_KINDS,
    SUBSCRIBE_TIMEOUT_S,
    Canary,
    RedisStore,
    connection_options,
    load_library,
    stored,
)
from gateway.errors import BrokerUnavailable
from gateway.settings import Settings

logger = logging.getLogger(__name__)


class RedisBroker(RedisStore):
    def __init__(self, settings: Settings, read_replies: ReadReplies | None = None) -> None:
        super().__init__(settings)
        self._canary = Canary(f"{self.prefix}:canary:{self.node}".encode())
        self._pool = BlockingConnectionPool.from_url(
            settings.redis_url or "", **_pool_options(settings)
        )
        self._redis = Redis(connection_pool=self._pool)
        self._link: AbstractConnection | None = None
        self._confirmed: dict[bytes, asyncio.Event] = {}
        self._reader: asyncio.Task[None] | None = None
        # Concurrent publishes share one pipeline (publish_batch.py) on a
        # connection of their own (publish_link.py).
        self._publish_link = PublishLink(
            self._pool.make_connection, COMMAND_TIMEOUT_S, read_replies
        )
        self._batch = PublishBatch(self._publish_link.send, self._load_functions, self._spawn)

    # -- lifetime -----------------------------------------------------------

    async def start(self, listener: BrokerListener) -> None:
        self._listener = listener
        try:
            await self._load_functions()
        except (RedisError, OSError) as exc:
            logger.warning("Redis not reachable at start (%s); will keep trying", exc)
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def stop(self) -> None:
        if self._reader is not None:
            await cancel_and_wait(self._reader)
            self._reader = None
        await self.stop_housekeeping()
        await self._publish_link.close()
        await self._redis.aclose()
        await self._pool.disconnect()
        self.connected = False

    # -- the Broker protocol: the link ----------------------------------------

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        link = self._link
        if link is None or not self.connected:
            self._channels.discard(channel)
            raise BrokerUnavailable("the broker link is down; try again shortly")
        name = self.base(channel).encode()
        confirmed = self._confirmed.setdefault(name, asyncio.Event())
        try:
            # Replies come in order: the plain subscription's confirms both.
            await link.send_command("SSUBSCRIBE", name)
            await link.send_command("SUBSCRIBE", name)
            await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_TIMEOUT_S)
        except Exception:  # the link's edge: lost mid-send, or no confirmation in time
            self._channels.discard(channel)
            raise BrokerUnavailable("the broker did not confirm the subscription") from None
        self._record_cap(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        name = self.base(channel).encode()
        self._confirmed.pop(name, None)
        if self._link is not None and self.connected:
            await self._link.send_command("SUNSUBSCRIBE", name)
            await self._link.send_command("UNSUBSCRIBE", name)

    async def check_link(self) -> None:
        """Our own canary, published and heard back on the pub/sub link."""
        await self._maybe_announce()
        await self._canary.check(
            lambda token: self._call("PUBLISH", self._canary.name, token), self._deaf
        )

    async def _deaf(self) -> None:
        if self._link is not None:
            logger.warning("pub/sub link is deaf (canary lost); rebuilding it")
            await self._link.disconnect(nowait=True)

    # -- commands -----------------------------------------------------------------

    async def _execute(self, *args: Any) -> Any:
        return await self._redis.execute_command(*args)

    async def _execute_many(self, calls: list[tuple[str | int, ...]]) -> list[Any]:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for call in calls:
                    pipe.execute_command(*call)
                return list(await pipe.execute(raise_on_error=False))
        except (RedisError, OSError) as exc:
            return [exc] * len(calls)

    async def _publish_call(self, call: Call) -> Any:
        try:
            return await self._batch.call(call)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None

    def publish_soon(self, channel: str, event: str, data: str, done: Published) -> None:
        """``publish``, its outcome handed to ``done`` (base.py): a call in the next pipeline."""
        call = publish_call(self.prefix, channel, event, data, self.settings.history_size)

        def settle(reply: Any) -> None:
            if isinstance(reply, (RedisError, OSError)):
                done(_unavailable(reply))
            elif isinstance(reply, BaseException):
                done(reply)
            else:
                done(stored(channel, event, data, reply))

        self._batch.call_soon(call, settle)

    async def _load_functions(self) -> None:
        await load_library(self._redis.execute_command, self.prefix)

    # -- the pub/sub link -------------------------------------------------------

    async def _read_forever(self) -> None:
        backoff = Backoff()
        restored = False
        while True:
            try:
                await self._open_link()
                backoff.reset()
                if restored and self._listener is not None:
                    self._listener.on_link_restored()
                restored = True
                await self._pump()
            except Exception as exc:  # the edge of the link: any failure means rebuild it
                logger.warning("pub/sub link lost (%s: %s); reconnecting", type(exc).__name__, exc)
            finally:
                self.connected = False
                await self._close_link()
            await asyncio.sleep(backoff.next_delay())

    async def _open_link(self) -> None:
        link = self._pool.make_connection()
        self._link = link
        await link.connect()
        await self._load_functions()
        names = [self.base(channel).encode() for channel in self._channels]
        await link.send_command("SUBSCRIBE", self._canary.name)
        for start in range(0, len(names), 500):
            await link.send_command("SSUBSCRIBE", *names[start : start + 500])
            await link.send_command("SUBSCRIBE", *names[start : start + 500])
        self.connected = True

    async def _pump(self) -> None:
        link = self._link
        assert link is not None
        while True:
            reply = await link.read_response(timeout=float("inf"), disconnect_on_error=True)
            self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        kind, name, payload = reply[0], reply[1], reply[2]
        canary = kind in MESSAGE_KINDS and name == self._canary.name
        self._canary.heard(payload if canary else None)
        if kind in MESSAGE_KINDS and not canary:
            self._received(name, payload)
        elif kind == b"subscribe":
            self._confirmed.setdefault(name, asyncio.Event()).set()

    async def _close_link(self) -> None:
        for event in self._confirmed.values():
            event.clear()
        link, self._link = self._link, None
        if link is not None:
            await link.disconnect(nowait=True)


POOL_WAIT_S = 10.0


def _pool_options(settings: Settings) -> dict[str, Any]:
    return {
        **connection_options(settings),
        # Blocking: a burst of reads waits for a free connection (up to the
        # timeout) instead of failing as a non-blocking pool does past its size.
        # The wait is longer than a command's: in a storm of joins (10,000
        # clients on 4 channels each) the loop itself is the queue, and 2 s
        # refused thousands of joins that would have been served.
        "max_connections": 64,
        "timeout": POOL_WAIT_S,
        "retry_on_error": [],
    }


def _unavailable(exc: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(f"the broker is unavailable: {exc}")
