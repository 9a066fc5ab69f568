"""Send one byte stream to two servers, read what each answers, and say how the answers differ.

The differential test (tests/test_differential.py) sends the same bytes,
cut into the same pieces, to the gateway with its own HTTP protocol and to
the same app under uvicorn's plain httptools protocol. This module is its
wire: a raw TCP connection per stream (pieces written with a pause, so the
server sees separate reads), a lenient parser of what came back, and a
comparison of the parts that matter to a client.

What is compared, per connection: the sequence of answers (status, every
header but ``date``, the body), whether the server closed the connection
promptly, and any bytes that do not parse as an answer. An answer that
opens a stream (SSE, a WebSocket's 101) is compared by its head only, and
ends the reading. Each piece is sent once the server is idle (``idle``),
so each is a read of its own however loaded the machine. Not compared: header order (two paths may write the
same headers in another order; a client reads them as a set) and when a
server closes an idle keep-alive connection (uvicorn's timer closes it at
``--timeout-keep-alive``, the gateway's sweep up to a second later:
keepalive.py), which is why only a close within ``PROMPT_CLOSE_S`` of the
last thing either side sent counts as "closed".
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

PAUSE_S = 0.005  # how often a server is looked at while it works (``idle``)
# A server busy (or an answer late) longer than these gets the next piece anyway: together
# well below the servers' --timeout-keep-alive (2 s), which would close the connection.
IDLE_CEILING_S = 0.5
ANSWER_CEILING_S = 0.5
CROWD_PAUSE_S = 0.02  # between pieces when many connections share the server (not ``solo``)
PROMPT_CLOSE_S = 0.5  # a close later than this after the last activity is the idle timer's
SETTLE_S = 0.8  # beyond the longest wait a stream may ask for
MAX_WAIT_S = 9.0  # after the last piece, whatever the stream asked for
STREAMING = (b"text/event-stream",)


@dataclass(frozen=True)
class Plan:
    """What the stream holds: its requests' methods (HEAD has no body) and the longest wait."""

    methods: tuple[str, ...]
    wait_s: float  # how long the server may legitimately stay silent (polls' timeouts)
    ends: tuple[int, ...] = ()  # where each request's bytes end in the stream
    prompt: tuple[bool, ...] = ()  # each asks no wait: answered as soon as it is read

    def answered_by(self, sent: int) -> int:
        """How many answers must have come once ``sent`` bytes were read: the requests
        sent whole, up to the first that may wait (answers come in order)."""
        count = 0
        for end, prompt in zip(self.ends, self.prompt, strict=True):
            if end > sent or not prompt:
                break
            count += 1
        return count


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]  # sorted, lower-case names, no ``date``
    body: bytes
    complete: bool = True  # the whole body arrived (False: cut by a close)


@dataclass
class Seen:
    """What one server did with one stream."""

    answers: list[Answer] = field(default_factory=list)
    rest: bytes = b""  # what followed the last answer and does not parse as one
    closed: bool = False  # the server closed promptly (not its idle timer: see the docstring)
    raw: bytes = b""

    def summary(self) -> list[object]:
        """What is compared."""
        return [*self.answers, ("rest", self.rest), ("closed", self.closed)]


@dataclass(frozen=True)
class Peer:
    """A server under test: where it listens, and its process (to see when it is idle)."""

    port: int
    pid: int


async def exchange(peer: Peer, pieces: Sequence[bytes], plan: Plan, solo: bool = True) -> Seen:
    """Send ``pieces`` on one connection, each once the last was dealt with; read until done.

    Dealt with: the answers it completed came (``Plan.answered_by``) and,
    ``solo`` (the only connection to this server), the server's process
    sleeps (``idle``). A fixed pause raced the server on a busy machine: a
    parser error in the next piece overtook an answer still being made.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wire = _Wire(reader)
    reading = asyncio.create_task(wire.read_all())
    sent = 0
    try:
        for piece in pieces:
            if wire.eof_at is not None:
                break
            writer.write(piece)
            sent += len(piece)
            await (idle(peer.pid) if solo else asyncio.sleep(CROWD_PAUSE_S))
            await wire.answered(plan, plan.answered_by(sent))
        wire.touch()
        await wire.settle(plan, peer.pid if solo else None)
    finally:
        reading.cancel()
        writer.close()
    # A redirect names the server's own address: the one difference that is not a difference.
    raw = bytes(wire.data).replace(b"127.0.0.1:%d" % peer.port, b"127.0.0.1:<port>")
    answers, rest = parse(raw, plan.methods)
    closed = wire.eof_at is not None and (
        wire.eof_at - wire.active_at <= PROMPT_CLOSE_S or bool(answers and _streams(answers[-1]))
    )  # (no idle timer may close a stream)
    return Seen(answers, rest, closed, raw)


async def exchange_both(
    peers: Sequence[Peer], pieces: Sequence[bytes], plan: Plan, solo: bool = True
) -> list[Seen]:
    """The same stream to both servers at once."""
    return list(await asyncio.gather(*(exchange(peer, pieces, plan, solo) for peer in peers)))


async def idle(pid: int) -> None:
    """Until the server's process sleeps twice in a row (it did all it could with what it
    was sent): the next piece is a read of its own, however loaded the machine."""
    deadline = time.monotonic() + IDLE_CEILING_S
    asleep = 0
    while asleep < 2 and time.monotonic() < deadline:
        await asyncio.sleep(PAUSE_S)
        asleep = asleep + 1 if _state(pid) in "SI" else 0


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


class _Wire:
    """The reading side of a connection: bytes, when they last came, and the close."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.data = bytearray()
        self.active_at = time.monotonic()  # the last byte sent or received
        self.eof_at: float | None = None

    def touch(self) -> None:
        self.active_at = time.monotonic()

    async def read_all(self) -> None:
        try:
            while chunk := await self.reader.read(65536):
                self.data += chunk
                self.touch()
        except OSError:  # a reset: closed as well (what was read before it stays)
            pass
        self.eof_at = time.monotonic()

    async def answered(self, plan: Plan, count: int) -> None:
        """Until ``count`` answers came (or the close, or ``ANSWER_CEILING_S``)."""
        deadline = time.monotonic() + ANSWER_CEILING_S
        while self.eof_at is None and time.monotonic() < deadline:
            answers, _ = parse(bytes(self.data), plan.methods)
            if len(answers) >= count or (answers and _streams(answers[-1])):
                return
            await asyncio.sleep(PAUSE_S)

    async def settle(self, plan: Plan, pid: int | None) -> None:
        """Until the server closes, or is idle with every request answered (or none that may
        wait), or the longest wait the stream asked for is over."""
        deadline = time.monotonic() + min(plan.wait_s + SETTLE_S, MAX_WAIT_S)
        while self.eof_at is None and time.monotonic() < deadline:
            await (idle(pid) if pid is not None else asyncio.sleep(CROWD_PAUSE_S))
            answers, _ = parse(bytes(self.data), plan.methods)
            if answers and _streams(answers[-1]):
                continue  # watched until the deadline: nothing may close it
            if len(answers) >= len(plan.methods) or plan.wait_s == 0:
                await asyncio.sleep(PAUSE_S)  # (a close written with the answer: read it)
                return


def parse(raw: bytes, methods: Sequence[str]) -> tuple[list[Answer], bytes]:
    """The answers in ``raw``, in order (the n-th for the n-th request), and what is left."""
    answers: list[Answer] = []
    at = 0
    while at < len(raw):
        end = raw.find(b"\r\n\r\n", at)
        if end < 0:
            break
        status, headers = _head(raw[at:end])
        method = methods[len(answers)] if len(answers) < len(methods) else "GET"
        body_at = end + 4
        answer, at = _with_body(raw, body_at, status, headers, method)
        if 100 <= status < 200 and status != 101:
            continue  # 100 Continue: an interim answer
        answers.append(answer)
        if _streams(answer):
            return answers, b""
        if not answer.complete:
            break
    return answers, raw[at:]


def _head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    status_line, *lines = head.split(b"\r\n")
    parts = status_line.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return status, headers


def _with_body(
    raw: bytes, at: int, status: int, headers: list[tuple[bytes, bytes]], method: str
) -> tuple[Answer, int]:
    """The answer whose body starts at ``at``, and where the next one starts."""
    found = dict(headers)
    shown = tuple(
        sorted((n.decode("latin-1"), v.decode("latin-1")) for n, v in headers if n != b"date")
    )
    if (
        method == "HEAD"
        or status in (101, 204, 304)
        or 100 <= status < 200
        or found.get(b"content-type", b"").startswith(STREAMING)
    ):
        return Answer(status, shown, b""), at
    if b"chunked" in found.get(b"transfer-encoding", b""):
        body, end, complete = _chunked(raw, at)
        return Answer(status, shown, body, complete), end
    if b"content-length" in found:
        length = int(found[b"content-length"])
        body = raw[at : at + length]
        return Answer(status, shown, body, len(body) == length), at + len(body)
    return Answer(status, shown, raw[at:], False), len(raw)  # until the close


def _chunked(raw: bytes, at: int) -> tuple[bytes, int, bool]:
    body = b""
    while True:
        line_end = raw.find(b"\r\n", at)
        if line_end < 0:
            return body, len(raw), False
        try:
            size = int(raw[at:line_end].split(b";")[0], 16)
        except ValueError:
            return body, at, False
        start = line_end + 2
        if size == 0:
            end = raw.find(b"\r\n", start)  # no trailers from these servers
            return body, (end + 2 if end >= 0 else len(raw)), end >= 0
        if len(raw) < start + size + 2:
            return body + raw[start:], len(raw), False
        body += raw[start : start + size]
        at = start + size + 2


def _streams(answer: Answer) -> bool:
    """An answer whose body never ends (SSE) or that leaves HTTP (101): read no further."""
    streaming = any(
        n == "content-type" and v.startswith("text/event-stream") for n, v in answer.headers
    )
    return answer.status == 101 or (streaming and answer.status == 200)


# A publish answers the id of the message it made: each server makes its own.
_PUBLISHED_ID = re.compile(rb'"id":"[A-Za-z0-9]{1,32}:[0-9]{1,20}-[0-9]{1,20}"')


def _normalised(answer: Answer) -> Answer:
    """The answer, but what legitimately differs between the two servers.

    - A publish's id (and so its length): each server publishes its own message.
    - The order of ``allow``'s methods: Starlette lists a set, whose order
      follows each process's string hash seed.
    """
    headers = tuple((n, _sorted_list(v) if n == "allow" else v) for n, v in answer.headers)
    body = answer.body
    if answer.status == 201:
        body = _PUBLISHED_ID.sub(b'"id":"<published>"', body)
        headers = tuple((n, v) for n, v in headers if n != "content-length")
    return Answer(answer.status, headers, body, answer.complete)


def _sorted_list(value: str) -> str:
    return ", ".join(sorted(part.strip() for part in value.split(",")))


def difference(pieces: Sequence[bytes], fast: Seen, plain: Seen) -> str | None:
    """None when both servers did the same; else a readable account with the stream."""
    for seen in (fast, plain):
        seen.answers = [_normalised(answer) for answer in seen.answers]
    if fast.summary() == plain.summary():
        return None
    lines = ["the fast path and plain ASGI answered differently", "stream (pieces):"]
    lines += [f"  {shown(repr(piece))}" for piece in pieces]
    lines.append("answers (=: both; -: fast path only; +: plain only):")
    pairs: list[tuple[object, object]] = list(itertools.zip_longest(fast.answers, plain.answers))
    pairs += [(("rest", fast.rest), ("rest", plain.rest))]
    pairs += [(("closed", fast.closed), ("closed", plain.closed))]
    for one, other in pairs:
        if one == other:
            lines.append(f"  = {shown(repr(one))}")
            continue
        lines += [f"  - {shown(repr(one))}"] if one is not None else []
        lines += [f"  + {shown(repr(other))}"] if other is not None else []
    return "\n".join(lines)


def shown(text: str) -> str:
    """``text`` with each run of one character past 40 written as ``<N x 'c'>``."""
    return re.sub(r"(.)\1{39,}", lambda run: f"<{len(run[0])} x {run[1]!r}>", text)
