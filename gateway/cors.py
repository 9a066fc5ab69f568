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


class CorsHeaders:
    def __init__(self, options: dict[str, Any]) -> None:
        self._middleware = CORSMiddleware(_unused, **options)
        self._kept: dict[bytes, bytes] = {}

    def for_origin(self, origin: bytes) -> bytes:
        """The header lines CORSMiddleware adds to a GET's answer for this ``Origin``."""
        block = self._kept.get(origin)
        if block is None:
            if len(self._kept) >= KEPT:
                self._kept.clear()
            block = self._kept[origin] = self._ask(origin)
        return block

    def _ask(self, origin: bytes) -> bytes:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        start: Message = {"type": "http.response.start", "status": 200, "headers": []}
        step = self._middleware.send(start, send, Headers(raw=[(b"origin", origin)]))
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
