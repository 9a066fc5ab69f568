"""Several channels on one connection: /sse, /poll and /ws, on both brokers, with real clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
import websockets

from gateway import composite
from gateway.message import START, Cursor
from tests.clients import publish
from tests.conftest import gateway_env, redis_for
from tests.servers import GatewayServer, RedisServer
from tests.sse_client import events
from tests.test_security import SECRET, mint

pytestmark = pytest.mark.anyio

HISTORY = 10


# -- clients -------------------------------------------------------------------


@dataclass
class Stream:
    """What one several-channel SSE stream said: its opening, messages, gaps and last id."""

    opening: dict[str, Any] = field(default_factory=dict)
    opening_id: str = ""
    items: list[dict[str, Any]] = field(default_factory=list)  # messages, and {"gap": channel}
    last_id: str = ""
    retry: bool = False
    ready: anyio.Event = field(default_factory=anyio.Event)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [item for item in self.items if "gap" not in item]

    def ids(self, channel: str) -> list[str]:
        return [m["id"] for m in self.messages if m["channel"] == channel]

    @property
    def gaps(self) -> list[str]:
        return [item["gap"] for item in self.items if "gap" in item]


async def read_sse(
    base: str,
    channels: list[str],
    count: int,
    stream: Stream | None = None,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> Stream:
    """Read ``GET /sse?channel=…`` until ``count`` messages arrived (or the stream ended)."""
    stream = stream or Stream()
    query = [("channel", c) for c in channels] + list(params.items())
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as client:
        async with client.stream("GET", f"{base}/sse", params=query, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            async for event in events(response):
                if event.event == "subscribed":
                    stream.opening, stream.opening_id = json.loads(event.data), event.id
                    stream.ready.set()
                elif event.event == "gap":
                    stream.items.append({"gap": json.loads(event.data)["channel"]})
                elif event.event == "message":
                    stream.items.append(json.loads(event.data))
                    stream.last_id = event.id
                elif event.event == "" and event.retry is not None:
                    stream.retry = True
                if len(stream.messages) >= count:
                    break
    return stream


@asynccontextmanager
async def reading(base: str, channels: list[str], count: int, **kw: Any) -> AsyncIterator[Stream]:
    """An SSE reader in the background; yields once subscribed; waits for it at exit."""
    stream = Stream()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: read_sse(base, channels, count, stream, **kw))
        with anyio.fail_after(15):
            await stream.ready.wait()
        yield stream


async def poll(base: str, specs: list[str], **params: Any) -> dict[str, Any]:
    query = [("channel", s) for s in specs] + list(params.items())
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.get(f"{base}/poll", params=query)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def poll_all(base: str, specs: list[str], count: int, **params: Any) -> list[dict[str, Any]]:
    """Poll on, carrying each channel's cursor, until ``count`` messages; each answer kept."""
    answers: list[dict[str, Any]] = []
    while sum(len(a["messages"]) for a in answers) < count:
        answers.append(await poll(base, specs, timeout=5, **params))
        specs = [f"{c}@{cursor}" for c, cursor in answers[-1]["cursors"].items()]
    return answers


class Socket:
    """A ``/ws`` client: frames sent and every frame received, by type."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def until(self, kind: str, **match: Any) -> dict[str, Any]:
        """Receive until a frame of ``kind`` (matching ``match``) arrives; return it."""
        with anyio.fail_after(10):
            while True:
                frame = json.loads(await self.ws.recv())
                self.frames.append(frame)
                if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
                    return frame

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        return [
            f for f in self.frames if f["type"] == "message" and channel in (None, f["channel"])
        ]


@asynccontextmanager
async def socket(base: str, channels: list[str] = (), **params: Any) -> AsyncIterator[Socket]:  # type: ignore[assignment]
    url = httpx.URL(f"{base}/ws", params=[("channel", c) for c in channels] + list(params.items()))
    async with websockets.connect(str(url), compression=None, max_size=2**22) as ws:
        yield Socket(ws)


async def ws_closed(url: str) -> tuple[int, str]:
    """Connect and return the close code and reason the server ends with."""
    async with websockets.connect(url, compression=None) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            with anyio.fail_after(10):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def names(channel: str, count: int = 3) -> list[str]:
    return [f"{channel}-{letter}" for letter in "abcdefgh"[:count]]


async def publish_each(base: str, channels: list[str], rounds: int) -> dict[str, list[str]]:
    """``rounds`` messages on each channel, interleaved; their ids by channel."""
    ids: dict[str, list[str]] = {c: [] for c in channels}
    async with httpx.AsyncClient(timeout=30) as client:
        for n in range(rounds):
            for c in channels:
                ids[c].append(await publish(base, c, f"{c}#{n}", client=client))
    return ids


# -- the composite cursor, alone -------------------------------------------------------


def test_a_composite_cursor_round_trips_and_stays_within_48_bytes_a_channel():
    """Every channel's cursor comes back from the composite; each adds at most 48 bytes."""
    channels = ["a", "chat:room-1", "x" * 128]
    cursors = [
        Cursor("19a3f0c2b1d4e", (1795688530910, 0)),
        START,
        Cursor("f" * 32, ((1 << 49) - 1, (1 << 64) - 1)),
    ]
    text = composite.encode(channels, cursors)
    assert composite.decode(text, channels) == cursors
    base = len(composite.encode([], []))
    assert len(composite.encode(channels[2:], cursors[2:])) - base <= 48
    for wrong in (channels[::-1], channels[:2], [*channels, "more"]):
        with pytest.raises(Exception, match="does not match the channels"):
            composite.decode(text, wrong)
    for junk in ("", "x", text + "!", text.replace(".", ".A", 1), "a.b.c.d"):
        with pytest.raises(Exception, match="cursor"):
            composite.decode(junk, channels)


# -- /sse ------------------------------------------------------------------------------


async def test_sse_carries_several_channels_in_arrival_order(gateway, channel):
    """One stream: opens with its cursors, then every channel's messages as they arrive."""
    a, b = names(channel, 2)
    async with reading(gateway.url, [a, b], 3) as stream:
        first = await publish(gateway.url, a, "one")
        second = await publish(gateway.url, b, "two", event="chat")
        third = await publish(gateway.url, a, "three")
    assert set(stream.opening["cursors"]) == {a, b}
    assert composite.decode(stream.opening_id, [a, b])  # a composite for these channels
    assert stream.messages == [
        {"id": first, "channel": a, "event": "message", "data": "one"},
        {"id": second, "channel": b, "event": "chat", "data": "two"},
        {"id": third, "channel": a, "event": "message", "data": "three"},
    ]
    assert composite.decode(stream.last_id, [a, b]) == [Cursor.parse(third), Cursor.parse(second)]


async def test_sse_message_events_have_no_event_line(gateway, channel):
    """A native EventSource's onmessage sees every message: no ``event:`` line on them."""
    a, b = names(channel, 2)
    await publish(gateway.url, a, "x", event="custom")
    async with httpx.AsyncClient(timeout=10) as client:
        query = [("channel", f"{a}@0"), ("channel", b)]
        async with client.stream("GET", f"{gateway.url}/sse", params=query) as response:
            raw = b""
            with anyio.fail_after(5):
                async for chunk in response.aiter_bytes():
                    raw += chunk
                    if b'"data":"x"' in raw:
                        break
    opening, message = raw.split(b"\n\n")[:2]
    assert opening.startswith(b"event: subscribed\nid: ")
    assert message.startswith(b"id: ") and b"event:" not in message


async def test_sse_resumes_every_channel_from_last_event_id(gateway, channel):
    """Last-Event-ID resumes each channel after its own position, exactly once; it wins over the URL."""
    chans = names(channel, 3)
    ids = await publish_each(gateway.url, chans, 4)
    specs = [f"{c}@0" for c in chans]
    first = await read_sse(gateway.url, specs, 5)
    seen = {c: first.ids(c) for c in chans}
    more = await publish_each(gateway.url, chans, 2)
    # The URL says "all history" again; the header wins.
    rest = await read_sse(gateway.url, specs, 12 + 6 - 5, headers={"Last-Event-ID": first.last_id})
    for c in chans:
        assert seen[c] + rest.ids(c) == ids[c] + more[c], c
    assert rest.gaps == []


async def test_sse_resumes_from_its_opening_id_before_any_message(gateway, channel):
    """Dropped before the first message, the opening's id loses nothing (new-only and last=N)."""
    a, b = names(channel, 2)
    old = await publish_each(gateway.url, [a, b], 3)
    opened = await read_sse(gateway.url, [a, b], 0, last=1)
    assert opened.opening["cursors"] == {a: old[a][1], b: old[b][1]}
    new = await publish_each(gateway.url, [a, b], 1)
    resumed = await read_sse(
        gateway.url, [a, b], 4, headers={"Last-Event-ID": opened.opening_id}, last=1
    )
    assert resumed.ids(a) == [old[a][2], *new[a]] and resumed.ids(b) == [old[b][2], *new[b]]


async def test_sse_refuses_a_composite_for_other_channels(gateway, channel):
    """A Last-Event-ID (or ?cursor=) not made for this channel list is a 400 with the reason."""
    a, b = names(channel, 2)
    opened = await read_sse(gateway.url, [a, b], 0)
    async with httpx.AsyncClient(timeout=10) as client:
        for query, headers in (
            ([("channel", b), ("channel", a)], {"Last-Event-ID": opened.opening_id}),
            ([("channel", a)], {"Last-Event-ID": opened.opening_id}),
            ([("channel", a), ("channel", b), ("cursor", "junk")], {}),
        ):
            answer = await client.get(f"{gateway.url}/sse", params=query, headers=headers)
            assert answer.status_code == 400 and "cursor" in answer.json()["error"], answer.text


# -- /poll -----------------------------------------------------------------------------


async def test_poll_answers_messages_cursors_gaps_and_a_composite(gateway, channel):
    """Messages of every channel (in order within each), a cursor per channel, the composite."""
    a, b = names(channel, 2)
    ids = await publish_each(gateway.url, [a, b], 2)
    answer = await poll(gateway.url, [f"{a}@{ids[a][0]}", f"{b}@0"], timeout=5)
    got = [(m["channel"], m["id"]) for m in answer["messages"]]
    assert [i for c, i in got if c == a] == ids[a][1:] and [i for c, i in got if c == b] == ids[b]
    assert answer["cursors"] == {a: ids[a][-1], b: ids[b][-1]} and answer["gaps"] == []
    assert composite.decode(answer["cursor"], [a, b]) == [
        Cursor.parse(ids[a][-1]),
        Cursor.parse(ids[b][-1]),
    ]


async def test_poll_limit_counts_across_channels_and_is_never_a_gap(gateway, channel):
    """A channel cut by limit continues on the next poll: all once, in order, no gap."""
    chans = names(channel, 3)
    ids = await publish_each(gateway.url, chans, 5)
    answers = await poll_all(gateway.url, [f"{c}@0" for c in chans], 15, limit=4)
    assert all(len(a["messages"]) <= 4 for a in answers) and len(answers) >= 4
    assert all(a["gaps"] == [] for a in answers)
    for c in chans:
        assert [m["id"] for a in answers for m in a["messages"] if m["channel"] == c] == ids[c]


async def test_poll_waits_for_any_channel_then_times_out_with_its_cursors(gateway, channel):
    """One pending poll wakes on a message of any of its channels; else answers empty at timeout."""
    a, b = names(channel, 2)
    start = await poll(gateway.url, [a, b], timeout=0)
    specs = [f"{c}@{cursor}" for c, cursor in start["cursors"].items()]
    answers: list[dict[str, Any]] = []
    async with anyio.create_task_group() as tasks:

        async def wait() -> None:
            answers.append(await poll(gateway.url, specs, timeout=20))

        tasks.start_soon(wait)
        await anyio.sleep(0.3)
        with anyio.fail_after(5):
            woke = await publish(gateway.url, b, "wake")
    assert [m["id"] for m in answers[0]["messages"]] == [woke]
    assert answers[0]["cursors"] == {a: start["cursors"][a], b: woke}
    quiet = await poll(gateway.url, [f"{a}@{start['cursors'][a]}", f"{b}@{woke}"], timeout=0.3)
    assert quiet["messages"] == [] and quiet["cursors"] == {a: start["cursors"][a], b: woke}


# -- /ws -------------------------------------------------------------------------------


async def test_ws_subscribes_unsubscribes_and_publishes_by_frames(gateway, channel):
    """Frames in, frames out: subscribed (then history), ack before the message, unsubscribed."""
    a, b = names(channel, 2)
    old = await publish(gateway.url, a, "old")
    async with socket(gateway.ws_url) as ws:
        await ws.send(type="subscribe", channel=a, since="0")
        assert (await ws.until("subscribed", channel=a))["cursor"] == "0"
        assert (await ws.until("message", channel=a))["id"] == old
        await ws.send(type="subscribe", channel=b)
        await ws.until("subscribed", channel=b)
        await ws.send(type="publish", channel=b, data={"n": 1}, event="chat")
        ack = await ws.until("ack", channel=b)
        message = await ws.until("message", channel=b)
        assert message == {"type": "message", "id": ack["id"], "channel": b, "event": "chat", "data": '{"n":1}'}
        assert ws.frames.index(ack) < ws.frames.index(message)
        await ws.send(type="unsubscribe", channel=a)
        await ws.until("unsubscribed", channel=a)
        await publish(gateway.url, a, "not for us")
        last = await publish(gateway.url, b, "still for us")
        await ws.until("message", id=last)
    assert [m["data"] for m in ws.messages(a)] == ["old"]


async def test_ws_refuses_a_bad_frame_for_its_channel_and_goes_on(gateway, channel):
    """A bad subscribe or publish is an error frame (naming its channel); the rest goes on."""
    a = names(channel, 1)[0]
    async with socket(gateway.ws_url, [a]) as ws:
        await ws.until("subscribed", channel=a)
        for frame, reason in (
            ({"type": "subscribe", "channel": "bad name"}, "invalid channel"),
            ({"type": "subscribe", "channel": a}, "already subscribed"),
            ({"type": "subscribe", "channel": "ok", "since": "nope"}, "cursor"),
            ({"type": "publish", "channel": a}, "without data"),
            ({"type": "publish", "channel": a, "data": "x", "event": "a\nb"}, "event"),
            ({"type": "dance"}, "expected a frame"),
        ):
            await ws.send(**frame)
            error = await ws.until("error")
            assert reason in error["reason"] and error.get("channel") == frame.get("channel")
        await ws.ws.send("not json")
        assert "JSON" in (await ws.until("error"))["reason"]
        await ws.ws.send(b"binary")
        assert "binary" in (await ws.until("error"))["reason"]
        live = await publish(gateway.url, a, "still here")
        await ws.until("message", id=live)


async def test_ws_answers_a_ping_frame_with_a_pong(gateway, channel):
    """``{"type":"ping"}`` (the browser client's liveness check) is answered ``pong``, in order."""
    a = names(channel, 1)[0]
    async with socket(gateway.ws_url, [a]) as ws:
        await ws.until("subscribed", channel=a)
        await ws.send(type="ping")
        assert (await ws.until("pong")) == {"type": "pong"}


async def test_ws_subscribes_the_url_channels_while_connecting(gateway, channel):
    """?channel=…: one subscribed frame per channel first, then their messages."""
    a, b = names(channel, 2)
    ids = await publish_each(gateway.url, [a, b], 2)
    async with socket(gateway.ws_url, [f"{a}@{ids[a][0]}", b], last=1) as ws:
        while len(ws.messages()) < 2:
            await ws.until("message")
    assert [m["id"] for m in ws.messages()] == [ids[a][1], ids[b][1]]
    kinds = [(f["type"], f["channel"]) for f in ws.frames]
    assert kinds[:2] == [("subscribed", a), ("subscribed", b)]
    assert ws.frames[1]["cursor"] == ids[b][0]  # last=1: starts after the one before it


async def test_ws_refuses_bad_connect_parameters_with_1008(gateway, channel):
    """A bad ?channel= list is a close 1008 with the reason, as on /ws/{channel}."""
    for query, reason in (
        ("channel=a&channel=a", "named twice"),
        ("channel=has%20space", "invalid channel"),
        ("channel=a@junk", "cursor"),
        ("channel=a&cursor=junk", "cursor"),
        ("&".join(f"channel=c{n}" for n in range(65)), "65 channels"),
    ):
        code, said = await ws_closed(f"{gateway.ws_url}/ws?{query}")
        assert code == 1008 and reason in said, (query, said)


# -- across transports -----------------------------------------------------------------


async def test_one_position_resumes_on_every_transport(gateway, channel):
    """A composite from SSE or poll, or per-channel cursors, resume on SSE, poll and WS alike."""
    a, b = names(channel, 2)
    ids = await publish_each(gateway.url, [a, b], 3)
    sse = await read_sse(gateway.url, [f"{a}@0", f"{b}@0"], 3)
    polled = await poll(gateway.url, [a, b], cursor=sse.last_id, limit=1)
    more = await publish_each(gateway.url, [a, b], 1)
    everything = {c: ids[c] + more[c] for c in (a, b)}
    after = {c: sse.ids(c) + [m["id"] for m in polled["messages"] if m["channel"] == c] for c in (a, b)}
    rest = {c: everything[c][len(after[c]) :] for c in (a, b)}
    by_sse = await read_sse(gateway.url, [a, b], 4, headers={"Last-Event-ID": polled["cursor"]})
    assert {c: by_sse.ids(c) for c in (a, b)} == rest
    by_poll = await poll_all(gateway.url, [a, b], 4, cursor=polled["cursor"])
    assert {c: [m["id"] for x in by_poll for m in x["messages"] if m["channel"] == c] for c in (a, b)} == rest
    specs = [f"{c}@{cursor}" for c, cursor in polled["cursors"].items()]
    async with socket(gateway.ws_url, specs) as ws:
        with anyio.fail_after(10):
            while len(ws.messages()) < 4:
                await ws.until("message")
    assert {c: [m["id"] for m in ws.messages(c)] for c in (a, b)} == rest
    async with httpx.AsyncClient(timeout=10) as client:
        single = await client.get(f"{gateway.url}/poll/{a}", params={"since": polled["cursors"][a], "timeout": 0})
    assert [m["id"] for m in single.json()["messages"]] == rest[a]


@pytest.fixture(scope="module")
def small_history(broker: str, request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    redis = redis_for(broker, request)
    server = GatewayServer(gateway_env(broker, redis, GATEWAY_HISTORY_SIZE=str(HISTORY))).start()
    yield server
    server.close()


async def test_a_gap_on_one_channel_is_said_for_that_channel_only(small_history, channel):
    """History trimmed past one channel's cursor: gap for it alone on each transport, then what remains."""
    a, b = names(channel, 2)
    async with httpx.AsyncClient(timeout=30) as client:
        trimmed = [await publish(small_history.url, a, f"m{n}", client=client) for n in range(250)]
    kept = await publish_each(small_history.url, [b], 3)
    specs = [f"{a}@{trimmed[0]}", f"{b}@0"]

    sse = await read_sse(small_history.url, specs, 3 + 1)
    polled = await poll(small_history.url, specs, timeout=5)
    async with socket(small_history.ws_url, specs) as ws:
        await ws.until("gap", channel=a)
        await ws.until("message", id=kept[b][-1])
    assert sse.gaps == [a] and sse.items.index({"gap": a}) < len(sse.items) - 1
    assert polled["gaps"] == [a] and [m["id"] for m in polled["messages"] if m["channel"] == b] == kept[b]
    assert [f["channel"] for f in ws.frames if f["type"] == "gap"] == [a]
    for got in (sse.ids(a), [m["id"] for m in polled["messages"] if m["channel"] == a]):
        assert got and got == trimmed[trimmed.index(got[0]) : trimmed.index(got[0]) + len(got)]
        assert trimmed.index(got[0]) > 1


async def test_a_cursor_from_one_node_resumes_several_channels_on_the_other(redis_server: RedisServer, channel):
    """Two gateway processes on one Redis: a composite from one resumes every channel on the other."""
    env = gateway_env("redis", redis_server)
    first, second = GatewayServer(env).start(), GatewayServer(env).start()
    try:
        a, b = names(channel, 2)
        ids = await publish_each(first.url, [a, b], 3)
        seen = await read_sse(first.url, [f"{a}@0", f"{b}@0"], 4)
        more = await publish_each(second.url, [a, b], 1)
        rest = await read_sse(second.url, [a, b], 4, headers={"Last-Event-ID": seen.last_id})
        for c in (a, b):
            assert seen.ids(c) + rest.ids(c) == ids[c] + more[c]
        polled = await poll_all(second.url, [a, b], 8, cursor=seen.opening_id)
        assert [m["id"] for x in polled for m in x["messages"] if m["channel"] == a] == ids[a] + more[a]
    finally:
        first.close()
        second.close()


# -- bad input -------------------------------------------------------------------------


BAD_QUERIES = [
    ([], 400, "no channel"),
    ([("channel", "has space")], 400, "'has space'"),
    ([("channel", "ok@nope")], 400, "malformed cursor"),
    ([("channel", "ok@")], 400, "malformed cursor"),
    ([("channel", "twice"), ("channel", "twice@0")], 400, "'twice' named twice"),
    ([("channel", f"c{n}") for n in range(65)], 400, "65 channels"),
    ([("channel", "ok"), ("last", "many")], 400, "last"),
    ([("channel", f"{'x' * 120}{n}") for n in range(64)], 414, "URL"),
]


@pytest.mark.parametrize("route", ["sse", "poll"])
@pytest.mark.parametrize("case", range(len(BAD_QUERIES)))
async def test_bad_input_is_refused_with_its_reason(gateway, route, case):
    """No channel, a bad name or cursor, twice, too many, too long: each named, never a 5xx."""
    query, status, reason = BAD_QUERIES[case]
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"{gateway.url}/{route}", params=[*query, ("timeout", "0")])
    assert answer.status_code == status and reason in answer.json()["error"], answer.text


@pytest.mark.parametrize("route", ["sse", "poll"])
async def test_a_header_past_8_kib_is_431(gateway, route):
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(
            f"{gateway.url}/{route}", params={"channel": "ok"}, headers={"Last-Event-ID": "x" * 9000}
        )
    assert answer.status_code == 431 and "last-event-id" in answer.json()["error"]


async def test_a_websocket_handshake_past_8_kib_is_refused_with_its_reason(gateway):
    """uvicorn's WebSocket parser would answer nothing past 8 KiB: the gateway refuses with a reason."""
    query = "&".join(f"channel={'x' * 120}{n}" for n in range(64))
    code, reason = await ws_closed(f"{gateway.ws_url}/ws?{query}")
    assert code == 1008 and "URL" in reason


async def test_a_connection_counts_once_whatever_its_channels(gateway, channel):
    """Connection accounting: one SSE stream on five channels is one connection."""

    async def open_sse() -> float:
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(f"{gateway.url}/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith('gateway_connections{transport="sse"}'))
        return float(line.split()[-1])

    before = await open_sse()
    with anyio.fail_after(10):  # earlier tests' streams are counted until noticed gone
        while (await open_sse()) != before or before != 0:
            await anyio.sleep(0.3)
            before = await open_sse()
    async with reading(gateway.url, names(channel, 5), 1):
        during = await open_sse()
        await publish(gateway.url, names(channel, 5)[4], "bye")
    assert during == before + 1


# -- security --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured() -> Iterator[GatewayServer]:
    env = {"REDIS_URL": "", "GATEWAY_SECRET": SECRET, "GATEWAY_PUBLIC_CHANNELS": "public:*"}
    server = GatewayServer(env).start()
    yield server
    server.close()


async def test_a_token_must_allow_every_channel(secured):
    """403 naming the refused channels (WS: close 1008); public ones need no right."""
    token = mint(["mine:*"], ["mine:*"])
    query = "channel=mine:a&channel=public:b&channel=theirs:c&channel=theirs:d"
    async with httpx.AsyncClient(timeout=10) as client:
        for route in ("sse", "poll"):
            answer = await client.get(f"{secured.url}/{route}?{query}&timeout=0&token={token}")
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"] == "token does not allow reading 'theirs:c', 'theirs:d'"
            anonymous = await client.get(f"{secured.url}/{route}?channel=mine:a&timeout=0")
            assert anonymous.status_code == 401
        ok = await client.get(f"{secured.url}/poll?channel=mine:a&channel=public:b&timeout=0&token={token}")
        assert ok.status_code == 200
    code, said = await ws_closed(f"{secured.ws_url}/ws?{query}&token={token}")
    assert code == 1008 and "'theirs:c', 'theirs:d'" in said


async def test_ws_refuses_one_channel_and_serves_the_others(secured):
    """A subscribe or publish frame without the right is an error frame; the socket goes on."""
    token = mint(["mine:*", "readonly"], ["mine:*"])
    async with socket(secured.ws_url, ["mine:x"], token=token) as ws:
        await ws.until("subscribed", channel="mine:x")
        await ws.send(type="subscribe", channel="theirs:y")
        assert "does not allow reading" in (await ws.until("error", channel="theirs:y"))["reason"]
        await ws.send(type="subscribe", channel="readonly")
        await ws.until("subscribed", channel="readonly")
        await ws.send(type="publish", channel="readonly", data="no")
        assert "does not allow publishing" in (await ws.until("error", channel="readonly"))["reason"]
        await ws.send(type="publish", channel="mine:x", data="yes")
        ack = await ws.until("ack", channel="mine:x")
        await ws.until("message", id=ack["id"])
    async with socket(secured.ws_url) as anonymous:
        await anonymous.send(type="subscribe", channel="mine:x")
        assert (await anonymous.until("error", channel="mine:x"))["reason"] == "token required"
        await anonymous.send(type="subscribe", channel="public:z")
        await anonymous.until("subscribed", channel="public:z")


async def test_a_subscribe_past_max_channels_is_an_error_frame(limited, channel):
    """GATEWAY_MAX_CHANNELS holds for frames too; leaving a channel makes room."""
    a, b, c = names(channel, 3)
    async with socket(limited.ws_url, [a, b]) as ws:
        await ws.send(type="subscribe", channel=c)
        assert "GATEWAY_MAX_CHANNELS" in (await ws.until("error", channel=c))["reason"]
        await ws.send(type="unsubscribe", channel=a)
        await ws.send(type="subscribe", channel=c)
        await ws.until("subscribed", channel=c)


# -- slow consumers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited() -> Iterator[GatewayServer]:
    env = {
        "REDIS_URL": "", "GATEWAY_QUEUE_SIZE": "16", "GATEWAY_HEARTBEAT": "1",
        "GATEWAY_MAX_CHANNELS": "2",
    }
    server = GatewayServer(env).start()
    yield server
    server.close()


async def _flood(server: GatewayServer, channel: str) -> None:
    data = "z" * 32768
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(400):
            await publish(server.url, channel, data, client=client)


async def test_a_lagging_websocket_is_closed_1013_as_a_whole(limited, channel):
    """A lag on one channel closes the socket 1013 lagged: the client resumes every channel."""
    a, b = names(channel, 2)
    url = httpx.URL(f"{limited.ws_url}/ws", params=[("channel", a), ("channel", b)])
    async with websockets.connect(str(url), max_queue=1, max_size=2**20, compression=None) as ws:
        await _flood(limited, b)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            with anyio.fail_after(15):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013, "lagged")


async def test_a_lagging_sse_stream_ends_with_retry_and_resumes(limited, channel):
    """A stream that stops reading ends with retry:; its last id resumes every channel."""
    a, b = names(channel, 2)
    async with httpx.AsyncClient(timeout=60) as client:
        query = [("channel", a), ("channel", b)]
        async with client.stream("GET", f"{limited.url}/sse", params=query) as response:
            stream = events(response)
            assert (await anext(stream)).event == "subscribed"
            await _flood(limited, b)
            seen = [event async for event in stream]
    assert seen[-1].event == "" and seen[-1].retry is not None
    messages = [e for e in seen if e.event == "message"]
    assert 0 < len(messages) < 400
    last_id = messages[-1].id
    rest = await read_sse(limited.url, [a, b], 400 - len(messages), headers={"Last-Event-ID": last_id})
    assert len(rest.ids(b)) == 400 - len(messages) and rest.gaps == []
