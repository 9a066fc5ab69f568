"""What every transport reads from a request: channel, cursor, ``last=N``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from gateway.errors import BadRequest, GatewayError
from gateway.message import Cursor, check_channel
from gateway.metrics import Metrics
from gateway.state import gateway_of
from gateway.subscription import CloseReason

__all__ = [
    "Resume",
    "check_channel",
    "int_param",
    "refusal",
    "refused",
    "resume_from",
    "route_path",
    "stall_absorbed",
    "unless_stalled",
]

Resume = tuple[Cursor | None, int | None]


def route_path(scope: Scope) -> str:
    """The path as routes see it: without the root path we are mounted under (``--root-path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def refusal(conn: HTTPConnection, exc: GatewayError) -> Response:
    """A refused request as every route answers it: ``{"error": reason}`` with its status."""
    return refused(gateway_of(conn).metrics, exc)


def refused(metrics: Metrics, exc: GatewayError) -> Response:
    """``refusal``, counted in ``metrics``: for an answer written with no request object."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    metrics.refused.labels(str(exc.status)).inc()
    return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=headers)


def resume_from(query: Mapping[str, str], last_event_id: str | None = None) -> Resume:
    """The cursor (``Last-Event-ID``, else ``since``) or the ``last=N`` asked for."""
    if last_event_id:
        return Cursor.parse(last_event_id), None
    since = query.get("since")
    if since is not None and since != "":
        return Cursor.parse(since), None
    last = int_param(query, "last", None, 0, 1_000_000)
    return None, last or None


def int_param(
    query: Mapping[str, str], name: str, default: int | None, low: int, high: int
) -> int | None:
    """An integer query parameter clamped into ``[low, high]``; 400 if not a number."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, got {raw[:40]!r}") from None
    return min(max(value, low), high)


def float_param(
    query: Mapping[str, str], name: str, default: float, low: float, high: float
) -> float:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {raw[:40]!r}") from None
    if value != value:  # NaN
        raise BadRequest(f"{name} must be a number, got {raw[:40]!r}")
    return min(max(value, low), high)


def stall_absorbed(reason: CloseReason | None) -> bool:
    """In an ``except CancelledError``: True (and uncancelled) when the watchdog cut a stall.

    The watchdog cancels a writer blocked for ``hub.STALL_S``: that
    cancellation ends the connection quietly (no last write: it would block
    the same way); any other cancellation must go on (re-raise).
    """
    if reason is not CloseReason.STALLED:
        return False
    asyncio.current_task().uncancel()  # type: ignore[union-attr]
    return True


async def unless_stalled(work: Awaitable[None], reason: Callable[[], CloseReason | None]) -> bool:
    """Await a connection's writing; False when the hub's watchdog cut it as stalled."""
    try:
        await work
    except asyncio.CancelledError:
        if not stall_absorbed(reason()):
            raise
        return False
    return True
