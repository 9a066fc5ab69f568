"""A publish pipeline's replies read from hiredis' reader are read_response's (redis-replies).

gateway/server/redis_replies.py takes a batch's replies straight from
redis-py's hiredis reader. Here the same batches go to one real
redis-server through both readers (``PublishLink`` with each): the same
replies, refusals as the same ``ResponseError`` classes and texts, the same
failure when the connection is cut, and many replies spread over several
socket reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.asyncio import BlockingConnectionPool

from gateway.brokers.publish_link import PublishLink, ReadReplies, plain_replies
from gateway.server import accelerations, redis_replies
from gateway.server.redis_replies import read_replies, replies_reader
from tests.servers import RedisServer

pytestmark = pytest.mark.anyio
READERS: dict[str, ReadReplies] = {"plain": plain_replies, "hiredis": read_replies}


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.close()


def _shown(replies: list[Any]) -> list[tuple[str, str]]:
    return [(type(reply).__name__, str(reply)) for reply in replies]


@pytest.fixture(autouse=True)
def plain_never_stands_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hiredis reader must read every reply here itself, never hand over to the plain."""

    async def refused(conn: Any, count: int) -> list[Any]:
        raise AssertionError("read_replies handed over to read_response")

    monkeypatch.setattr(redis_replies, "plain_replies", refused)


def _pool(url: str) -> BlockingConnectionPool:
    """A pool as the gateway's (RESP2: brokers/redis_store.py ``connection_options``)."""
    return BlockingConnectionPool.from_url(url, protocol=2)


async def _sent(url: str, read: ReadReplies, calls: list[tuple[Any, ...]]) -> list[Any]:
    pool = _pool(url)
    link = PublishLink(pool.make_connection, 10.0, read)
    try:
        return await link.send(calls)
    finally:
        await link.close()
        await pool.aclose()


def test_the_fast_reader_is_on_with_hiredis() -> None:
    """With hiredis installed (requirements.txt) the check passes and the reader is used."""
    assert accelerations.decide()[accelerations.REDIS_REPLIES]
    assert replies_reader() is read_replies
    accelerations.decide([])
    try:
        assert replies_reader() is redis_replies.plain_replies
    finally:
        accelerations.decide()


async def test_replies_and_refusals_are_read_alike(redis_url: str) -> None:
    """Values of every kind, and refused calls, in one batch: the same on both readers."""
    calls: list[tuple[Any, ...]] = [
        ("SET", "k", "v"),
        ("GET", "k"),
        ("INCR", "k"),  # refused: not an integer
        ("FCALL", "no_such_function", 0),  # refused: no such function
        ("RPUSH", "l", "a", "b"),
        ("LRANGE", "l", 0, -1),
        ("GET", "missing"),
        ("LPUSH", "k", "x"),  # refused: WRONGTYPE
        ("ECHO", "é" * 10),
    ]
    seen = {}
    for name, read in READERS.items():
        redis.Redis.from_url(redis_url).flushall()
        seen[name] = _shown(await _sent(redis_url, read, calls))
    assert seen["hiredis"] == seen["plain"]
    assert [kind for kind, _ in seen["plain"]].count("ResponseError") == 3


async def test_many_replies_over_several_reads_are_read_alike(redis_url: str) -> None:
    """5,000 replies of 1 KB (several socket reads): the same, in order."""
    calls: list[tuple[Any, ...]] = [("ECHO", f"{n:05d}" + "x" * 1024) for n in range(5000)]
    plain = await _sent(redis_url, plain_replies, calls)
    fast = await _sent(redis_url, read_replies, calls)
    assert fast == plain and fast[4999].startswith(b"04999")


async def test_a_connection_cut_mid_batch_fails_alike(redis_url: str) -> None:
    """The link killed while a call in its batch blocks: the same exception and words."""
    seen = {}
    for name, read in READERS.items():
        pool = _pool(redis_url)
        link = PublishLink(pool.make_connection, 10.0, read)
        (client_id,) = await link.send([("CLIENT", "ID")])

        async def cut(client_id: int = client_id) -> None:
            await asyncio.sleep(0.3)
            redis.Redis.from_url(redis_url).execute_command("CLIENT", "KILL", "ID", client_id)

        killer = asyncio.ensure_future(cut())
        try:
            await link.send([("PING",), ("BLPOP", "nothing-here", 5), ("PING",)])
        except Exception as exc:
            seen[name] = (type(exc).__name__, str(exc))
        await killer
        await link.close()
        await pool.aclose()
    assert seen.get("hiredis") == seen.get("plain"), seen
    assert seen["plain"][0] == "ConnectionError"
