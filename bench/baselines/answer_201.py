"""The floor under an ASGI publish: read the body, answer 201 with a fixed JSON, nothing else.

Served by publish_bench.py (``--server asgi-floor``) with the gateway's own
Procfile command (its HTTP protocol, loop and flags), only the app
swapped: what a publish costs before the gateway does any work of its own.
"""

from __future__ import annotations

from typing import Any

BODY = b'{"id":"0123456789abcdef:1765100000000-0","channel":"bench-0"}'
HEADERS = [(b"content-length", b"%d" % len(BODY)), (b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 201, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
