"""Concurrent publishes to one Redis, sent as one pipeline: one round trip for many.

Each publish is one ``FCALL`` whose reply is the message's id. Sent one by
one, every publish paid a pool checkout, a write and a read of its own in
Python, and a read and a write in Redis: under 64 publishing connections
that was most of a publish's cost (py-spy, bench/README.md). Here the
publishes that arrive while a pipeline is on its way wait and go together
in the next one, so the batch grows with the load and a lone publish still
leaves at once (the next loop turn).

Guarantees, each kept by construction:

* **One pipeline at a time**, its calls in arrival order: Redis runs them in
  that order, so the ids of one channel follow the order the publishes
  were made (two pipelines on two connections could overtake each other).
* **Each caller gets its own reply**: the id its ``FCALL`` returned, or the
  exception of its call. A pipeline that fails as a whole (connection lost,
  timeout) fails every call in it; whether Redis ran them is unknown, and
  the caller says so (``RedisStore``: 503, never a 2xx).
* **A refused publish never gets here**: size, name, rights and rate are
  checked before ``publish`` is called.
* A call Redis refused because the functions were not loaded (a restarted
  Redis) did not run: only those are sent again, once, after reloading.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from gateway.brokers.functions import missing_function
from gateway.errors import STOPPING, BrokerUnavailable

logger = logging.getLogger("gateway.broker")
Call = tuple[str | int, ...]
Settle = Callable[[Any], None]  # a call's reply, or the exception in its place
BATCH_MOST = 512  # calls per pipeline: bounds one round trip's size and wait


class PublishBatch:
    """Queue calls; one task at a time sends what queued as one pipeline.

    ``send(calls)`` returns one reply per call, an exception in place of a
    failed one, or raises when the whole pipeline failed; ``reload()`` loads
    the functions again. ``spawn`` starts the sending task under the store's
    ownership (cancelled when the store stops: every waiting caller then
    fails with ``BrokerUnavailable``). A caller awaits its reply (``call``)
    or is called back with it (``call_soon``: a publish answered inside the
    HTTP protocol, server/publishing.py, needs no task of its own).
    """

    def __init__(
        self,
        send: Callable[[list[Call]], Awaitable[list[Any]]],
        reload: Callable[[], Awaitable[None]],
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self._send = send
        self._reload = reload
        self._spawn = spawn
        self._queue: list[tuple[Call, Settle]] = []
        self._sending = False

    async def call(self, call: Call) -> Any:
        """The reply of ``call``, sent in the next pipeline; raises its failure."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.call_soon(call, partial(_settle, future))
        return await future

    def call_soon(self, call: Call, settle: Settle) -> None:
        """Send ``call`` in the next pipeline; ``settle`` gets its reply or failure, once."""
        self._queue.append((call, settle))
        if not self._sending:
            self._sending = True
            self._spawn(self._send_all())

    async def _send_all(self) -> None:
        batch: list[tuple[Call, Settle]] = []
        try:
            await asyncio.sleep(0)  # let this loop turn's publishes join the first pipeline
            while self._queue:
                batch, self._queue = self._queue[:BATCH_MOST], self._queue[BATCH_MOST:]
                replies = await self._replies([call for call, _ in batch])
                settles, batch = [settle for _, settle in batch], []
                for settle, reply in zip(settles, replies, strict=True):
                    _deliver(settle, reply)
        finally:
            self._sending = False
            left = [*batch, *self._queue]
            self._queue = []
            for _, settle in left:  # unsettled only when cancelled: the store is stopping
                _deliver(settle, BrokerUnavailable(STOPPING))

    async def _replies(self, calls: list[Call]) -> list[Any]:
        try:
            replies = await self._send(calls)
        except Exception as exc:  # the whole pipeline failed: every call in it did
            return [exc] * len(calls)
        missing = [i for i, r in enumerate(replies) if _is_missing(r)]
        if missing:
            try:
                await self._reload()
                again = await self._send([calls[i] for i in missing])
            except Exception as exc:
                again = [exc] * len(missing)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies


def _is_missing(reply: Any) -> bool:
    return isinstance(reply, Exception) and missing_function(reply)


def _deliver(settle: Settle, reply: Any) -> None:
    """One caller's reply; a caller that fails to take it costs no other caller theirs."""
    try:
        settle(reply)
    except Exception:
        logger.exception("a publish's reply could not be delivered")


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():  # its caller left (cancelled): the reply has no one to go to
        return
    if isinstance(reply, BaseException):
        future.set_exception(reply)
    else:
        future.set_result(reply)
