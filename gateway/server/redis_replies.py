"""A publish pipeline's replies taken straight from redis-py's hiredis reader.

Why: a batch of publishes is one pipeline (brokers/publish_batch.py) whose
replies were read one ``Connection.read_response`` at a time: two
coroutines, a host string formatted and a timeout decided per reply, about
7 µs of the gateway's CPU per publish in-process, against 1.4-2.4 µs to
take the same replies from the parser's ``hiredis.Reader`` (bench/README.md,
issue 24).

How: when the connection's parser is redis-py's hiredis one (that exact
class) on RESP2 (the gateway's connections speak it: no push replies),
each reply is the reader's ``gets()``, with the parser's
own ``read_from_socket`` feeding it when no reply is whole. The results are
``read_response``'s: an error reply is the ``ResponseError`` hiredis built
with redis-py's own error classes (returned, as ``publish_link`` returns a
refused call's), a connection error is raised as redis-py raises it (an
``OSError`` becomes its ``ConnectionError``, worded as it words it). Any
other parser, protocol or connection goes through ``read_response``
(tests/test_redis_replies.py compares both).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError

from gateway.brokers.publish_link import ReadReplies, plain_replies
from gateway.server import accelerations

try:
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
    from redis._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR
except ImportError:  # (the acceleration's check then keeps it off)
    _AsyncHiredisParser = None  # type: ignore[assignment, misc]
    NOT_ENOUGH_DATA = object()
    SERVER_CLOSED_CONNECTION_ERROR = "Connection closed by server."


def replies_reader() -> ReadReplies:
    """How the publish link reads a batch's replies: from the reader when it is on."""
    return read_replies if accelerations.on(accelerations.REDIS_REPLIES) else plain_replies


async def read_replies(conn: AbstractConnection, count: int) -> list[Any]:
    """``count`` replies, as ``plain_replies`` reads them."""
    found = getattr(conn, "_parser", None)
    if type(found) is not _AsyncHiredisParser or conn.protocol not in (2, "2", None):
        return await plain_replies(conn, count)
    parser: Any = found  # (its members are private: untyped)
    replies: list[Any] = []
    try:
        while len(replies) < count:
            if not parser._connected:
                raise ConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
            reply = parser._reader.gets()
            if reply is NOT_ENOUGH_DATA:  # (the reader's, as redis-py made it)
                await parser.read_from_socket()
            elif isinstance(reply, ConnectionError):
                raise reply
            else:
                replies.append(reply)
    except OSError as exc:  # (as read_response words it)
        where = conn._host_error()
        raise ConnectionError(f"Error while reading from {where} : {exc.args}") from None
    return replies
