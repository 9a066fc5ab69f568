"""Byte streams for the differential test (tests/test_differential.py), drawn by hypothesis.

A stream is one to four requests on one connection, each built from parts
a client controls: method, target (polls of one or several channels with
every query variation, SSE, publish, WebSocket, unknown paths, lines up to
70 KiB), HTTP version, headers in any order with duplicates (credentials,
``Origin``, upgrade headers, ``Connection``), the body's framing
(``Content-Length`` and ``Transfer-Encoding``, valid, invalid, both) and
garbage after the headers. The bytes are then cut into pieces. Draws
favour what the fast path serves (a GET poll of a joined channel, HTTP/1.1,
a cursor it holds in memory) so that most streams reach it.

The ``World`` is what the servers were given: channels, real cursors
(published before the test, valid on both servers), tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import strategies as st

from tests.http_diff import Plan, shown

# GATEWAY_POLL_TIMEOUT of both servers: no poll waits longer. Past the keep-alive timeout
# (2 s) and the sweep's second: a connection cut while a poll waits shows.
WAIT_CEILING_S = 3.5
# A generated SSE stream is watched this long (every answer's head is compared, and a close
# within it); ``known_streams`` watches one for the whole ceiling, past the keep-alive sweep.
SSE_WATCH_S = 1.0


@dataclass(frozen=True)
class World:
    """What both servers know: channel names, cursors of real messages, tokens, origins."""

    joined: tuple[str, ...]  # held open by an SSE stream: the hub serves them from memory
    cold: tuple[str, ...]  # valid names, never joined
    sink: str  # the only channel the good token may publish to
    ids: dict[str, tuple[str, ...]]  # each joined channel's, oldest first (two before the join)
    tokens: dict[str, str]  # kind: token
    origin: str  # the allowed one


@dataclass(frozen=True, repr=False)
class Request:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    tail: bytes = b""  # the body as framed, or garbage
    wait_s: float = 0.0  # the longest this request may wait before its answer

    def __repr__(self) -> str:
        """The bytes it sends, a long run of one character shortened (hypothesis prints it)."""
        return f"Request({shown(repr(self.wire()))}, wait_s={self.wait_s})"

    def wire(self) -> bytes:
        head = f"{self.method} {self.target} {self.version}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        return head.encode("latin-1") + b"\r\n" + self.tail


@dataclass(frozen=True)
class Stream:
    requests: tuple[Request, ...]
    cuts: tuple[int, ...] = field(default=())  # offsets into the joined bytes

    def pieces(self) -> list[bytes]:
        data = b"".join(request.wire() for request in self.requests)
        edges = [0, *sorted(set(self.cuts) & set(range(1, len(data)))), len(data)]
        return [data[a:b] for a, b in itertools.pairwise(edges)]

    def plan(self) -> Plan:
        methods = tuple(request.method for request in self.requests)
        ends = tuple(itertools.accumulate(len(request.wire()) for request in self.requests))
        prompt = tuple(request.wait_s == 0 for request in self.requests)
        return Plan(methods, sum(request.wait_s for request in self.requests), ends, prompt)


# -- targets -------------------------------------------------------------------

# Mostly none or short: a poll that waits the whole ceiling makes its stream that long.
TIMEOUTS = ["0"] * 12 + ["0.2", "0.5", "1"] * 3 + ["-1", "abc", "3.5", "9", ""]
LIMITS = ["1", "2", "100", "0", "5000", "x"]
PADS = [100, 7000, 9000, 66000, 70000]


def cursor_values(world: World, channel: str) -> st.SearchStrategy[str]:
    """Mostly ids of ``channel`` (an id is of one channel's epoch), the newest (in the hub's
    memory) the most; then another channel's, one from the future, garbage."""
    ids = world.ids.get(channel) or world.ids[world.joined[0]]
    others = [ids[-1] for ids in world.ids.values()]
    odd = ["0", "garbage", "abc:1-1", ids[-1].split(":")[0] + ":99999999999999-0"]
    return st.sampled_from([*ids, *ids[2:] * 4, *others, *odd])


def token_values(world: World) -> st.SearchStrategy[str]:
    """Mostly the good token (it may read every channel), then each kind of bad one."""
    kinds = ["good"] * 4 + sorted(kind for kind in world.tokens if kind != "good")
    return st.sampled_from(kinds).map(world.tokens.__getitem__)


@st.composite
def poll_query(draw: st.DrawFn, world: World, channel: str) -> tuple[str, float]:
    """A query of ``since``/``limit``/``timeout``/``last``/token parts, and the wait it asks."""
    parts = draw(
        st.lists(
            st.one_of(
                st.sampled_from(LIMITS).map(lambda n: f"limit={n}"),
                st.sampled_from(TIMEOUTS).map(lambda t: f"timeout={t}"),
                cursor_values(world, channel).map(lambda c: f"since={c}"),
                st.sampled_from(["1", "3", "x"]).map(lambda n: f"last={n}"),
                token_values(world).map(lambda t: f"token={t}"),
                token_values(world).map(lambda t: f"tok%65n={t}"),
                st.sampled_from(PADS).map(lambda n: "pad=" + "x" * n),
            ),
            max_size=3,
        )
    )
    if draw(st.integers(0, 4)):  # mostly a cursor: what a poller sends, and the fast path serves
        since = draw(cursor_values(world, channel))
        parts.insert(draw(st.integers(0, len(parts))), f"since={since}")
    timeout = draw(st.sampled_from([*TIMEOUTS, None]))  # (None: the server's, the longest)
    if timeout is not None:
        parts.insert(draw(st.integers(0, len(parts))), f"timeout={timeout}")
    timeouts = [part[8:] for part in parts if part.startswith("timeout=")]
    return "&".join(parts), _wait(timeouts[-1] if timeouts else None)


def _wait(timeout: str | None) -> float:
    """The longest a poll with this ``timeout`` waits (none, or empty: the server's)."""
    if not timeout:
        return WAIT_CEILING_S
    try:
        return min(max(float(timeout), 0.0), WAIT_CEILING_S)
    except ValueError:
        return 0.0


@st.composite
def poll_target(draw: st.DrawFn, world: World) -> tuple[str, float]:
    """``/poll/{channel}?…``, mostly of a joined channel."""
    names = [*world.joined] * 6 + [*world.cold, "bad name", "a%2Fb", "", "x" * 200]
    channel = draw(st.sampled_from(names))
    query, wait = draw(poll_query(world, channel))
    target = f"/poll/{channel}" + (f"?{query}" if query or draw(st.booleans()) else "")
    return target, wait


@st.composite
def multi_target(draw: st.DrawFn, world: World) -> tuple[str, float]:
    """``/poll?channel=a@id&channel=b…``."""
    names = draw(st.lists(st.sampled_from([*world.joined, *world.cold]), min_size=0, max_size=3))
    specs = []
    for name in names:
        cursor = draw(st.one_of(st.none(), cursor_values(world, name)))
        specs.append(f"channel={name}" + (f"@{cursor}" if cursor else ""))
    query, wait = draw(poll_query(world, names[0] if names else world.joined[0]))
    return "/poll?" + "&".join([*specs, query] if query else specs), wait


def other_targets(world: World) -> st.SearchStrategy[str]:
    joined = world.joined[0]
    return st.sampled_from(
        [
            f"/sse/{joined}?timeout=0",
            f"/sse?channel={joined}",
            f"/publish/{world.sink}",
            f"/publish/{joined}",
            f"/ws/{joined}",
            "/",
            "/nope",
            "/healthz",
            "/poll/",
            "/pollx",
            f"//poll/{joined}",
            f"/poll/{joined}#frag",
            f"http://t/poll/{joined}",
            "*",
        ]
    )


def targets(world: World) -> st.SearchStrategy[tuple[str, float]]:
    """Mostly polls of one channel; an SSE stream is watched for ``SSE_WATCH_S``."""
    others = other_targets(world).map(
        lambda target: (target, SSE_WATCH_S if target.startswith("/sse") else 0.0)
    )
    return st.one_of(*[poll_target(world)] * 6, *[multi_target(world)] * 2, others)


# -- headers and bodies --------------------------------------------------------

UPGRADE = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


def header_choices(world: World) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Zero or more optional headers (duplicates allowed): credentials, Origin, Connection…"""
    bearer = token_values(world).map(lambda t: [("Authorization", f"Bearer {t}")])
    origin = st.sampled_from([world.origin] * 3 + ["https://other.example", "null"])
    one = st.one_of(
        bearer,
        bearer,
        origin.map(lambda o: [("Origin", o)]),
        origin.map(lambda o: [("Origin", o)]),
        st.just([("Authorization", "Basic Zm9vOmJhcg==")]),
        st.just(UPGRADE),
        st.sampled_from(["close", "keep-alive", "Upgrade"]).map(lambda c: [("Connection", c)]),
        cursor_values(world, world.joined[0]).map(lambda c: [("Last-Event-ID", c)]),
        st.just([("Accept", "*/*")]),
        st.just([("Expect", "100-continue")]),
        st.sampled_from([10, 9000]).map(lambda n: [("X-Filler", "f" * n)]),
    )
    return st.lists(one, max_size=4).map(lambda lists: [h for group in lists for h in group])


FRAMINGS = ["none"] * 20 + [
    "length",
    "length-short",
    "length-long",
    "length-bad",
    "chunked",
    "chunk-bad",
    "te-bad",
    "both",
    "garbage",
]


def framed(kind: str, body: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """The headers and bytes after the empty line for a body framed as ``kind``."""
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    return {
        "none": ([], b""),
        "length": ([("Content-Length", str(len(body)))], body),
        "length-short": ([("Content-Length", str(len(body) + 3))], body),
        "length-long": ([("Content-Length", str(max(len(body) - 2, 0)))], body),
        "length-bad": ([("Content-Length", "1x")], body),
        "chunked": ([("Transfer-Encoding", "chunked")], chunked),
        "chunk-bad": ([("Transfer-Encoding", "chunked")], b"zz\r\n" + body),
        "te-bad": ([("Transfer-Encoding", "gzip")], body),
        "both": ([("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked")], chunked),
        "garbage": ([], b"GARBAGE\x00\r\n\r\n"),
    }[kind]


@st.composite
def requests(draw: st.DrawFn, world: World, previous: Request | None = None) -> Request:
    """One request; sometimes one that repeats the end of ``previous``'s headers."""
    method = draw(st.sampled_from(["GET"] * 20 + ["HEAD", "POST", "OPTIONS", "PUT", "get", "BREW"]))
    target, wait = draw(targets(world))
    version = draw(st.sampled_from(["HTTP/1.1"] * 12 + ["HTTP/1.0"]))
    if previous is not None and previous.headers and draw(st.integers(0, 3)) == 0:
        headers = list(previous.headers[draw(st.integers(0, len(previous.headers) - 1)) :])
    else:
        headers = draw(header_choices(world))
        if draw(st.integers(0, 9)):
            headers.insert(draw(st.integers(0, len(headers))), ("Host", "t"))
        headers = draw(st.permutations(headers))
    framing, tail = framed(draw(st.sampled_from(FRAMINGS)), draw(st.binary(max_size=12)))
    headers = [*headers, *framing]
    if draw(st.integers(0, 4)) == 0:
        headers = [(name.lower(), value) for name, value in headers]
    return Request(method, target, version, tuple(headers), tail, wait if method != "POST" else 0)


# -- publishes ---------------------------------------------------------------------

# GATEWAY_MAX_MESSAGE_BYTES of both servers (tests/diff_servers.py): bodies around it.
MAX_MESSAGE_BYTES = 16100  # (the memory test publishes 16,004 bytes)
BODIES = [b"hello", b"", "h\u00e9llo \u2603".encode(), b"\xff\xfe", b"x" * MAX_MESSAGE_BYTES]
BODIES += [b"x" * (MAX_MESSAGE_BYTES + 1), b"a\r\n\r\nGET / HTTP/1.1\r\n\r\n"]
EVENTS = ["", "event=note", "event=", "event=bad%20name", "event=" + "e" * 80, "event=a&event=b"]


@st.composite
def publish_requests(draw: st.DrawFn, world: World, previous: Request | None = None) -> Request:
    """A publish, mostly one the fast path takes (HTTP/1.1, a length, a token that may);
    after a publish, often its very headers again with a body of the same length (what
    a keep-alive publisher sends, and the fast path takes unparsed), under another line."""
    if previous is not None and previous.target.startswith("/publish/") and draw(st.booleans()):
        line = draw(
            st.sampled_from(
                [("POST", f"/publish/{world.sink}", "HTTP/1.1")] * 4
                + [
                    ("POST", f"/publish/{world.sink}?event=again", "HTTP/1.1"),
                    ("POST", f"/publish/{world.joined[0]}", "HTTP/1.1"),
                    ("POST", "/publish/a%2Fb", "HTTP/1.1"),
                    ("POST", f"/publish/{world.sink}", "HTTP/1.0"),
                    ("post", f"/publish/{world.sink}", "HTTP/1.1"),
                    ("PUT", f"/publish/{world.sink}", "HTTP/1.1"),
                    ("POST", f"/publish/{world.sink} x", "HTTP/1.1"),
                ]
            )
        )
        size = len(previous.tail)  # (a long body as one byte repeated: its repr stays short)
        tail = draw(st.binary(min_size=size, max_size=size) if size <= 64 else st.just(b"y" * size))
        return Request(*line, previous.headers, tail)
    channel = draw(st.sampled_from([world.sink] * 6 + [world.joined[0], "bad name", "a%2Fb"]))
    query = "&".join(
        draw(
            st.lists(
                st.one_of(
                    st.sampled_from(EVENTS),
                    token_values(world).map(lambda t: f"token={t}"),
                    st.just("pad=" + "p" * 9000),
                ),
                max_size=2,
            )
        )
    )
    target = f"/publish/{channel}" + (f"?{query}" if query else "")
    headers = draw(header_choices(world))
    if draw(st.integers(0, 3)):
        headers.append(("Authorization", f"Bearer {draw(token_values(world))}"))
    if draw(st.integers(0, 9)):
        headers.insert(0, ("Host", "t"))
    body = draw(st.sampled_from(BODIES * 3)) if draw(st.integers(0, 3)) else draw(st.binary())
    framing = draw(st.sampled_from(["length"] * 12 + [f for f in FRAMINGS if f != "none"]))
    more, tail = framed(framing, body)
    headers = draw(st.permutations([*headers, *more]))
    method = draw(st.sampled_from(["POST"] * 12 + ["GET", "PUT"]))
    version = draw(st.sampled_from(["HTTP/1.1"] * 8 + ["HTTP/1.0"]))
    return Request(method, target, version, tuple(headers), tail)


@st.composite
def streams(draw: st.DrawFn, world: World) -> Stream:
    """One to four requests, each sent apart or pipelined, the bytes cut at drawn points."""
    made: list[Request] = []
    for _ in range(draw(st.integers(1, 4))):
        after_publish = bool(made) and made[-1].target.startswith("/publish/")
        if draw(st.integers(0, 3)) == 0 or (after_publish and draw(st.booleans())):
            made.append(draw(publish_requests(world, made[-1] if made else None)))
        else:
            made.append(draw(requests(world, made[-1] if made else None)))
    cuts: list[int] = []
    offset = 0
    for request in made:
        size = len(request.wire())
        if draw(st.integers(0, 3)):  # apart from the one before (else pipelined)
            cuts.append(offset)
        cuts += [offset + at for at in draw(st.lists(st.integers(1, max(size - 1, 1)), max_size=3))]
        offset += size
    return Stream(tuple(made), tuple(cuts))


def every_cut(requests: Sequence[Request], at: int) -> list[Stream]:
    """``requests`` apart, request ``at`` cut at each of its bytes in turn: one stream per cut."""
    sizes = [len(request.wire()) for request in requests]
    start = sum(sizes[:at])
    apart = [sum(sizes[:i]) for i in range(1, len(sizes))]
    return [Stream(tuple(requests), tuple([*apart, start + cut])) for cut in range(1, sizes[at])]


def known_streams(world: World) -> dict[str, Stream]:
    """Issue 21's defects as streams, each answered differently before its fix: run whatever
    the seed (the every-cut test has the split header block's)."""
    ids, private = world.ids[world.joined[0]], world.ids["priv:c"]
    host = (("Host", "t"),)
    served = Request("GET", f"/poll/{world.joined[0]}?since={ids[3]}", "HTTP/1.1", host)
    waiting = f"/poll/{world.joined[0]}?since={ids[-1]}&timeout={WAIT_CEILING_S}"
    again = served.target
    token = world.tokens["good"]
    return {
        "an answer from memory (vary)": Stream((served,)),
        "a waiting poll behind it, one read": Stream(
            (served, Request("GET", waiting, "HTTP/1.1", host, wait_s=WAIT_CEILING_S))
        ),
        "an SSE stream behind it, one read": Stream(
            (
                served,
                Request("GET", f"/sse/{world.joined[0]}", "HTTP/1.1", host, wait_s=WAIT_CEILING_S),
            )
        ),
        "upgrade headers": Stream((Request("GET", again, "HTTP/1.1", (*host, *UPGRADE)),)),
        "upgrade headers after a poll": Stream(
            (served, Request("GET", again, "HTTP/1.1", (*host, *UPGRADE))), (len(served.wire()),)
        ),
        "a 70 KiB request line": Stream(
            (Request("GET", f"{again}&pad={'x' * 70000}", "HTTP/1.1", host),)
        ),
        "garbage after an empty body": Stream(
            (Request("GET", again, "HTTP/1.1", (*host, ("Content-Length", "0")), b"\0"),)
        ),
        "a bad chunk": Stream(
            (
                Request(
                    "GET", again, "HTTP/1.1", (*host, ("Transfer-Encoding", "chunked")), b"zz\r\n"
                ),
            )
        ),
        **publish_repeats(world),
        "tok%65n in the query": Stream(
            (Request("GET", f"/poll/priv:c?since={private[3]}&tok%65n={token}", "HTTP/1.1", host),)
        ),
    }


def publish_repeats(world: World) -> dict[str, Stream]:
    """A publish, then its very headers again, each its own read: with a body of the same
    length (taken unparsed), of another length, and under lines the fast path must not take."""
    headers = (("Host", "t"), ("Authorization", f"Bearer {world.tokens['good']}"))
    body = b"first"
    first = Request(
        "POST", f"/publish/{world.sink}", "HTTP/1.1", (*headers, *framed("length", body)[0]), body
    )
    seconds = {
        "a publish repeated": Request("POST", first.target, "HTTP/1.1", first.headers, b"again"),
        "a publish repeated, a longer body": Request(
            "POST", first.target, "HTTP/1.1", first.headers, b"again!"
        ),
        "a publish repeated, HTTP/1.0": Request(
            "POST", first.target, "HTTP/1.0", first.headers, b"again"
        ),
        "a publish repeated, a quoted name": Request(
            "POST", "/publish/a%2Fb", "HTTP/1.1", first.headers, b"again"
        ),
        "a publish repeated to another's channel": Request(
            "POST", f"/publish/{world.joined[0]}", "HTTP/1.1", first.headers, b"again"
        ),
    }
    return {name: Stream((first, second), (len(first.wire()),)) for name, second in seconds.items()}
