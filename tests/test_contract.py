"""The SPEC's contract, on a real server, on both brokers, with real clients."""

from __future__ import annotations

import anyio
import httpx
import pytest

from tests.clients import (
    TRANSPORTS,
    Reader,
    on_every_transport,
    publish,
    reader_for,
    subscribed,
)
from tests.conftest import BROKERS

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module", params=[*BROKERS, "plain"])
def broker(request: pytest.FixtureRequest) -> str:
    """The contract holds on every broker, and with every acceleration off (server/)."""
    return str(request.param)


async def test_one_publish_is_seen_on_every_transport_with_the_same_id(gateway, channel):
    """One publish reaches SSE, WebSocket and long-poll with the same id, event and data."""
    readers = {}
    async with anyio.create_task_group() as tasks:
        for transport in TRANSPORTS:
            reader = Reader()
            readers[transport] = reader
            read = reader_for(transport, gateway)
            tasks.start_soon(lambda r=read, rd=reader: r(channel, rd, 1))
        with anyio.fail_after(10):
            for reader in readers.values():
                await reader.ready.wait()
        message_id = await publish(gateway.url, channel, "hello", event="greeting")
    for transport, reader in readers.items():
        assert reader.messages == [
            {"id": message_id, "channel": channel, "event": "greeting", "data": "hello"}
        ], transport


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_fast_burst_arrives_in_order_without_loss_or_duplicate(gateway, channel, transport):
    """1000 messages published without pause arrive in order, once each."""
    count = 1000
    read = reader_for(transport, gateway)
    async with subscribed(read, channel, count) as reader:
        async with httpx.AsyncClient(timeout=30) as client:
            ids = [await publish(gateway.url, channel, str(n), client=client) for n in range(count)]
    assert [m["id"] for m in reader.messages] == ids
    assert [m["data"] for m in reader.messages] == [str(n) for n in range(count)]
    assert reader.gaps == 0


@pytest.mark.parametrize("first", TRANSPORTS)
@pytest.mark.parametrize("second", TRANSPORTS)
async def test_a_client_resumes_from_its_cursor_on_any_transport(gateway, channel, first, second):
    """A client that drops after message k gets k+1 onwards exactly once, on any transport."""
    async with httpx.AsyncClient(timeout=30) as client:
        ids = [await publish(gateway.url, channel, f"m{n}", client=client) for n in range(10)]
        reader = await reader_for(first, gateway)(channel, Reader(), 4, since="0")
        assert [m["id"] for m in reader.messages][:4] == ids[:4]
        cursor = reader.messages[3]["id"]
        more = [await publish(gateway.url, channel, f"m{n}", client=client) for n in range(10, 15)]
    resumed = await reader_for(second, gateway)(channel, Reader(), 11, since=cursor)
    assert [m["id"] for m in resumed.messages] == ids[4:] + more
    assert resumed.gaps == 0


async def test_sse_resumes_from_last_event_id_header(gateway, channel):
    """The Last-Event-ID header a browser sends on reconnect is a cursor."""
    ids = [await publish(gateway.url, channel, f"m{n}") for n in range(5)]
    read = reader_for("sse", gateway)
    reader = await read(channel, Reader(), 3, since="0", last_event_id=ids[1])
    assert [m["id"] for m in reader.messages] == ids[2:]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_since_zero_gives_all_history_and_last_n_the_last_n(gateway, channel, transport):
    """since=0 replays the whole history; last=N the newest N, then live ones."""
    ids = [await publish(gateway.url, channel, f"m{n}") for n in range(6)]
    read = reader_for(transport, gateway)
    everything = await read(channel, Reader(), 6, since="0")
    assert [m["id"] for m in everything.messages] == ids
    async with subscribed(read, channel, 3, last=2) as reader:
        with anyio.fail_after(10):
            while len(reader.messages) < 2:
                await anyio.sleep(0.01)
        live = await publish(gateway.url, channel, "live")
    assert [m["id"] for m in reader.messages] == [*ids[4:], live]


async def test_poll_answers_at_once_when_messages_wait(gateway, channel):
    """A poll with a cursor behind the newest message answers immediately."""
    first = await publish(gateway.url, channel, "a")
    second = await publish(gateway.url, channel, "b")
    async with httpx.AsyncClient(timeout=30) as client:
        with anyio.fail_after(2):
            answer = (
                await client.get(
                    f"{gateway.url}/poll/{channel}", params={"since": first, "timeout": 20}
                )
            ).json()
    assert answer == {
        "channel": channel,
        "messages": [{"id": second, "channel": channel, "event": "message", "data": "b"}],
        "cursor": second,
        "gap": False,
    }


async def test_poll_wakes_on_publish(gateway, channel):
    """A waiting poll answers as soon as a message is published."""
    async with httpx.AsyncClient(timeout=30) as client:
        cursor = (await client.get(f"{gateway.url}/poll/{channel}", params={"timeout": 0})).json()[
            "cursor"
        ]
        answers = []

        async def poll() -> None:
            answer = await client.get(
                f"{gateway.url}/poll/{channel}", params={"since": cursor, "timeout": 20}
            )
            answers.append(answer.json())

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(poll)
                await anyio.sleep(0.3)
                message_id = await publish(gateway.url, channel, "wake", client=client)
    assert [m["id"] for m in answers[0]["messages"]] == [message_id]
    assert answers[0]["cursor"] == message_id


async def test_poll_times_out_with_no_messages_and_the_same_cursor(gateway, channel):
    """A poll with nothing to say answers after timeout, empty, with its cursor unchanged."""
    cursor = await publish(gateway.url, channel, "a")
    async with httpx.AsyncClient(timeout=30) as client:
        started = anyio.current_time()
        answer = (
            await client.get(
                f"{gateway.url}/poll/{channel}", params={"since": cursor, "timeout": 0.5}
            )
        ).json()
        waited = anyio.current_time() - started
    assert answer["messages"] == [] and answer["cursor"] == cursor and answer["gap"] is False
    assert waited >= 0.45


async def test_poll_without_cursor_waits_for_the_next_message(gateway, channel):
    """Without since, the cursor is the newest id and the poll waits for the next one."""
    newest = await publish(gateway.url, channel, "old")
    async with httpx.AsyncClient(timeout=30) as client:
        answer = (await client.get(f"{gateway.url}/poll/{channel}", params={"timeout": 0.2})).json()
    assert answer["messages"] == [] and answer["cursor"] == newest


async def test_poll_clamps_timeout_and_limit(gateway, channel):
    """timeout is clamped to the server's bound, limit to at least one; junk is a 400."""
    ids = [await publish(gateway.url, channel, f"m{n}") for n in range(3)]
    async with httpx.AsyncClient(timeout=30) as client:
        one = (
            await client.get(f"{gateway.url}/poll/{channel}", params={"since": "0", "limit": 0})
        ).json()
        assert [m["id"] for m in one["messages"]] == ids[:1] and one["cursor"] == ids[0]
        two = (
            await client.get(f"{gateway.url}/poll/{channel}", params={"since": ids[0], "limit": 2})
        ).json()
        assert [m["id"] for m in two["messages"]] == ids[1:]
        quick = await client.get(
            f"{gateway.url}/poll/{channel}", params={"since": ids[2], "timeout": -5}
        )
        assert quick.status_code == 200 and quick.json()["messages"] == []
        bad = await client.get(f"{gateway.url}/poll/{channel}", params={"timeout": "soon"})
        assert bad.status_code == 400 and "timeout" in bad.json()["error"]


MULTILINE = "line one\nline two\n\nline four with trailing\n"
UNICODE = "héllo wörld — 你好 🎉 \u2028 tab\tend"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "data",
    [MULTILINE, UNICODE, "", " leading space", '{"json": [1, 2]}'],
    ids=["multiline", "unicode", "empty", "leading-space", "json"],
)
async def test_data_survives_every_transport_byte_for_byte(gateway, channel, transport, data):
    """Multi-line, unicode, empty and JSON data arrive exactly as published."""
    message_id = await publish(gateway.url, channel, data)
    reader = await reader_for(transport, gateway)(channel, Reader(), 1, since="0")
    assert reader.messages == [
        {"id": message_id, "channel": channel, "event": "message", "data": data}
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_message_of_the_maximum_size_survives_and_one_byte_more_is_413(
    gateway, channel, transport
):
    """GATEWAY_MAX_MESSAGE_BYTES bytes pass on every transport; one byte more is refused."""
    data = "é" * 32768  # 65536 bytes of UTF-8
    assert len(data.encode()) == 65536
    message_id = await publish(gateway.url, channel, data)
    reader = await reader_for(transport, gateway)(channel, Reader(), 1, since="0")
    assert reader.messages[0]["id"] == message_id and reader.messages[0]["data"] == data
    async with httpx.AsyncClient() as client:
        refused = await client.post(
            f"{gateway.url}/publish/{channel}", content=data.encode() + b"x"
        )
    assert refused.status_code == 413 and "65536" in refused.json()["error"]


@pytest.mark.parametrize("path", ["/sse/{c}", "/poll/{c}", "/publish/{c}"])
@pytest.mark.parametrize("bad", ["has space", "x" * 129, "a/b", "semi;colon", "%00"])
async def test_a_bad_channel_name_is_400_with_a_reason(gateway, path, bad):
    """Names outside [A-Za-z0-9_.:-]{1,128} are refused on every HTTP route."""
    method = "POST" if path.startswith("/publish") else "GET"
    async with httpx.AsyncClient() as client:
        response = await client.request(method, gateway.url + path.format(c=bad), content=b"x")
    assert response.status_code == 400
    assert "channel" in response.json()["error"]


@pytest.mark.parametrize("cursor", ["abc", "1-2", "e:1", "e:1-x", ":1-2", "x" * 300 + ":1-2"])
@pytest.mark.parametrize("route", ["sse", "poll"])
async def test_a_malformed_cursor_is_400_not_a_gap(gateway, channel, cursor, route):
    """A cursor the gateway never gave is a client error, said plainly."""
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"{gateway.url}/{route}/{channel}", params={"since": cursor, "timeout": 0}
        )
    assert response.status_code == 400
    assert "cursor" in response.json()["error"]


async def test_an_unknown_event_name_is_400(gateway, channel):
    """An event name that could smuggle SSE fields is refused."""
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gateway.url}/publish/{channel}", params={"event": "x\ndata: y"}, content=b"z"
        )
    assert response.status_code == 400 and "event" in response.json()["error"]


async def test_websocket_refuses_bad_channel_and_cursor_with_1008(gateway):
    """WebSocket refusals are close 1008 with the reason."""
    from tests.clients import read_ws

    bad_channel = await read_ws(gateway.ws_url, "has%20space", Reader(), 1)
    assert bad_channel.closed_with is not None and bad_channel.closed_with[0] == 1008
    assert "channel" in bad_channel.closed_with[1]
    bad_cursor = await read_ws(gateway.ws_url, "ok", Reader(), 1, since="nope")
    assert bad_cursor.closed_with is not None and bad_cursor.closed_with[0] == 1008
    assert "cursor" in bad_cursor.closed_with[1]


async def test_websocket_publish_is_acked_and_delivered(gateway, channel):
    """A publish frame gets an ack with the id every subscriber sees; bad frames get errors."""
    import json

    import websockets

    async with subscribed(reader_for("sse", gateway), channel, 1) as reader:
        async with websockets.connect(f"{gateway.ws_url}/ws/{channel}") as ws:
            await ws.send(json.dumps({"type": "publish", "data": "from ws", "event": "chat"}))
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "ack":
                    break
            await ws.send("not json")
            error = json.loads(await ws.recv())
            while error["type"] == "message":
                error = json.loads(await ws.recv())
    assert error["type"] == "error" and "JSON" in error["reason"]
    assert reader.messages == [
        {"id": frame["id"], "channel": channel, "event": "chat", "data": "from ws"}
    ]


async def test_health_and_readiness(gateway):
    """/healthz says alive; /readyz says the broker link delivers."""
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{gateway.url}/healthz")).status_code == 200
        assert (await client.get(f"{gateway.url}/readyz")).status_code == 200


async def test_sse_headers_and_heartbeat(gateway, channel):
    """SSE answers no-cache and no buffering, and sends comment heartbeats."""
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", f"{gateway.url}/sse/{channel}") as response:
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            assert response.headers["content-type"].startswith("text/event-stream")
            seen = b""
            with anyio.fail_after(5):  # GATEWAY_HEARTBEAT is 1 s here
                async for chunk in response.aiter_bytes():
                    seen += chunk
                    if len(_heartbeats(seen)) >= 2:
                        break
    assert seen.startswith(b":")  # the opening is a comment too
    assert len(_heartbeats(seen)) >= 2


async def test_sse_answers_only_get_and_head(gateway, channel):
    """Another method on an SSE route is 405 with Allow, as on every route."""
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(f"{gateway.url}/sse/{channel}", content=b"x")
        head = await client.head(f"{gateway.url}/sse/{channel}")
    assert answer.status_code == 405 and answer.headers["allow"] == "GET, HEAD"
    assert head.status_code == 200


def _heartbeats(stream: bytes) -> list[bytes]:
    """The bare comments (``:`` alone) among an SSE stream's blocks."""
    return [block for block in stream.split(b"\n\n") if block == b":"]


async def test_every_transport_works_under_a_root_path(channel):
    """Behind a proxy that strips a prefix (``--root-path``), SSE and WebSocket, served past the router, still answer."""
    from tests.servers import GatewayServer

    # uvicorn puts the root path in front of the path the proxy forwards.
    server = GatewayServer({"REDIS_URL": ""}, args=["--root-path", "/gw"]).start()
    try:
        mounted = server
        with anyio.fail_after(20):
            async with on_every_transport(mounted, channel, 1) as readers:
                message_id = await publish(mounted.url, channel, "under /gw")
        for transport, reader in readers.items():
            assert [m["id"] for m in reader.messages] == [message_id], transport
        async with httpx.AsyncClient(timeout=10) as client:
            bad = await client.get(f"{mounted.url}/sse/bad%20channel")
        assert bad.status_code == 400 and "invalid channel" in bad.json()["error"]
    finally:
        server.close()
