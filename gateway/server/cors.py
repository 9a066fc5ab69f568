"""CORS headers for answers written outside ASGI: a poll served in the protocol.

Starlette's ``CORSMiddleware`` adds its headers to an ASGI response. A poll
served inside the gateway's HTTP protocol (protocol.py) is written with no
ASGI call, and a browser polling from another origin sends ``Origin`` with
every poll: those polls went through ASGI, at several times the CPU. Here
the same middleware, with the same options, is asked once per ``Origin``
value what it would add (``KEPT`` values at most); those bytes then go on
every answer to that origin. No CORS logic of our own: a Starlette that
changed its answer changes ours too (tests/test_protocol.py compares both
paths).
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Message, Receive, Scope, Send

KEPT = 256  # distinct Origin values remembered (a client picks its Origin: bounded)
ORIGIN_KEPT_BYTES = 1024  # a longer Origin is asked each time (the record stays small)


class CorsHeaders:
    def __init__(self, options: dict[str, Any]) -> None:
        self._middleware = CORSMiddleware(_unused, **options)
        self._kept: dict[tuple[bytes | None, bool], bytes] = {}

    def for_origin(self, origin: bytes | None, cookie: bool = False) -> bytes:
        """The header lines CORSMiddleware adds to a GET's answer for this ``Origin``.

        None: the request has no ``Origin`` (Starlette 1.x still adds ``vary:
        Origin`` then). ``cookie``: it carries a ``Cookie`` header, which
        changed the answer in some Starlette versions when every origin is
        allowed: asked with it, whatever the version does.
        """
        key = (origin, cookie)
        block = self._kept.get(key)
        if block is None:
            block = self._ask(origin, cookie)
            if origin is None or len(origin) <= ORIGIN_KEPT_BYTES:
                if len(self._kept) >= KEPT:
                    self._kept.clear()
                self._kept[key] = block
        return block

    def _ask(self, origin: bytes | None, cookie: bool) -> bytes:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        start: Message = {"type": "http.response.start", "status": 200, "headers": []}
        raw = [(b"origin", origin)] if origin is not None else []
        if cookie:
            raw.append((b"cookie", b""))
        step = self._middleware.send(start, send, Headers(raw=raw))
        try:
            step.send(None)  # nothing in it waits: it runs to its end at once
        except StopIteration:
            pass
        else:
            step.close()
            raise RuntimeError("CORSMiddleware.send waited: it cannot be asked outside ASGI")
        headers: list[tuple[bytes, bytes]] = sent[0]["headers"]
        return b"".join(name + b": " + value + b"\r\n" for name, value in headers)


async def _unused(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("only CORSMiddleware.send is asked")
