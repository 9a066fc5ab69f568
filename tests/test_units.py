"""Unit tests of the core, no I/O: Message, Cursor, Subscription, Hub on the memory broker."""

from __future__ import annotations

import json

import anyio
import pytest

from gateway.brokers.base import History
from gateway.brokers.memory import MemoryBroker
from gateway.errors import BadRequest
from gateway.hub import CAUGHT_UP, Hub
from gateway.message import START, Cursor, Message, check_channel, check_event
from gateway.metrics import Metrics
from gateway.polls import Waiter
from gateway.settings import Settings
from gateway.subscription import GAP, Batch, CloseReason, Subscription


def _message(n: int, epoch: str = "e1") -> Message:
    return Message("c", "message", f"m{n}", epoch, (1000, n))


def test_sse_encoding_splits_lines_and_is_built_once():
    """Each data line gets its own data: field; the frame is cached on the message."""
    message = Message("c", "ev", "a\nb\r\nc", "e1", (5, 1))
    assert message.sse == b"id: e1:5-1\nevent: ev\ndata: a\ndata: b\ndata: c\n\n"
    assert message.sse is message.sse


def test_ws_and_poll_encodings_carry_the_same_fields():
    """The WebSocket frame is the poll object plus type=message."""
    message = Message("c", "ev", "d\u2028", "e1", (5, 1))
    assert json.loads(message.ws_text) == {"type": "message", **json.loads(message.json)}
    assert json.loads(message.json) == {
        "id": "e1:5-1",
        "channel": "c",
        "event": "ev",
        "data": "d\u2028",
    }


@pytest.mark.parametrize("text", ["0", "abc:1-2", "ABC123:0-0"])
def test_cursor_round_trips(text):
    """A cursor prints as the id it was parsed from."""
    assert str(Cursor.parse(text)) == text


@pytest.mark.parametrize("text", ["", "1-2", "a:b", "a:1-", "a-b:1-2", "a:1-2:3", "é:1-2"])
def test_malformed_cursors_are_bad_requests(text):
    """Anything not an id the gateway gives is a 400, not a gap."""
    with pytest.raises(BadRequest):
        Cursor.parse(text)


def test_names_are_checked():
    """Channel and event names follow the SPEC's alphabet and lengths."""
    assert check_channel("chat:room-1.a_b") == "chat:room-1.a_b"
    assert check_event(None) == "message"
    for bad in ["", "a b", "x" * 129, "a\nb"]:
        with pytest.raises(BadRequest):
            check_channel(bad)
    with pytest.raises(BadRequest):
        check_event("x" * 65)


def test_overflow_closes_the_subscription_and_drops_its_buffer():
    """Past its limit a subscription closes as SLOW_CONSUMER and holds nothing."""
    sub = Subscription("c", limit=3)
    sub.load_history([])
    assert all(sub.offer_batch(Batch([_message(n)])) for n in range(3))
    assert sub.offer_batch(Batch([_message(3)])) is False
    assert sub.close_reason is CloseReason.SLOW_CONSUMER
    assert sub.take(10) == [] and len(sub.queue) == 0


def test_history_and_live_overlap_is_delivered_once_in_order():
    """Live messages queued while history was read are not repeated."""
    sub = Subscription("c", limit=10, cursor=Cursor("e1", (1000, 1)))
    for n in (4, 5, 6):
        sub.offer_batch(Batch([_message(n)]))
    sub.load_history([_message(n) for n in (2, 3, 4, 5)])
    assert [m.data for m in sub.take(10)] == ["m2", "m3", "m4", "m5", "m6"]
    sub.offer_batch(Batch([_message(6)]))
    assert sub.take(10) == []


def test_a_gap_and_a_new_epoch_pass_the_dedupe():
    """A gap marker and a message from a new epoch are always new."""
    sub = Subscription("c", limit=10, cursor=Cursor("e1", (1000, 9)))
    items = [GAP, _message(1, epoch="e2")]
    sub.load_history(items)
    assert sub.take(10) == items


def _hub(**settings: int) -> Hub:
    config = Settings(**settings)  # type: ignore[arg-type]
    return Hub(MemoryBroker(config), config, Metrics())


@pytest.mark.anyio
async def test_a_slow_subscriber_is_cut_while_a_fast_one_gets_everything():
    """The hub never waits for a client: the lagging one is closed, the other keeps up."""
    hub = _hub(queue_size=5)
    async with hub.running():
        async with hub.subscribe("c") as slow, hub.subscribe("c") as fast:
            got = []
            for n in range(20):
                await hub.publish("c", "message", f"m{n}")
                got.extend(m.data for m in fast.take(100))
            assert got == [f"m{n}" for n in range(20)]
            assert slow.close_reason is CloseReason.SLOW_CONSUMER
            assert hub.metrics.slow_consumer_drops._value.get() == 1


@pytest.mark.anyio
async def test_leaving_releases_the_channel_even_when_the_body_raises():
    """A subscription's exit runs on error too: the channel forgets it."""
    hub = _hub()
    async with hub.running():
        with pytest.raises(RuntimeError):
            async with hub.subscribe("c"):
                assert len(hub.channels["c"].subs) == 1
                raise RuntimeError("client blew up")
        assert len(hub.channels["c"].subs) == 0


@pytest.mark.anyio
async def test_resume_gets_history_after_the_cursor_then_live():
    """Subscribe-then-read: history after the cursor, then live, nothing twice."""
    hub = _hub()
    async with hub.running():
        first = await hub.publish("c", "message", "a")
        await hub.publish("c", "message", "b")
        async with hub.subscribe("c", first.cursor) as sub:
            await hub.publish("c", "message", "c")
            with anyio.fail_after(1):
                await sub.wait()
            assert [m.data for m in sub.take(10)] == ["b", "c"]


@pytest.mark.anyio
async def test_since_zero_and_last_n():
    """START gives all history; last=N the newest N."""
    hub = _hub()
    async with hub.running():
        for n in range(5):
            await hub.publish("c", "message", f"m{n}")
        async with hub.subscribe("c", START) as everything, hub.subscribe("c", None, 2) as tail:
            assert [m.data for m in everything.take(10)] == [f"m{n}" for n in range(5)]
            assert [m.data for m in tail.take(10)] == ["m3", "m4"]


def test_recent_answers_only_what_it_surely_holds():
    """The per-channel record answers cursors at or after its floor, in its epoch; else defers."""
    from gateway.recent import Recent

    recent = Recent(3)
    assert recent.after(Cursor("e1", (1000, 0)), 10) is None  # floor unknown
    recent.reset(Cursor("e1", (1000, 1)))
    for n in (2, 3, 4):
        recent.append(_message(n))
    assert [m.data for m in recent.after(Cursor("e1", (1000, 2)), 10)] == ["m3", "m4"]
    assert recent.after(Cursor("e1", (1000, 0)), 10) is None  # older than the floor
    assert recent.after(Cursor("e0", (1000, 3)), 10) is None  # another epoch: the broker decides
    recent.append(_message(5))  # full: the floor moves up to the evicted message
    assert recent.after(Cursor("e1", (1000, 1)), 10) is None
    assert [m.data for m in recent.after(Cursor("e1", (1000, 2)), 1)] == ["m3"]
    recent.append(_message(1, epoch="e2"))
    assert recent.after(Cursor("e1", (1000, 4)), 10) is None  # a new epoch forgets


@pytest.mark.anyio
async def test_a_resume_within_recent_needs_no_broker_read():
    """A cursor the hub delivered recently is answered from memory."""
    hub = _hub()
    async with hub.running():
        async with hub.subscribe("c"):
            first = await hub.publish("c", "message", "a")
            await hub.publish("c", "message", "b")

            async def no_reads(*args: object) -> None:
                raise AssertionError("the broker was asked")

            hub.broker.history = no_reads  # type: ignore[method-assign]
            async with hub.subscribe("c", first.cursor) as resumed:
                assert [m.data for m in resumed.take(10)] == ["b"]


def test_a_busy_loop_accepts_every_waiting_connection_at_once():
    """GreedyAcceptLoop takes all queued connections per wake-up (libuv alone takes one)."""
    import asyncio
    import socket

    from gateway.server.loop import GreedyAcceptLoop

    made: list[asyncio.BaseTransport] = []

    class Count(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(transport)

    async def scenario() -> int:
        server = await asyncio.get_running_loop().create_server(Count, "127.0.0.1", 0, backlog=512)
        port = server.sockets[0].getsockname()[1]
        # The kernel completes these handshakes on its own: 200 connections wait to be accepted.
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
        for _ in range(10):  # ten loop iterations, no more
            await asyncio.sleep(0)
        accepted = len(made)
        for client in clients:
            client.close()
        for transport in made:
            transport.close()
        server.close()
        await server.wait_closed()
        return accepted

    loop = GreedyAcceptLoop()
    try:
        assert loop.run_until_complete(scenario()) == 200
    finally:
        loop.close()


def test_the_collector_freezes_long_lived_connections_and_gives_them_back_on_churn():
    """Quiet ticks freeze survivors; a tick of churn unfreezes; enough closes bring a full pass."""
    import gc

    from gateway.collector import RECLAIM_AFTER_CLOSED, Collector

    counts = {"open": 2000, "closed": 0}
    collector = Collector(lambda: counts["open"], lambda: counts["closed"])
    try:
        collector.tick()  # nothing closed: survivors frozen out of automatic passes
        assert collector.frozen and gc.get_freeze_count() > 0
        counts["closed"] += 50  # 2.5 % of the open ones: still long-lived connections
        collector.tick()
        assert collector.frozen
        counts["closed"] += 500  # 25 % in one tick: long-polls, say; freezing them would leak
        collector.tick()
        assert not collector.frozen and gc.get_freeze_count() == 0
        collector.tick()  # quiet again
        assert collector.frozen
        full_passes = []
        collector.reclaim = lambda freeze: full_passes.append(freeze)  # type: ignore[method-assign]
        for _ in range(20):  # slow churn adds up past the open count: one full pass, frozen again
            counts["closed"] += RECLAIM_AFTER_CLOSED // 10
            collector.tick()
        assert full_passes == [True]
    finally:
        gc.unfreeze()


def test_two_gateways_in_one_process_give_the_collector_back_whatever_order_they_stop_in():
    """The first to start sets the young threshold; the last to stop restores it (not LIFO)."""
    import gc

    from gateway.collector import YOUNG_THRESHOLD, Collector, collector_running

    before = gc.get_threshold()

    async def gateway(started: anyio.Event, stop: anyio.Event, stopped: anyio.Event) -> None:
        async with collector_running(Collector(lambda: 0, lambda: 0)):  # as each lifespan does
            started.set()
            await stop.wait()
        stopped.set()

    async def scenario() -> list[int]:
        seen = []
        events = [(anyio.Event(), anyio.Event(), anyio.Event()) for _ in range(2)]
        async with anyio.create_task_group() as tasks:
            for started, stop, stopped in events:
                tasks.start_soon(gateway, started, stop, stopped)
                await started.wait()
                seen.append(gc.get_threshold()[0])
            for _, stop, stopped in events:  # the first to start stops first
                stop.set()
                await stopped.wait()
                seen.append(gc.get_threshold()[0])
        return seen

    gc.set_threshold(700, *before[1:])
    try:
        young = max(YOUNG_THRESHOLD, 700)
        assert anyio.run(scenario) == [young, young, young, 700]
    finally:
        gc.set_threshold(*before)


def test_the_fast_path_recognises_the_installed_uvicorn():
    """Under uvicorn as the Procfile runs it, SSE and WebSocket streams get a sink (else all is slow)."""
    import asyncio

    import httpx
    import uvicorn
    import websockets

    from gateway.server.direct import RAW_SEND, SseSink, WsSink, sse_sink, ws_sink
    from gateway.server.loop import GreedyAcceptLoop
    from tests.servers import free_port

    found: dict[str, object] = {}

    async def app(scope, receive, send):  # the raw ASGI callable, as GatewayApp sees it
        scope = {**scope, RAW_SEND: send}
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            found["sse"] = sse_sink(scope)
            await send({"type": "http.response.body", "body": b"ok"})
        else:
            await receive()
            found["ws before accept"] = ws_sink(scope)
            await send({"type": "websocket.accept"})
            found["ws"] = ws_sink(scope)
            await send({"type": "websocket.close", "code": 1000})

    async def scenario() -> None:
        port = free_port()
        config = uvicorn.Config(
            app, port=port, loop="none", log_level="warning", ws_per_message_deflate=False
        )
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/sse/c")).text == "ok"
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/c") as ws:
            await ws.wait_closed()
        server.should_exit = True
        await serving

    loop = GreedyAcceptLoop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert isinstance(found["sse"], SseSink)
    assert found["ws before accept"] is None
    assert isinstance(found["ws"], WsSink)


class _FakeSink:
    """A socket that takes writes while ``open`` and not ``paused``; what it got, in order."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.paused = False
        self.open = True

    def ready(self) -> bool:
        return self.open and not self.paused

    def gone(self) -> bool:
        return not self.open

    def write(self, batch: Batch) -> None:
        self.written.extend(m.data for m in batch.items)

    def heartbeat(self) -> None:
        self.written.append(":")

    async def drain(self) -> None:
        self.paused = False


def test_offers_go_straight_to_a_ready_sink_and_queue_behind_anything_waiting():
    """The fast path never passes queued items: paused socket, queue, owed acks all queue."""
    sub = Subscription("c", limit=10)
    sub.load_history([])
    sink = sub.sink = _FakeSink()
    sub.offer_batch(Batch([_message(1)]))
    assert sink.written == ["m1"] and not sub.queue  # no wakeup, no queue
    sink.paused = True
    sub.offer_batch(Batch([_message(2)]))
    sink.paused = False
    sub.offer_batch(Batch([_message(3)]))  # ready again, but m2 waits: queue behind it
    assert sink.written == ["m1"] and [m.data for m in sub.queue] == ["m2", "m3"]
    assert [m.data for m in sub.take(10)] == ["m2", "m3"]
    sub.replies_owed = 1  # a WebSocket ack not yet written: the message waits for it
    sub.offer_batch(Batch([_message(4)]))
    assert [m.data for m in sub.queue] == ["m4"]


@pytest.mark.anyio
async def test_write_queued_drains_in_order_and_reports_a_gone_client():
    """The writer's slow path: waits for the drain, writes what queued, stops when the client left."""
    from gateway.server.direct import write_queued

    sub = Subscription("c", limit=10)
    sub.load_history([])
    sink = sub.sink = _FakeSink()
    sink.paused = True
    for n in range(3):
        sub.offer_batch(Batch([_message(n)]))
    assert await write_queued(sub, sink) is True
    assert sink.written == ["m0", "m1", "m2"] and not sub.queue
    sub.offer_batch(Batch([_message(3)]))  # straight through again
    sink.open = False
    sub.offer_batch(Batch([_message(4)]))  # queued: the sink is not ready
    assert await write_queued(sub, sink) is False
    assert sink.written == ["m0", "m1", "m2", "m3"]


@pytest.mark.anyio
async def test_waiting_polls_share_one_answer_and_time_out_on_the_wheel():
    """Caught-up polls are waiters: one answer object for all at a cursor; a timeout answers empty."""
    from gateway.polls import TaskClient, Waiter

    hub = _hub()
    encoded: list[tuple[str, list[object], Cursor]] = []

    def encode(channel: str, items: list[object], start: Cursor) -> object:
        encoded.append((channel, items, start))
        return object()

    async with hub.running():
        async with hub.subscribe("c"):  # joins the channel
            start = hub.newest("c")
            assert start is not None
            waiters = [Waiter(start, 10, TaskClient(None)) for _ in range(50)]
            assert all(hub.park("c", w, 5.0, encode) for w in waiters)
            short = Waiter(start, 10, TaskClient(None))
            short_answer = short.client.future  # type: ignore[union-attr]
            assert hub.park("c", short, 0.01, encode)
            with anyio.fail_after(1):
                assert await short_answer is not None
            assert short.reason == "timed out" and encoded[-1][1] == []
            futures = [w.client.future for w in waiters]  # type: ignore[union-attr]
            await hub.publish("c", "message", "m")
            with anyio.fail_after(1):
                answers = {id(await f) for f in futures}
            assert len(answers) == 1  # built once for all 50
            assert [m.data for m in encoded[-1][1]] == ["m"]  # type: ignore[attr-defined]
            assert not hub.channels["c"].polls.waiters  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_restoration_during_a_backfill_reads_history_again():
    """A second hole while the first backfill reads: what the first read missed comes, once, in order."""
    hub = _hub()
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    gate, reads = anyio.Event(), []
    read_history = broker.history

    async def history_held_by_the_gate(channel: str, cursor: Cursor, limit: int) -> History:
        answer = await read_history(channel, cursor, limit)  # read now, answered later
        reads.append(cursor)
        if len(reads) == 1:
            await gate.wait()
        return answer

    broker.history = history_held_by_the_gate  # type: ignore[method-assign]
    async with hub.running(), hub.subscribe("c") as sub:
        await hub.publish("c", "message", "a")
        broker._subscribed.discard("c")  # the live feed has a hole
        hub.on_channels_restored(["c"])
        while not reads:
            await anyio.sleep(0.01)
        await hub.publish("c", "message", "b")  # a second hole, after the first read
        hub.on_channels_restored(["c"])
        broker._subscribed.add("c")
        await hub.publish("c", "message", "c")
        gate.set()
        got: list[str] = []
        with anyio.fail_after(2):
            while len(got) < 3:
                await sub.wait()
                got.extend(m.data for m in sub.take(10) if isinstance(m, Message))
        assert got == ["a", "b", "c"] and len(reads) == 2


@pytest.mark.anyio
async def test_a_poll_cursor_ahead_of_the_live_link_is_not_caught_up():
    """A cursor from history that live delivery has not reached yet: not parked as caught up."""
    hub = _hub()
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    async with hub.running(), hub.subscribe("c"):
        first = await hub.publish("c", "message", "a")
        assert first.cursor is not None
        assert hub.answer_after("c", first.cursor, 10, lambda *a: a) is CAUGHT_UP
        broker._subscribed.discard("c")  # the live link lags: history is ahead of it
        ahead = await hub.publish("c", "message", "b")
        assert ahead.cursor is not None
        assert hub.answer_after("c", ahead.cursor, 10, lambda *a: a) is None
        assert not hub.park("c", Waiter(ahead.cursor, 10, None), 1.0, lambda *a: a)


def test_a_poll_query_is_parsed_once_and_one_with_a_token_is_never_kept():
    """``asked_of``: the same query bytes give the same parsed object; a ``token`` is not kept."""
    from types import SimpleNamespace
    from typing import cast

    from gateway.state import Gateway
    from gateway.transports.longpoll import QUERIES_KEPT, asked_of

    gateway = cast(
        Gateway,
        SimpleNamespace(poll_queries={}, settings=Settings(), guard=SimpleNamespace(open=True)),
    )
    first = asked_of(gateway, b"since=e1:5-1&timeout=3&limit=7")
    assert (first.cursor, first.last, first.timeout, first.limit) == (
        Cursor("e1", (5, 1)),
        None,
        3.0,
        7,
    )
    assert asked_of(gateway, b"since=e1:5-1&timeout=3&limit=7") is first
    secret = asked_of(gateway, b"since=e1:5-1&token=abc.def.ghi")
    assert secret.query["token"] == "abc.def.ghi"
    assert not any(b"token" in raw for raw in gateway.poll_queries)
    with pytest.raises(BadRequest):
        asked_of(gateway, b"since=nonsense")
    assert list(gateway.poll_queries) == [b"since=e1:5-1&timeout=3&limit=7"]
    for n in range(QUERIES_KEPT + 5):
        asked_of(gateway, b"limit=%d" % n)
    assert len(gateway.poll_queries) <= QUERIES_KEPT


@pytest.mark.anyio
async def test_a_flush_answers_each_waiter_from_its_own_mark_and_skips_one_released_meanwhile():
    """Waiters parked before and between the items of one flush get exactly theirs, cut at
    their limit; one released while the flush runs gets nothing; a later one waits on."""
    from gateway.polls import Ended

    hub = _hub()
    got: dict[str, list[str] | None] = {}

    class Client:
        def __init__(self, name: str, then: Waiter | None = None) -> None:
            self.name = name
            self.then = then  # released by this one's answer

        def write(self, answer: object) -> bool:
            return True

        def settled(self, waiter: Ended, answer: object | None) -> None:
            items = answer if isinstance(answer, list) else None
            got[self.name] = None if items is None else [m.data for m in items]
            if self.then is not None:
                self.then.cancel()

    async with hub.running():
        async with hub.subscribe("c"):
            start = hub.newest("c")
            assert start is not None
            late = Waiter(start, 10, Client("late"), raw=True)
            early = Waiter(start, 10, Client("early", then=late), raw=True)
            one = Waiter(start, 1, Client("one"), raw=True)
            for waiter in (early, one, late):
                assert hub.park("c", waiter, 5.0, lambda *_: object())
            polls = hub.channels["c"].polls
            assert polls is not None
            polls.arrived([_message(1), _message(2)])
            polls.arrived([_message(3)])
            after = Waiter(start, 10, Client("after"), raw=True)
            polls.add(after)  # marked at the end of the batch: waits for what comes next
            polls.flush()
            assert got == {"early": ["m1", "m2", "m3"], "one": ["m1"], "late": None}
            assert late.reason == "client gone"
            assert list(polls.waiters) == [after] and after.mark == 0
            polls.arrived([_message(4)])
            polls.flush()
            assert got["after"] == ["m4"] and not polls.waiters


@pytest.mark.anyio
async def test_an_event_with_its_waiters_in_a_list_wakes_them_as_before():
    """server/direct.py ``_list_waiters``: wait, set, clear and wait again, as a plain Event."""
    import asyncio

    from gateway.server.direct import _list_waiters

    event = asyncio.Event()
    _list_waiters(event)
    assert event._waiters == []
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await event.wait()
        woken.append(n)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(waiter, 1)
        tasks.start_soon(waiter, 2)
        await anyio.sleep(0.01)
        assert len(event._waiters) == 2 and not woken
        event.set()
    assert sorted(woken) == [1, 2] and event._waiters == []
    event.clear()
    with anyio.move_on_after(0.01):
        await event.wait()
    assert event._waiters == []  # (a cancelled wait removes itself)


@pytest.mark.anyio
async def test_a_subscriptions_wait_is_a_future_a_writer_may_abandon():
    """``wait()`` hands the writer a future: done at once when something is queued, done by
    the next arrival otherwise, and fresh again after a writer cancelled while waiting."""
    hub = _hub()
    async with hub.running():
        await hub.publish("c", "message", "a")
        async with hub.subscribe("c", START) as sub:
            assert sub.wait().done()  # history queued
            sub.take(10)
            pending = sub.wait()
            assert not pending.done() and sub.wait() is pending  # one waiter at a time
            with anyio.move_on_after(0.05):
                await pending  # a writer cancelled while it waits
            assert pending.cancelled()
            after = sub.wait()
            assert after is not pending and not after.done()
            await hub.publish("c", "message", "b")
            with anyio.fail_after(1):
                await after
            assert [m.data for m in sub.take(10)] == ["b"]
            sub.close(CloseReason.CLIENT_GONE)
            assert sub.wait().done()  # closed: a writer never waits
