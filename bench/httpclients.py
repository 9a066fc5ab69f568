"""Subscribers over plain HTTP/1.1: SSE, the gateway's long-poll, Engine.IO polling.

Ten thousand of them must fit in one generator process on one core, so each
is a bare ``asyncio.Protocol`` (no task, no stream reader per connection)
whose responses are parsed by httptools (llhttp, the parser uvicorn uses),
chunked transfer encoding included. Each ``data_received`` call reads the
clock once for everything it carries.
"""

from __future__ import annotations

import asyncio
import time

import httptools
import orjson
from tally import Subscriber, Tally

RETRIED = (429, 503)
RETRY_AFTER_S = 1.0


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; subclasses react to responses."""

    def __init__(self, host: str, port: int) -> None:
        self.host_header = f"{host}:{port}".encode()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.body: list[bytes] = []
        self.now = 0.0

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.opened()

    def data_received(self, data: bytes) -> None:
        self.now = time.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail("malformed http")

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost("connection lost")

    # -- httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.body = []
        self.headers_done()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.response_done(b"".join(self.body))

    # -- helpers and hooks
    def request(self, method: str, target: str, body: bytes = b"", extra: str = "") -> None:
        assert self.transport is not None
        head = f"{method} {target} HTTP/1.1\r\nHost: ".encode() + self.host_header
        length = f"\r\nContent-Length: {len(body)}" if method == "POST" else ""
        self.transport.write(head + f"{length}{extra}\r\n\r\n".encode() + body)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def fail(self, reason: str) -> None:
        self.on_lost(reason)
        self.close()

    def opened(self) -> None: ...
    def headers_done(self) -> None: ...
    def response_done(self, body: bytes) -> None: ...
    def on_lost(self, reason: str) -> None: ...


class HttpSubscriber(HttpConnection, Subscriber):
    def __init__(self, host: str, port: int, path: str, tally: Tally) -> None:
        HttpConnection.__init__(self, host, port)
        Subscriber.__init__(self, tally)
        self.path = path
        self.up: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connected(self) -> None:
        self.mark_connected()
        if not self.up.done():
            self.up.set_result(None)

    def on_lost(self, reason: str) -> None:
        if not self.up.done():
            self.up.set_exception(ConnectionError(reason))
        self.mark_closed(reason)


class SseSubscriber(HttpSubscriber):
    """Any SSE server: every ``data:`` line is one message's data."""

    def __init__(self, host: str, port: int, path: str, tally: Tally) -> None:
        super().__init__(host, port, path, tally)
        self.pending = b""

    def opened(self) -> None:
        self.request("GET", self.path, extra="\r\nAccept: text/event-stream")

    def headers_done(self) -> None:
        if self.status == 200:
            self.connected()
        else:
            self.fail(f"http {self.status}")

    def on_body(self, body: bytes) -> None:
        text = self.pending + body
        end = text.rfind(b"\n")
        if end < 0:
            self.pending = text
            return
        self.pending = text[end + 1 :]
        for line in text[:end].split(b"\n"):
            if line.startswith(b"data:"):
                self.on_data(line[5:])

    def on_data(self, data: bytes) -> None:
        self.deliver(data, self.now)

    def response_done(self, body: bytes) -> None:
        self.fail("stream ended")


class SseMultiSubscriber(SseSubscriber):
    """The gateway's several-channel ``/sse``: each ``data:`` line is a message's JSON.

    The opening (``event: subscribed``) and gap events carry JSON without an
    ``id``: not messages. Only the shared channel is published to.
    """

    def on_data(self, data: bytes) -> None:
        message = orjson.loads(data)
        if "id" in message:
            self.deliver(message["data"], self.now)


class PollSubscriber(HttpSubscriber):
    """The gateway's ``/poll``: the answer's cursor is the next request's ``since``."""

    def __init__(self, host: str, port: int, path: str, tally: Tally) -> None:
        super().__init__(host, port, path, tally)
        self.cursor: str | None = None

    def opened(self) -> None:
        # A first poll is answered only by the next message (the warm-up), so
        # the connection counts as up once its request is on the wire.
        self.connected()
        self.poll()

    def poll(self) -> None:
        if self.closed:
            return
        since = f"&since={self.cursor}" if self.cursor else ""
        self.request("GET", f"{self.path}{since}")

    def response_done(self, body: bytes) -> None:
        if self.status in RETRIED:
            # What a client does with 503/429 + Retry-After: poll again, same cursor.
            self.tally.error(f"http {self.status} (polled again)")
            asyncio.get_running_loop().call_later(RETRY_AFTER_S, self.poll)
            return
        if self.status != 200:
            self.fail(f"http {self.status}")
            return
        answer = orjson.loads(body)
        if answer.get("gap"):
            self.tally.error("gap")
        before = self.tally.delivered
        for message in answer["messages"]:
            self.deliver(message["data"], self.now)
        self.tally.answers += self.tally.delivered > before
        self.cursor = answer["cursor"]
        if not self.tally.stopping:
            self.poll()


class NchanPollSubscriber(HttpSubscriber):
    """Nchan's long-poll subscriber: one message per answer; its ``Last-Modified`` and
    ``Etag`` come back as ``If-Modified-Since`` and ``If-None-Match`` (Nchan's cursor)."""

    def __init__(self, host: str, port: int, path: str, tally: Tally) -> None:
        super().__init__(host, port, path, tally)
        self.last_modified = b""
        self.etag = b""
        self.cursor = ""

    def opened(self) -> None:
        self.connected()
        self.poll()

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"last-modified":
            self.last_modified = value
        elif lower == b"etag":
            self.etag = value

    def poll(self) -> None:
        if not self.closed:
            self.request("GET", self.path, extra=self.cursor)

    def response_done(self, body: bytes) -> None:
        if self.status in RETRIED:
            self.tally.error(f"http {self.status} (polled again)")
            asyncio.get_running_loop().call_later(RETRY_AFTER_S, self.poll)
            return
        if self.status == 200:
            before = self.tally.delivered
            self.deliver(body, self.now)
            self.tally.answers += self.tally.delivered > before
            self.cursor = (f"\r\nIf-Modified-Since: {self.last_modified.decode()}"
                           f"\r\nIf-None-Match: {self.etag.decode()}")
        elif self.status not in (304, 408):  # 304/408: Nchan's timeout, same cursor
            self.fail(f"http {self.status}")
            return
        if not self.tally.stopping:
            self.poll()


class EngineIoPollSubscriber(HttpSubscriber):
    """Socket.IO over Engine.IO v4 long-polling, one keep-alive connection.

    Handshake GET (``0{"sid":...}``), POST ``40{auth}`` to join (the server's
    connect handler enters the room named in ``auth``), then GET after GET;
    a ping (``2``) is answered by a POST ``3`` before the next GET.
    """

    def __init__(self, host: str, port: int, path: str, tally: Tally, channel: str) -> None:
        super().__init__(host, port, path, tally)
        self.auth = orjson.dumps({"channel": channel})
        self.sid = ""
        self.outbox: list[bytes] = []

    def opened(self) -> None:
        self.request("GET", self.path)

    def response_done(self, body: bytes) -> None:
        if self.status != 200:
            self.fail(f"http {self.status}")
            return
        if not self.sid:
            self.sid = orjson.loads(body[1:])["sid"]
            self.path = f"{self.path}&sid={self.sid}"
            self.outbox.append(b"40" + self.auth)
        elif body != b"ok":
            for packet in body.split(b"\x1e"):
                self.packet(packet)
        if self.tally.stopping:
            return
        if self.outbox:
            self.request("POST", self.path, b"\x1e".join(self.outbox),
                         "\r\nContent-Type: text/plain;charset=UTF-8")
            self.outbox = []
        else:
            self.request("GET", self.path)

    def packet(self, packet: bytes) -> None:
        if packet.startswith(b"42"):
            self.deliver(orjson.loads(packet[2:])[1], self.now)
        elif packet == b"2":
            self.outbox.append(b"3")
        elif packet.startswith(b"40"):
            self.connected()
        elif packet.startswith(b"44"):
            self.fail("socket.io connect refused")
        elif packet == b"1" or packet == b"41":
            self.fail("socket.io closed")
