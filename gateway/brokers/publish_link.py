"""The connection publish pipelines travel on: one of its own, outside the pool.

``PublishBatch`` sends one pipeline at a time, so one connection carries
them all, and redis-py's ``Pipeline`` was most of what was left of a
publish's Redis side in Python (py-spy under 64 publishing connections:
its per-command bookkeeping, packing, and an ``asyncio.timeout`` armed per
reply). Here a batch is packed in one pass, written once, and its replies
read under one deadline for the whole batch (``COMMAND_TIMEOUT_S``, the
deadline of any command).

Only redis-py's public connection API is used (``make_connection``,
``send_packed_command``, ``read_response``). A reply Redis refused is that
call's ``ResponseError``; anything else (connection lost, the deadline)
drops the connection, raises for the whole batch, and the next batch
connects again.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from gateway.brokers.publish_batch import Call

# A batch's replies, one per call, a ``ResponseError`` in place of a refused one.
ReadReplies = Callable[[AbstractConnection, int], Awaitable[list[Any]]]


class PublishLink:
    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        deadline_s: float,
        read: ReadReplies | None = None,
    ) -> None:
        self._connect = connect  # a new connection, not yet open: the pool's ``make_connection``
        self._deadline_s = deadline_s
        self._read = read or plain_replies  # (server/redis_replies.py: a faster one)
        self._conn: AbstractConnection | None = None

    async def send(self, calls: list[Call]) -> list[Any]:
        """One reply per call, a ``ResponseError`` in place of a refused one."""
        conn = self._conn
        if conn is None:
            conn = self._conn = self._connect()
        try:
            async with asyncio.timeout(self._deadline_s):
                await conn.send_packed_command(pack(calls), check_health=False)
                return await self._read(conn, len(calls))
        except BaseException:
            self._conn = None
            await conn.disconnect(nowait=True)
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect(nowait=True)


async def plain_replies(conn: AbstractConnection, count: int) -> list[Any]:
    """``count`` replies through redis-py's public ``read_response``."""
    return [await _reply(conn) for _ in range(count)]


async def _reply(conn: AbstractConnection) -> Any:
    try:
        return await conn.read_response(timeout=math.inf)  # (the batch's deadline holds)
    except ResponseError as refused:
        return refused


# The RESP of short arguments, as packed last: a publish's function name, key count,
# keys and event repeat from call to call (its data does not: longer ones are not kept).
# At most _PACKED_MOST of at most _PACKED_ARG_MOST bytes each (~0.6 MB), cleared when full.
_packed: dict[str | int, bytes] = {}
_PACKED_MOST = 4096
_PACKED_ARG_MOST = 96


def pack(calls: list[Call]) -> bytes:
    """The calls in RESP, one buffer.

    Why the memo: packing was a fifth of a WebSocket publish's Python on the
    Redis side (py-spy, 1,000 publishing connections); a short argument seen
    before is one dict lookup instead of an encode and a format (1.57 -> ~0.5
    µs a publish call, in-process).
    """
    parts: list[bytes] = []
    add = parts.append
    packed = _packed
    for call in calls:
        add(b"*%d\r\n" % len(call))
        for arg in call:
            done = packed.get(arg)
            if done is None:
                raw = arg.encode() if isinstance(arg, str) else b"%d" % arg
                done = b"$%d\r\n%b\r\n" % (len(raw), raw)
                if len(raw) <= _PACKED_ARG_MOST:
                    if len(packed) >= _PACKED_MOST:
                        packed.clear()
                    packed[arg] = done
            add(done)
    return b"".join(parts)
