"""Property-based: whatever a client sends, a real server answers without a 500
and stays alive.

Everything a client controls is drawn by hypothesis: channel names, cursors,
``since``/``last``/``timeout``/``limit``/``event``/``token``, the
``Last-Event-ID`` header, publish bodies, and WebSocket frames (any text,
any JSON, publish frames with any data and event). One server for the
module, with a secret so that tokens are decoded, every channel public so
that reads get past the token to the parameters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.servers import GatewayServer

SECRET = "fuzz-secret-long-enough-for-hs256-keys!!"
GOOD_TOKEN = jwt.encode({"sub_channels": ["*"], "pub_channels": ["*"], "exp": 2**31 - 1},
                        SECRET, algorithm="HS256")
EXAMPLES = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# No 404: the routes take any text as the channel (line breaks too), so a bad
# name is the gateway's 400 with its reason, never the router's 404.
ROUTING: set[int] = set()
HTTP_READ = {200, 400, 401, 403} | ROUTING
HTTP_PUBLISH = {201, 400, 401, 403, 413} | ROUTING
WS_REFUSALS = {1008, 1009}


@pytest.fixture(scope="module")
def server() -> Iterator[GatewayServer]:
    env = {"REDIS_URL": "", "GATEWAY_SECRET": SECRET, "GATEWAY_PUBLIC_CHANNELS": "*",
           "GATEWAY_POLL_TIMEOUT": "0.2", "GATEWAY_MAX_MESSAGE_BYTES": "256",
           "GATEWAY_WS_MAX_FRAME_BYTES": "1024", "GATEWAY_HEARTBEAT": "1"}
    gateway = GatewayServer(env).start()
    yield gateway
    assert gateway.alive()
    log = gateway.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    gateway.close()


@pytest.fixture(scope="module")
def http(server: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


# -- what a client controls ------------------------------------------------------

text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60)
ascii_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
numbers = st.one_of(st.integers(), st.floats()).map(str)
good_channel = st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True)
# "." and ".." never reach a route: clients remove dot segments ("/sse/.." is "/").
channels = st.one_of(good_channel, text.filter(bool), st.text(min_size=120, max_size=140)).filter(
    lambda name: name not in (".", ".."))
cursors = st.one_of(
    st.just("0"),
    st.from_regex(r"[A-Za-z0-9]{1,40}:[0-9]{1,25}-[0-9]{1,25}", fullmatch=True),
    text, numbers,
)
tokens = st.one_of(st.just(GOOD_TOKEN), text, st.just(GOOD_TOKEN[:-3] + "abc"))
params = st.fixed_dictionaries({}, optional={
    "since": cursors, "last": st.one_of(numbers, text), "timeout": st.one_of(numbers, text),
    "limit": st.one_of(numbers, text), "event": st.one_of(good_channel, text), "token": tokens,
})
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
publish_frames = st.fixed_dictionaries(
    {"type": st.just("publish")}, optional={"data": json_values, "event": json_values | good_channel}
).map(json.dumps)
frames = st.one_of(text, json_values.map(json.dumps), publish_frames, st.text(min_size=1000, max_size=1100))


def path(route: str, channel: str) -> str:
    return f"/{route}/{quote(channel, safe='')}"


# -- properties ----------------------------------------------------------------


@EXAMPLES
@given(channel=channels, query=params)
def test_poll_never_fails_on_any_query(http, channel, query):
    """Any channel and any poll parameters: a 2xx or a 4xx with a reason."""
    answer = http.get(path("poll", channel), params=query)
    assert answer.status_code in HTTP_READ, answer.text
    assert answer.status_code in {200} | ROUTING or answer.json()["error"]


@EXAMPLES
@given(channel=channels, query=params, last_event_id=st.one_of(st.none(), ascii_text.map(str.strip)))
def test_sse_never_fails_on_any_query_or_last_event_id(http, channel, query, last_event_id):
    """Any channel, parameters and Last-Event-ID (as h11 lets a client send): opens, or a 4xx."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    with http.stream("GET", path("sse", channel), params=query, headers=headers) as answer:
        assert answer.status_code in HTTP_READ
        if answer.status_code == 200:
            assert next(answer.iter_bytes())  # the opening bytes: subscribed
        elif answer.status_code not in ROUTING:
            assert json.loads(answer.read())["error"]


@EXAMPLES
@given(channel=channels, query=params, body=st.binary(max_size=300))
def test_publish_never_fails_on_any_body_or_query(http, channel, query, body):
    """Any channel, event, token and body: 201 or a 4xx with a reason."""
    answer = http.post(path("publish", channel), params=query, content=body)
    assert answer.status_code in HTTP_PUBLISH, answer.text


@EXAMPLES
@given(channel=channels, query=params, sent=st.lists(frames, min_size=1, max_size=4))
def test_websocket_answers_any_frame_or_closes_with_a_reason(server, channel, query, sent):
    """Any frames: each is answered with ack or error, or the socket closes 1008/1009."""
    url = server.ws_url + path("ws", channel) + "?" + str(httpx.QueryParams(query))
    try:
        ws = connect(url, compression=None, open_timeout=10, close_timeout=5)
    except InvalidStatus as refused:  # no route matched (see ROUTING): handshake refused
        assert refused.response.status_code == 403 and "\n" in channel
        return
    with ws:
        try:
            for frame in sent:
                ws.send(frame)
                assert _reply(ws)["type"] in ("ack", "error")
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code in WS_REFUSALS, closed
            assert closed.rcvd.reason


def _reply(ws: Any) -> dict[str, Any]:
    while True:
        frame = json.loads(ws.recv(timeout=10))
        if frame["type"] not in ("message", "gap"):
            return dict(frame)
