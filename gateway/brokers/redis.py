"""The Redis broker: history in a capped stream per channel, live by pub/sub.

Why both: pub/sub alone forgets (a subscriber that blinks loses messages) and
a stream alone cannot wake thousands of nodes cheaply. Publishing is one
Redis Function (``gateway.lua``) that appends to the stream and publishes
the id with the payload, atomically, so every node delivers the same id,
and any language's Redis client can publish.

Decisions:

* One pub/sub connection per process, one ``SUBSCRIBE`` per active channel
  (never a ``PSUBSCRIBE`` firehose). We own that connection's loop instead of
  redis-py's ``PubSub``, whose reconnect-and-resubscribe happens silently:
  the hub must *know* the link was lost so it can backfill from history.
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
import secrets
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from gateway.brokers import functions
from gateway.brokers.backoff import Backoff
from gateway.brokers.base import BrokerListener, History
from gateway.brokers.functions import channel_key, missing_function, publish_call
from gateway.brokers.presence_redis import PRESENCE_MARKER
from gateway.errors import BrokerUnavailable
from gateway.message import START, Cursor, Message, Position, format_position, parse_position
from gateway.settings import Settings

logger = logging.getLogger(__name__)

MARKER = b"\x00gw\x00"
SUBSCRIBE_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 2.0
DEAF_AFTER = 2  # failed canaries in a row before the pub/sub link is rebuilt
ANNOUNCE_EVERY_S = 10.0  # each node says its settings in the deployment's roll call
ANNOUNCE_TTL_S = 35.0  # a node not heard of for this long has left the roll call


class RedisBroker:
    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url
        self.settings = settings
        self.prefix = settings.redis_prefix
        self.node = secrets.token_hex(4)
        self.roll_call = f"{self.prefix}:nodes"
        self._announced_at = 0.0
        self._disagreements: set[str] = set()
        self.canary_name = f"{self.prefix}:canary:{self.node}".encode()
        self.connected = False
        self._pool = BlockingConnectionPool.from_url(settings.redis_url, **_pool_options(settings))
        self._redis = Redis(connection_pool=self._pool)
        self._listener: BrokerListener | None = None
        self._link: AbstractConnection | None = None
        self._channels: set[str] = set()
        self._confirmed: dict[bytes, asyncio.Event] = {}
        self._canaries: dict[bytes, asyncio.Future[None]] = {}
        self._failed_canaries = 0
        self._heard_at = 0.0  # when the pub/sub link last delivered anything
        self._reader: asyncio.Task[None] | None = None
        self._burst: list[Message] = []  # parsed, not yet handed to the listener
        # Presence joins and leaves, heard on a channel's name (brokers/presence_redis.py).
        self.presence_sink: Callable[[bytes, bytes], None] | None = None

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
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            self._reader = None
        await self._redis.aclose()
        await self._pool.disconnect()
        self.connected = False

    # -- the Broker protocol ------------------------------------------------

    async def publish(self, channel: str, event: str, data: str) -> Message:
        cap = self.settings.history_size
        raw = await self._call(*publish_call(self.prefix, channel, event, data, cap))
        epoch, _, position = raw.decode().partition(":")
        return Message(channel, event, data, epoch, parse_position(position))

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        link = self._link
        if link is None or not self.connected:
            self._channels.discard(channel)
            raise BrokerUnavailable("the broker link is down; try again shortly")
        name = self.base(channel).encode()
        confirmed = self._confirmed.setdefault(name, asyncio.Event())
        try:
            await link.send_command("SUBSCRIBE", name)
            await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError):
            self._channels.discard(channel)
            raise BrokerUnavailable("the broker did not confirm the subscription") from None
        # The channel's cap, for publishes that pass none (redis-cli): this deployment's.
        try:
            await self._call("SET", name, self.settings.history_size)
        except BrokerUnavailable:
            logger.debug("recording the history cap of %s failed", channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        name = self.base(channel).encode()
        self._confirmed.pop(name, None)
        if self._link is not None and self.connected:
            await self._link.send_command("UNSUBSCRIBE", name)

    async def history(self, channel: str, cursor: Cursor, limit: int) -> History:
        after = "0-0" if cursor.epoch is None else format_position(cursor.position)
        read = await self._read(channel, "after", after, limit)
        if cursor.epoch is None:
            return History(read.messages, gap=False)
        if read.epoch != cursor.epoch:
            return History(read.messages, gap=True)
        # Lost after the cursor: an entry after it deleted (XDEL), or the
        # stream trimmed past it (the cursor is older than the first kept).
        lost = read.max_deleted > cursor.position or cursor.position < read.first_kept
        return History(read.messages, gap=lost)

    async def tail(self, channel: str, count: int) -> list[Message]:
        return (await self._read(channel, "tail", str(count), count)).messages

    async def latest(self, channel: str) -> Cursor:
        messages = await self.tail(channel, 1)
        return messages[-1].cursor or START if messages else START

    async def check_link(self) -> None:
        """Our own canary, published and heard back on the pub/sub link.

        A process so busy that the canary comes late is not deaf: when the
        link delivered anything within the canary's timeout, it counts.
        """
        if time.monotonic() - self._announced_at > ANNOUNCE_EVERY_S:
            try:
                await self._announce()
            except (RedisError, OSError):
                logger.debug("roll call failed", exc_info=True)
        token = secrets.token_hex(8).encode()
        loop = asyncio.get_running_loop()
        arrived = loop.create_future()
        self._canaries[token] = arrived
        sent_at = loop.time()
        try:
            await self._call("PUBLISH", self.canary_name, token)
            try:
                await asyncio.wait_for(arrived, COMMAND_TIMEOUT_S)
            except TimeoutError:
                if self._heard_at < sent_at:
                    raise
            self._failed_canaries = 0
        except BaseException:
            self._failed_canaries += 1
            if self._failed_canaries >= DEAF_AFTER and self._link is not None:
                logger.warning("pub/sub link is deaf (canary lost); rebuilding it")
                self._failed_canaries = 0
                await self._link.disconnect(nowait=True)
            raise
        finally:
            self._canaries.pop(token, None)

    # -- helpers --------------------------------------------------------------

    def base(self, channel: str) -> str:
        return channel_key(self.prefix, channel)

    async def _call(self, *args: Any) -> Any:
        try:
            return await self._redis.execute_command(*args)
        except (RedisError, OSError) as exc:
            if missing_function(exc):
                await self._load_functions()
                return await self._redis.execute_command(*args)
            raise BrokerUnavailable(f"the broker is unavailable: {exc}") from None

    async def _read(self, channel: str, mode: str, arg: str, count: int) -> _Read:
        reply = await self._call(*functions.read_args(self.prefix, channel, mode, arg, count))
        epoch, deleted, first_kept, entries = reply
        if not epoch:
            return _Read(None, (0, 0), (0, 0), [])
        text = epoch.decode()
        return _Read(
            text,
            parse_position(deleted.decode()),
            parse_position(first_kept.decode()),
            [_entry(channel, text, entry) for entry in entries],
        )

    async def _load_functions(self) -> None:
        """Load this version's library unless it is there; never replace another's.

        The same version's library with other code means a modified build
        shares this Redis under the same version: said loudly, left alone.
        """
        source = functions.library_source(self.prefix)
        name = functions.library_name(self.prefix)
        try:
            await self._redis.execute_command("FUNCTION", "LOAD", source)
            logger.info("loaded the Redis function library %s", name)
            return
        except RedisError as exc:
            if "already exists" not in str(exc):
                raise
        listed = await self._redis.execute_command(
            "FUNCTION", "LIST", "LIBRARYNAME", name, "WITHCODE"
        )
        codes = [_field(library, b"library_code") for library in listed]
        if source.encode() not in codes:
            logger.error(
                "the Redis function library %s on this Redis differs from this node's: "
                "another build under the same version; calls go to the code loaded first",
                name,
            )

    async def _announce(self) -> None:
        """Say this node's history size in the roll call; warn when another node's differs.

        Each publish trims the channel's history to its publisher's
        ``GATEWAY_HISTORY_SIZE``: nodes that disagree take turns cutting
        each other's history. Never silent: said here, once per node.
        """
        self._announced_at = time.monotonic()
        now = time.time()
        size = self.settings.history_size
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.roll_call, {f"{self.node}:{size}": now})
            pipe.zremrangebyscore(self.roll_call, "-inf", now - ANNOUNCE_TTL_S)
            pipe.expire(self.roll_call, int(ANNOUNCE_TTL_S) * 2)
            pipe.zrange(self.roll_call, 0, -1)
            *_, members = await pipe.execute()
        for member in members:
            node, _, theirs = member.decode().partition(":")
            if node != self.node and theirs != str(size) and member not in self._disagreements:
                self._disagreements.add(member)
                logger.warning(
                    "GATEWAY_HISTORY_SIZE differs between gateway nodes on this Redis: "
                    "%s here, %s on node %s; each publish trims a channel's history to "
                    "its publisher's setting: give every node the same",
                    size,
                    theirs,
                    node,
                )

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
        names = [self.canary_name, *(self.base(channel).encode() for channel in self._channels)]
        for start in range(0, len(names), 500):
            await link.send_command("SUBSCRIBE", *names[start : start + 500])
        self.connected = True

    async def _pump(self) -> None:
        link = self._link
        assert link is not None
        while True:
            reply = await link.read_response(timeout=float("inf"), disconnect_on_error=True)
            self._heard_at = asyncio.get_running_loop().time()
            self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        kind, name, payload = reply[0], reply[1], reply[2]
        if kind == b"message":
            if name == self.canary_name:
                arrived = self._canaries.get(payload)
                if arrived is not None and not arrived.done():
                    arrived.set_result(None)
            elif payload.startswith(PRESENCE_MARKER):  # presence, not a message
                if self.presence_sink is not None:
                    self.presence_sink(name, payload)
            else:
                if not self._burst:
                    asyncio.get_running_loop().call_soon(self._hand_over)
                self._burst.append(self._decode(name, payload))
        elif kind == b"subscribe":
            self._confirmed.setdefault(name, asyncio.Event()).set()

    def _hand_over(self) -> None:
        burst, self._burst = self._burst, []
        if self._listener is not None:
            self._listener.on_messages(burst)

    def _decode(self, name: bytes, payload: bytes) -> Message:
        channel = name.decode()[len(self.prefix) + 2 : -1]
        if not payload.startswith(MARKER):
            return Message(channel, "message", payload.decode(errors="replace"))
        message_id, event, data = payload[len(MARKER) :].split(b"\x00", 2)
        epoch, _, position = message_id.decode().partition(":")
        parsed = parse_position(position)
        return Message(channel, event.decode(), data.decode(), epoch, parsed, parsed[0] / 1000)

    async def _close_link(self) -> None:
        for event in self._confirmed.values():
            event.clear()
        link, self._link = self._link, None
        if link is not None:
            await link.disconnect(nowait=True)


class _Read(NamedTuple):
    epoch: str | None
    max_deleted: Position
    first_kept: Position  # (0, 0) while nothing was trimmed
    messages: list[Message]


def _field(reply: list[Any], name: bytes) -> Any:
    """A field of a RESP2 reply laid out as name, value, name, value …"""
    fields = dict(zip(reply[::2], reply[1::2], strict=True))
    return fields.get(name)


def _entry(channel: str, epoch: str, entry: list[Any]) -> Message:
    position_raw, fields = entry
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    position = parse_position(position_raw.decode())
    return Message(
        channel, values[b"e"].decode(), values[b"d"].decode(), epoch, position, position[0] / 1000
    )


def _pool_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_connect_timeout": COMMAND_TIMEOUT_S,
        "socket_timeout": COMMAND_TIMEOUT_S,
        "socket_keepalive": True,
        # Blocking: a burst of reads waits for a free connection (up to the
        # timeout) instead of failing as a non-blocking pool does past its size.
        "max_connections": 64,
        "timeout": COMMAND_TIMEOUT_S,
        "retry_on_error": [],
        # RESP2: pub/sub messages are plain replies on the link we read
        # (redis-py 8 speaks RESP3 by default, where they are push frames).
        "protocol": 2,
    }
    if (
        settings.redis_url
        and settings.redis_url.startswith("rediss://")
        and not settings.redis_ssl_verify
    ):
        options["ssl_cert_reqs"] = "none"
    return options
