"""The gateway's accelerations: each reach into another library, checked before it is used.

Why: every speed-up in this layer depends on members of uvicorn,
websockets, uvloop or asyncio that their authors may change in any
release, and an app that mounts the gateway brings its own, unpinned. A
reach that no longer fits must not serve a silently wrong or slower path:
it stays off, says so in one log line naming it, and the request goes the
plain ASGI way (the same answers, tests/test_fast_path.py and
tests/test_differential.py).

How: each ``Acceleration`` names what it touches and a ``check`` that looks
at the installed code: the members it uses, and a fingerprint of the
classes whose behaviour it copies or relies on (their source, hashed),
against the fingerprints of the versions it was checked with
(``CHECKED``). A newer library whose touched classes are unchanged keeps it
on; one whose classes changed turns it off until a person checks the new
code and adds its fingerprint. ``decide`` runs every check once per
process (the lifespan calls it: GATEWAY_ACCELERATIONS can turn any off),
logs the outcome and feeds ``/metrics`` (``gateway_acceleration``).
``on(name)`` is what the layer asks at each use: a dict lookup.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import importlib
import inspect
import logging
import re
import sys
import tokenize
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.settings import ALL_ACCELERATIONS

logger = logging.getLogger("gateway.accelerations")

HTTP_PROTOCOL = "http-protocol"  # long-polls and publishes answered in httptools callbacks
HTTP_DIRECT = "http-direct"  # SSE chunks and whole poll answers written to the socket; departures
WS_DIRECT = "ws-direct"  # WebSocket frames written to the socket
WS_LEAN = "ws-lean"  # what an idle WebSocket keeps of its handshake, trimmed
WS_FRAMES = "ws-frames"  # a publish frame answered as its bytes arrive
REDIS_REPLIES = "redis-replies"  # a publish pipeline's replies taken from hiredis' reader
ACCEPT_LOOP = "accept-loop"  # every waiting connection accepted at once (uvloop)

_HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"
_FLOW = "uvicorn.protocols.http.flow_control"
_WS_SANSIO = "uvicorn.protocols.websockets.websockets_sansio_impl"

# Fingerprints of the touched classes in the versions each acceleration was
# checked with (``fingerprint``); a new version's are added once its code was read.
_HTTP_CHECKED = {"1f0ad26f71ba02a7": "uvicorn 0.54.0", "6063b568a812f4df": "uvicorn 0.55.0"}
_WS_CHECKED = {"0bbcec98938432f7": "uvicorn 0.54.0", "3a21a05ae5394036": "uvicorn 0.55.0"}
CHECKED: dict[str, dict[str, str]] = {
    HTTP_PROTOCOL: _HTTP_CHECKED,
    HTTP_DIRECT: _HTTP_CHECKED,
    WS_DIRECT: _WS_CHECKED,
    WS_LEAN: _WS_CHECKED,
    WS_FRAMES: {"f0e3b9695e944f07": "uvicorn 0.54.0, websockets 17.4"},
    REDIS_REPLIES: {"b3b8ef62c583089d": "redis-py 8.1.0"},
}


@dataclass
class Acceleration:
    name: str
    touches: str  # what it reaches into, for the log line
    check: Callable[[], str | None]  # why it does not fit the installed code, or None
    on: bool = False
    reason: str = "not checked"


def fingerprint(*qualified: str) -> str:
    """A short hash of the source of each ``module:Class`` (or ``module:Class.member``)."""
    digest = hashlib.sha256()
    for name in qualified:
        digest.update(_source(_resolve(name)).encode())
    return digest.hexdigest()[:16]


def _source(found: Any) -> str:
    """``inspect.getsource(found)``, without ``ast`` for a top-level class.

    Why: CPython 3.11.5-3.11.7 can fail any ``ast.parse`` with "SystemError:
    AST constructor recursion depth mismatch" (fixed in 3.11.8), and
    ``inspect.getsource`` parses a class's whole module to find it. Seen
    failing a server's start in CI. A class is found here by its ``class``
    line (and the decorators above it), and its block read by
    ``inspect.getblock``, which tokenizes: the same text as ``getsource``
    gives, so the fingerprints are unchanged. A function's or method's
    source never went through ``ast`` (its code object has its line).
    """
    if not inspect.isclass(found) or "." in found.__qualname__:
        return inspect.getsource(found)
    lines = inspect.getsourcelines(sys.modules[found.__module__])[0]  # (a module: no ast)
    start = _class_line(lines, found.__name__)
    if start is None:
        raise OSError(f"no class {found.__name__} at the top of {found.__module__}")
    return "".join(inspect.getblock(lines[start:]))


def _class_line(lines: list[str], name: str) -> int | None:
    """The index of the first line of top-level ``class name`` (its first decorator's)."""
    skipped = (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)
    tokens = [t for t in tokenize.generate_tokens(iter(lines).__next__) if t.type not in skipped]
    decorated: int | None = None  # the line of the first decorator above, while in them
    for at, token in enumerate(tokens):
        if token.start[1] != 0 or not (at == 0 or tokens[at - 1].type == tokenize.NEWLINE):
            continue  # (not a top-level statement's first token)
        if token.string == "@":
            decorated = token.start[0] - 1 if decorated is None else decorated
        elif token.string == "class" and at + 1 < len(tokens) and tokens[at + 1].string == name:
            return token.start[0] - 1 if decorated is None else decorated
        else:
            decorated = None
    return None


def _resolve(qualified: str) -> Any:
    module, _, path = qualified.partition(":")
    found: Any = importlib.import_module(module)
    for part in path.split("."):
        found = getattr(found, part)
    return found


def _unchanged(name: str, classes: tuple[str, ...]) -> str | None:
    """None when the classes are as in a version checked; else why not."""
    try:
        seen = fingerprint(*classes)
    except (ImportError, AttributeError, OSError, TypeError) as exc:
        return f"cannot read {', '.join(classes)}: {type(exc).__name__}: {exc}"
    if seen not in CHECKED[name]:
        checked = ", ".join(sorted(set(CHECKED[name].values()))) or "none"
        return f"{', '.join(classes)} differ from the versions checked ({checked}): {seen}"
    return None


def _members(qualified: str, names: Iterable[str]) -> str | None:
    """None when the class has every member named (methods, or attributes set in __init__)."""
    try:
        kind = _resolve(qualified)
    except (ImportError, AttributeError) as exc:
        return f"{qualified} is missing: {exc}"
    source = _source(kind)  # (instance attributes are set in the class's code)
    fields = getattr(kind, "__dataclass_fields__", {})
    missing = [
        n
        for n in names
        if not hasattr(kind, n)
        and n not in fields
        and not re.search(rf"self\.{n}\b\s*[:=]", source)
    ]
    return f"{qualified} lacks {', '.join(missing)}" if missing else None


def _first(*checks: Callable[[], str | None]) -> str | None:
    for check in checks:
        reason = check()
        if reason is not None:
            return reason
    return None


_HTTP_CLASSES = (
    f"{_HTTPTOOLS}:HttpToolsProtocol",
    f"{_HTTPTOOLS}:RequestResponseCycle",
    f"{_FLOW}:FlowControl",
)
_WS_CLASSES = (f"{_WS_SANSIO}:WebSocketsSansIOProtocol",)
# ws-frames stands in front of websockets' parser: its framing and state are copied too.
_WS_FRAMES_CLASSES = (
    *_WS_CLASSES,
    "websockets.protocol:Protocol",
    "websockets.server:ServerProtocol",
    "websockets.streams:StreamReader",
    "websockets.frames:Frame",
)


def _check_http_protocol() -> str | None:
    return _first(
        lambda: _members(
            f"{_HTTPTOOLS}:HttpToolsProtocol",
            (
                "data_received",
                "on_message_begin",
                "on_headers_complete",
                "on_message_complete",
                "on_response_complete",
                "send_400_response",
                "handle_websocket_upgrade",
                "timeout_keep_alive_handler",
                "_unset_keepalive_if_required",
                "_start_asgi_task",
                "pipeline",
                "flow",
                "cycle",
                "parser",
                "server_state",
            ),
        ),
        lambda: _unchanged(HTTP_PROTOCOL, _HTTP_CLASSES),
    )


def _check_http_direct() -> str | None:
    return _first(
        lambda: _members(
            f"{_HTTPTOOLS}:RequestResponseCycle",
            (
                "response_started",
                "response_complete",
                "disconnected",
                "chunked_encoding",
                "keep_alive",
                "message_event",
                "flow",
                "transport",
                "default_headers",
                "on_response",
            ),
        ),
        lambda: _members(f"{_FLOW}:FlowControl", ("_is_writable_event",)),
        _event_waiters,
        lambda: _unchanged(HTTP_DIRECT, _HTTP_CLASSES),
    )


def _event_waiters() -> str | None:
    """None when an ``asyncio.Event`` keeps its waiters in a ``deque`` that a list can replace."""
    waiters = getattr(asyncio.Event(), "_waiters", None)
    if not isinstance(waiters, collections.deque):
        return "asyncio.Event keeps its waiters under another name"
    return None


def _check_ws_direct() -> str | None:
    if not isinstance(getattr(asyncio.Event(), "_value", None), bool):
        return "asyncio.Event keeps its flag under another name"
    return _first(
        lambda: _members(
            _WS_CLASSES[0],
            (
                "writable",
                "transport",
                "close_sent",
                "disconnected",
                "conn",
                "handshake_complete",
                # (a watched sink: uvicorn's writable event swapped for one that tells the
                # sink; a disconnect queued before every close frame left with an open
                # transport, in the class's source, which is fingerprinted)
                "pause_writing",
                "resume_writing",
                "queue",
            ),
        ),
        lambda: _unchanged(WS_DIRECT, _WS_CLASSES),
    )


_WS_KEEPALIVE = (  # what ws_lean.Pings reads and calls in place of uvicorn's ping timers
    "loop",
    "ping_timer",
    "pong_timer",
    "ping_interval",
    "ping_timeout",
    "pending_ping_payload",
    "ping_sent_at",
    "last_ping_rtt",
    "stop_keepalive",
    "keepalive_timeout",
)


def _check_ws_lean() -> str | None:
    event, queue = asyncio.Event(), asyncio.Queue[object]()
    if not isinstance(getattr(event, "_waiters", None), Iterable) or not hasattr(queue, "_getters"):
        return "asyncio.Event or asyncio.Queue keep their waiters under other names"
    if not hasattr(queue, "_queue"):
        return "asyncio.Queue keeps its items under another name"
    return _first(
        lambda: _members(_WS_CLASSES[0], ("request", "response", "queue", "writable")),
        _instance_dict,
        # (ws_lean.take: uvicorn's ``receive`` and Starlette's ``WebSocket.receive``)
        lambda: _members(_WS_CLASSES[0], ("receive", "read_paused", "transport")),
        lambda: _members("starlette.websockets:WebSocket", ("client_state", "_receive")),
        lambda: _members(_WS_CLASSES[0], _WS_KEEPALIVE),
        lambda: _members("websockets.protocol:Protocol", ("send_ping", "data_to_send")),
        lambda: _members("websockets.http11:Request", ("headers",)),
        lambda: _unchanged(WS_LEAN, _WS_CLASSES),
    )


def _instance_dict() -> str | None:
    """None when uvicorn's WebSocket protocol keeps its attributes in a dict (ws-lean copies it)."""
    if _resolve(_WS_CLASSES[0]).__dictoffset__ == 0:
        return "uvicorn's WebSocket protocol keeps no instance dict"
    return None


def _check_ws_frames() -> str | None:
    return _first(
        lambda: _members(_WS_CLASSES[0], ("conn", "queue", "close_sent", "handshake_complete")),
        lambda: _members(
            "websockets.protocol:Protocol",
            (
                "receive_data",
                "parse",
                "reader",
                "parser",
                "state",
                "current_size",
                "events",
                "parser_exc",
                "extensions",
            ),
        ),
        lambda: _members("websockets.streams:StreamReader", ("at_eof", "buffer")),
        lambda: _unchanged(WS_FRAMES, _WS_FRAMES_CLASSES),
    )


_REDIS_REPLIES_CLASSES = (
    "redis._parsers.hiredis:_AsyncHiredisParser",
    "redis.asyncio.connection:AbstractConnection.read_response",
    "redis.asyncio.connection:AbstractConnection._host_error",
)


def _check_redis_replies() -> str | None:
    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:
        return "redis-py does not say whether hiredis is installed"
    if not HIREDIS_AVAILABLE:
        return "hiredis is not installed (redis-py reads replies in Python)"
    return _first(
        lambda: _members(_REDIS_REPLIES_CLASSES[0], ("_reader", "_connected", "read_from_socket")),
        lambda: (
            None
            if hasattr(importlib.import_module("redis._parsers.hiredis"), "NOT_ENOUGH_DATA")
            else "redis-py's hiredis parser has no NOT_ENOUGH_DATA"
        ),
        lambda: _members("redis.asyncio.connection:AbstractConnection", ("_parser", "protocol")),
        lambda: _unchanged(REDIS_REPLIES, _REDIS_REPLIES_CLASSES),
    )


def _check_accept_loop() -> str | None:
    try:
        import uvloop
    except ImportError:
        return "uvloop is not installed"
    missing = [
        name
        for name in ("create_server", "connect_accepted_socket", "add_reader", "remove_reader")
        if not hasattr(uvloop.Loop, name)
    ]
    return f"uvloop.Loop lacks {', '.join(missing)}" if missing else None


REGISTRY: dict[str, Acceleration] = {
    a.name: a
    for a in (
        Acceleration(HTTP_PROTOCOL, "uvicorn's HttpToolsProtocol", _check_http_protocol),
        Acceleration(
            HTTP_DIRECT, "uvicorn's RequestResponseCycle and FlowControl", _check_http_direct
        ),
        Acceleration(
            WS_DIRECT, "uvicorn's WebSocketsSansIOProtocol, its writable event", _check_ws_direct
        ),
        Acceleration(
            WS_LEAN, "uvicorn's WebSocketsSansIOProtocol, asyncio.Event/Queue", _check_ws_lean
        ),
        Acceleration(ACCEPT_LOOP, "uvloop.Loop", _check_accept_loop),
        Acceleration(WS_FRAMES, "websockets' Protocol.receive_data, uvicorn", _check_ws_frames),
        Acceleration(REDIS_REPLIES, "redis-py's hiredis parser", _check_redis_replies),
    )
}
assert tuple(REGISTRY) == ALL_ACCELERATIONS, "settings.py names every acceleration"
_decided: dict[str, bool] = {}


WS_LINE_MAX = 65536  # what the Procfile and python -m gateway set WEBSOCKETS_MAX_LINE_LENGTH to


def websocket_line_limit() -> str | None:
    """Why a long WebSocket handshake line would get no answer at all here, or None.

    uvicorn's websockets-sansio protocol before 0.55 answers nothing (the
    client's handshake times out) when websockets refuses a request line or
    header past ``WEBSOCKETS_MAX_LINE_LENGTH`` (8 KiB by default); set higher,
    such requests reach the gateway, which refuses them with a reason.
    """
    try:
        import websockets.http11
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        return None
    limit = websockets.http11.MAX_LINE_LENGTH
    if limit >= WS_LINE_MAX or hasattr(WebSocketsSansIOProtocol, "handle_handshake_exception"):
        return None
    return (
        f"WEBSOCKETS_MAX_LINE_LENGTH is {limit}: a WebSocket handshake with a longer URL or"
        f" header gets no answer from this uvicorn; set WEBSOCKETS_MAX_LINE_LENGTH={WS_LINE_MAX}"
        " in the environment (the Procfile and python -m gateway do)"
    )


def decide(allowed: Iterable[str] | None = None, *, log: bool = True) -> dict[str, bool]:
    """Check every acceleration (once per process) and turn on those allowed that fit.

    ``allowed``: the names GATEWAY_ACCELERATIONS lets on (None: all). Called
    again (another app in the process, a test), it checks again.
    """
    names = set(REGISTRY) if allowed is None else set(allowed)
    for acceleration in REGISTRY.values():
        if acceleration.name not in names:
            acceleration.on, acceleration.reason = False, "turned off by GATEWAY_ACCELERATIONS"
        else:
            reason = acceleration.check()
            acceleration.on, acceleration.reason = reason is None, reason or "fits"
        _decided[acceleration.name] = acceleration.on
        if log:
            _log(acceleration)
    note = websocket_line_limit()
    if note is not None and log:
        logger.warning("%s", note)
    return dict(_decided)


def _log(acceleration: Acceleration) -> None:
    if acceleration.on:
        logger.info("acceleration %s: on (%s)", acceleration.name, acceleration.touches)
    else:
        logger.warning(
            "acceleration %s: OFF, the plain ASGI path serves instead (same answers, slower): %s",
            acceleration.name,
            acceleration.reason,
        )


def on(name: str) -> bool:
    """Whether ``name`` may be used: decided at start, or now (quietly) if nothing decided yet."""
    if not _decided:
        decide(log=False)
    return _decided.get(name, False)
