"""What the single-Redis and the Redis Cluster broker share: history, publish, decoding.

Both keep a channel's history in a capped stream and publish through the
same Function (``gateway.lua``); they differ only in how commands are
routed (one connection pool, or redis-py's ``RedisCluster``) and in how the
pub/sub link is held (one connection, or one per shard). A subclass
provides ``_execute`` (one command, routed), ``_load_functions`` and the
link; everything a request path reads or writes is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from redis.exceptions import RedisError

from gateway.brokers import functions
from gateway.brokers.base import BrokerListener, History, cancel_and_wait
from gateway.brokers.functions import channel_key, missing_function, publish_call
from gateway.errors import BrokerUnavailable
from gateway.message import START, Cursor, Message, Position, format_position, parse_position
from gateway.settings import Settings

logger = logging.getLogger(__name__)

MARKER = b"\x00gw\x00"
PRESENCE_MARKER = b"\x00gwp\x00"  # presence events on a channel's name (presence_redis.py)
SUBSCRIBE_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 2.0
DEAF_AFTER = 2  # failed canaries in a row before a pub/sub link is rebuilt
ANNOUNCE_EVERY_S = 10.0  # each node says its settings in the deployment's roll call
ANNOUNCE_TTL_S = 35.0  # a node not heard of for this long has left the roll call
MESSAGE_KINDS = (b"message", b"smessage")
LATEST_PIPELINE_MOST = 500


class RedisStore:
    """History, publish and the roll call over ``_execute``; live messages to the listener."""

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url
        self.settings = settings
        self.prefix = functions.deployment_prefix(settings.redis_prefix, settings.redis_url)
        self.node = secrets.token_hex(4)
        self.roll_call = f"{self.prefix}:nodes"
        self._announced_at = 0.0
        self._disagreements: set[str] = set()
        self.connected = False
        self._listener: BrokerListener | None = None
        self._channels: set[str] = set()
        self._burst: list[Message] = []  # parsed, not yet handed to the listener
        self._caps_due: set[str] = set()
        self._housekeeper: asyncio.Task[None] | None = None  # owned here: stop_housekeeping()
        self._tasks: set[asyncio.Future[None]] = set()
        self._latest_waiting: dict[str, asyncio.Future[Cursor]] = {}
        # Presence joins and leaves, heard on a channel's name (brokers/presence_redis.py).
        self.presence_sink: Callable[[bytes, bytes], None] | None = None

    async def _execute(self, *args: Any) -> Any:
        raise NotImplementedError

    async def _load_functions(self) -> None:
        raise NotImplementedError

    # -- the Broker protocol: what goes through commands ------------------------

    async def publish(self, channel: str, event: str, data: str) -> Message:
        cap = self.settings.history_size
        raw = await self._publish_call(publish_call(self.prefix, channel, event, data, cap))
        return stored(channel, event, data, raw)

    async def _publish_call(self, call: tuple[str | int, ...]) -> Any:
        """One publish's ``FCALL``, its reply the id (the single Redis batches them)."""
        return await self._call(*call)

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
        """The channel's newest id; the joins of one loop turn ask Redis in one pipeline.

        Every first subscriber of a channel on this node asks it. A storm of
        10,000 clients on 4 channels each is 30,000 joins: one command each
        starved the connection pool (joins refused after waiting 10 s);
        a pipeline per loop turn is one round trip for all of them.
        """
        waiting = self._latest_waiting.get(channel)
        if waiting is None:
            if not self._latest_waiting:
                self._spawn(self._read_latest())
            waiting = asyncio.get_running_loop().create_future()
            self._latest_waiting[channel] = waiting
        return await asyncio.shield(waiting)

    async def _read_latest(self) -> None:
        await asyncio.sleep(0)  # let this loop turn's joins ask too
        asked, self._latest_waiting = self._latest_waiting, {}
        channels = list(asked)
        for start in range(0, len(channels), LATEST_PIPELINE_MOST):
            batch = channels[start : start + LATEST_PIPELINE_MOST]
            calls = [functions.read_args(self.prefix, c, "tail", "1", 1) for c in batch]
            try:
                replies = await self._call_many(calls)
            except BrokerUnavailable as exc:
                replies = [exc] * len(batch)
            for channel, reply in zip(batch, replies, strict=True):
                future = asked[channel]
                if future.done():
                    continue
                if isinstance(reply, BaseException):
                    future.set_exception(_unavailable(reply))
                    future.exception()  # retrieved: every asker may have left
                else:
                    messages = self._parse_read(channel, reply).messages
                    future.set_result(messages[-1].cursor or START if messages else START)

    async def _call_many(self, calls: list[tuple[str | int, ...]]) -> list[Any]:
        """Several commands in one round trip; a failed one is its exception in the list."""
        replies = await self._execute_many(calls)
        if any(isinstance(r, Exception) and missing_function(r) for r in replies):
            await self._load_functions()
            replies = await self._execute_many(calls)
        return replies

    async def _execute_many(self, calls: list[tuple[str | int, ...]]) -> list[Any]:
        """Default: one command at a time (a subclass pipelines)."""
        replies: list[Any] = []
        for call in calls:
            try:
                replies.append(await self._execute(*call))
            except (RedisError, OSError) as exc:
                replies.append(exc)
        return replies

    def _spawn(self, work: Awaitable[None]) -> None:
        """A task owned by the store: cancelled by ``stop_housekeeping``."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record_cap(self, channel: str) -> None:
        """Note the channel for its cap record (for publishes that pass none: redis-cli).

        Written later, a batch at a time (``_write_caps``), not on the join's
        path: 10,000 clients joining 30,000 channels at once would otherwise
        queue 30,000 more commands behind the joins' own (measured: the pool
        ran dry and joins were refused).
        """
        self._caps_due.add(channel)

    async def _write_caps(self) -> None:
        due, self._caps_due = self._caps_due, set()
        size = self.settings.history_size
        channels = list(due)
        for start in range(0, len(channels), LATEST_PIPELINE_MOST):
            batch = channels[start : start + LATEST_PIPELINE_MOST]
            replies = await self._call_many([("SET", self.base(c), size) for c in batch])
            failed = [c for c, r in zip(batch, replies, strict=True) if isinstance(r, Exception)]
            if failed:
                logger.debug("recording the history cap of %d channels failed", len(failed))
                self._caps_due.update(failed)

    async def stop_housekeeping(self) -> None:
        tasks = [*self._tasks, *([self._housekeeper] if self._housekeeper else [])]
        self._housekeeper = None
        for task in tasks:
            task.cancel()
        for task in tasks:  # (they run redis-py commands, which can lose a cancellation)
            with contextlib.suppress(Exception):
                await cancel_and_wait(task)

    # -- helpers --------------------------------------------------------------

    def base(self, channel: str) -> str:
        return channel_key(self.prefix, channel)

    async def call(self, *args: Any) -> Any:
        """One command, routed, for a neighbour of the broker (presence); 503 on failure."""
        return await self._call(*args)

    async def load_functions(self) -> None:
        await self._load_functions()

    async def _call(self, *args: Any) -> Any:
        try:
            return await self._execute(*args)
        except (RedisError, OSError) as exc:
            if missing_function(exc):
                try:
                    await self._load_functions()
                    return await self._execute(*args)
                except (RedisError, OSError) as again:
                    exc = again
            raise BrokerUnavailable(f"the broker is unavailable: {exc}") from None

    async def _read(self, channel: str, mode: str, arg: str, count: int) -> _Read:
        reply = await self._call(*functions.read_args(self.prefix, channel, mode, arg, count))
        return self._parse_read(channel, reply)

    def _parse_read(self, channel: str, reply: Any) -> _Read:
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

    async def _maybe_announce(self) -> None:
        """Each canary tick: the roll call now and then, and the caps noted since."""
        if time.monotonic() - self._announced_at > ANNOUNCE_EVERY_S:
            try:
                await self._announce()
            except (RedisError, OSError):
                logger.debug("roll call failed", exc_info=True)
        running = self._housekeeper is not None and not self._housekeeper.done()
        if self._caps_due and not running:
            self._housekeeper = asyncio.get_running_loop().create_task(self._write_caps())

    async def _announce(self) -> None:
        """Say this node's history size in the roll call; warn when another node's differs.

        Each publish trims the channel's history to its publisher's
        ``GATEWAY_HISTORY_SIZE``: nodes that disagree take turns cutting
        each other's history. Never silent: said here, once per node.
        """
        self._announced_at = time.monotonic()
        now = time.time()
        size = self.settings.history_size
        member = f"{self.node}:{size}"
        await self._execute("ZADD", self.roll_call, now, member)
        await self._execute("ZREMRANGEBYSCORE", self.roll_call, "-inf", now - ANNOUNCE_TTL_S)
        await self._execute("EXPIRE", self.roll_call, int(ANNOUNCE_TTL_S) * 2)
        for member in await self._execute("ZRANGE", self.roll_call, 0, -1):
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

    # -- what pub/sub links hand over ---------------------------------------------

    def _received(self, name: bytes, payload: bytes) -> None:
        """A message of a channel: handed over with the rest of this socket read's."""
        if payload.startswith(PRESENCE_MARKER):  # presence joins and leaves, not a message
            if self.presence_sink is not None:
                self.presence_sink(name, payload)
            return
        if not self._burst:
            asyncio.get_running_loop().call_soon(self._hand_over)
        self._burst.append(self._decode(name, payload))

    def _hand_over(self) -> None:
        burst, self._burst = self._burst, []
        if self._listener is not None:
            self._listener.on_messages(burst)

    def _channel_of(self, name: bytes) -> str:
        """The channel of a pub/sub name (``base``'s inverse)."""
        return name.decode()[len(self.prefix) + 2 : -1]

    def _decode(self, name: bytes, payload: bytes) -> Message:
        channel = self._channel_of(name)
        if not payload.startswith(MARKER):
            return Message(channel, "message", payload.decode(errors="replace"))
        message_id, event, data = payload[len(MARKER) :].split(b"\x00", 2)
        epoch, _, position = message_id.decode().partition(":")
        parsed = parse_position(position)
        return Message(channel, event.decode(), data.decode(), epoch, parsed, parsed[0] / 1000)


def stored(channel: str, event: str, data: str, reply: bytes) -> Message:
    """The message a publish's ``FCALL`` stored: its reply is the id."""
    epoch, _, position = reply.decode().partition(":")
    return Message(channel, event, data, epoch, parse_position(position))


class Canary:
    """A pub/sub link's canary: a token published to the link's own name, heard back on it.

    A process so busy that the canary comes late is not deaf: when the link
    delivered anything within the canary's timeout, it counts. After
    ``DEAF_AFTER`` failed round-trips in a row, ``deaf()`` drops the link.
    """

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.heard_at = 0.0  # when the link last delivered anything
        self._waiting: dict[bytes, asyncio.Future[None]] = {}
        self._failed = 0

    def heard(self, payload: bytes | None = None) -> None:
        """The link delivered something (this canary's ``payload``, when given)."""
        self.heard_at = asyncio.get_running_loop().time()
        arrived = self._waiting.get(payload) if payload is not None else None
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

    async def check(
        self, send: Callable[[bytes], Awaitable[Any]], deaf: Callable[[], Awaitable[None]]
    ) -> None:
        token = secrets.token_hex(8).encode()
        loop = asyncio.get_running_loop()
        arrived = self._waiting[token] = loop.create_future()
        sent_at = loop.time()
        try:
            await send(token)
        except BaseException:
            self._waiting.pop(token, None)
            raise  # not sent (the command pool busy, Redis away): no word on the link's health
        try:
            try:
                await asyncio.wait_for(arrived, COMMAND_TIMEOUT_S)
            except TimeoutError:
                if self.heard_at < sent_at:
                    raise
            self._failed = 0
        except BaseException:
            self._failed += 1
            if self._failed >= DEAF_AFTER:
                self._failed = 0
                await deaf()
            raise
        finally:
            self._waiting.pop(token, None)


def _unavailable(exc: BaseException) -> BrokerUnavailable:
    if isinstance(exc, BrokerUnavailable):
        return exc
    return BrokerUnavailable(f"the broker is unavailable: {exc}")


async def load_library(execute: Any, prefix: str) -> None:
    """Load this version's libraries (messages, presence) through ``execute``, unless there."""
    await _load_one(execute, functions.library_name(prefix), functions.library_source(prefix))
    await _load_one(  # presence's own library, beside ours
        execute, functions.presence_library_name(prefix), functions.presence_library_source(prefix)
    )


async def _load_one(execute: Any, name: str, source: str) -> None:
    """One library, never replacing another's.

    The same version's library with other code means a modified build
    shares this Redis under the same version: said loudly, left alone.
    """
    try:
        await execute("FUNCTION", "LOAD", source)
        logger.info("loaded the Redis function library %s", name)
        return
    except RedisError as exc:
        if "already exists" not in str(exc):
            raise
    listed = await execute("FUNCTION", "LIST", "LIBRARYNAME", name, "WITHCODE")
    codes = [_field(library, b"library_code") for library in listed]
    if source.encode() not in codes:
        logger.error(
            "the Redis function library %s on this Redis differs from this node's: "
            "another build under the same version; calls go to the code loaded first",
            name,
        )


class _Read(NamedTuple):
    epoch: str | None
    max_deleted: Position
    first_kept: Position  # (0, 0) while nothing was trimmed
    messages: list[Message]


def _field(reply: list[Any], name: bytes) -> Any:
    """A field of a RESP2 reply laid out as name, value, name, value …"""
    if isinstance(reply, dict):
        return reply.get(name)
    fields = dict(zip(reply[::2], reply[1::2], strict=True))
    return fields.get(name)


def _entry(channel: str, epoch: str, entry: list[Any]) -> Message:
    position_raw, fields = entry
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    position = parse_position(position_raw.decode())
    return Message(
        channel, values[b"e"].decode(), values[b"d"].decode(), epoch, position, position[0] / 1000
    )


def connection_options(settings: Settings) -> dict[str, Any]:
    """Options of every connection to Redis, a single one or a cluster's nodes."""
    options: dict[str, Any] = {
        "socket_connect_timeout": COMMAND_TIMEOUT_S,
        "socket_timeout": COMMAND_TIMEOUT_S,
        "socket_keepalive": True,
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
