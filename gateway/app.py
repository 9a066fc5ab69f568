"""The Starlette app: routes, static pages, ``/metrics``, and the lifespan.

Every app-wide object (broker, hub, metrics, guard) is made in the lifespan
and reaches requests through ``request.state.gateway``; nothing is a module
global, so tests can run several apps in one process.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth import Guard
from gateway.brokers import make_broker
from gateway.collector import Collector, collector_running
from gateway.errors import GatewayError
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.publish import publish_endpoint
from gateway.settings import Settings
from gateway.state import Gateway, gateway_of
from gateway.stats import stats_running
from gateway.transports.common import refusal, route_path
from gateway.transports.direct import RAW_SEND
from gateway.transports.longpoll import poll_endpoint
from gateway.transports.poll_multi import poll_multi_endpoint
from gateway.transports.sse import SSE_PATH_PREFIX, sse_app
from gateway.transports.sse_multi import SSE_MULTI_PATH, sse_multi_app
from gateway.transports.websocket import WS_PATH_PREFIX, ws_app
from gateway.transports.ws_multi import WS_MULTI_PATH, ws_multi_app

logger = logging.getLogger("gateway")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


class _AnyText(Convertor[str]):
    """Route-level: take any text as the channel (even a line break), so that
    ``check_channel`` answers 400 with the reason instead of the router's 404."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anytext", _AnyText())


class GatewayApp(Starlette):
    """Starlette, with two things for the fan-out's fast path.

    * The server's own ``send`` is kept in the scope: middleware wraps
      ``send``, and the transports need the server's object behind it to
      write straight to a socket (transports/direct.py).
    * ``/sse/…``, ``/sse``, ``/ws/…`` and ``/ws`` go to their transports directly, past the
      router and the exception middleware: a streaming connection's task
      stays inside every frame on its way for its whole life, and those
      held about 4 KB per idle SSE connection (tracemalloc), a fifth of
      what one may cost. CORS (HTTP only) still wraps SSE.
    """

    def __init__(self, *args: Any, sse: ASGIApp, sse_multi: ASGIApp, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sse = sse
        self._sse_multi = sse_multi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        kind = scope["type"]
        path = route_path(scope) if kind != "lifespan" else ""
        if kind == "http" and path.startswith(SSE_PATH_PREFIX):
            scope["app"] = self
            await self._sse(scope, receive, send)
        elif kind == "http" and path == SSE_MULTI_PATH:
            scope["app"] = self
            await self._sse_multi(scope, receive, send)
        elif kind == "websocket" and path.startswith(WS_PATH_PREFIX):
            scope["app"] = self
            await ws_app(scope, receive, send)
        elif kind == "websocket" and path == WS_MULTI_PATH:
            scope["app"] = self
            await ws_multi_app(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    _configure_logging()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Gateway]]:
        metrics = Metrics()
        hub = Hub(make_broker(settings), settings, metrics)
        guard = Guard(settings)
        if guard.open:
            logger.warning(
                "GATEWAY_SECRET is not set: the gateway is OPEN, anyone may read and publish"
            )
        gateway = Gateway(settings, hub, metrics, guard)
        collector = Collector(lambda: gateway.open_connections, lambda: gateway.closed_connections)
        async with (
            hub.running(),
            stats_running(hub, metrics, settings.stats_interval_s),
            collector_running(collector),
        ):
            yield {"gateway": gateway}

    routes = [
        Route("/", _index),
        Route("/dashboard", _dashboard),
        Route("/healthz", _healthz),
        Route("/readyz", _readyz),
        Route("/metrics", _metrics),
        Route("/poll", poll_multi_endpoint),
        Route("/poll/{channel:anytext}", poll_endpoint),
        Route("/publish/{channel:anytext}", publish_endpoint, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    cors = _cors_options(settings)
    middleware = [Middleware(CORSMiddleware, **cors)] if cors else []
    return GatewayApp(
        sse=CORSMiddleware(sse_app, **cors) if cors else sse_app,
        sse_multi=CORSMiddleware(sse_multi_app, **cors) if cors else sse_multi_app,
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={GatewayError: _gateway_error},
    )


def _configure_logging() -> None:
    """One line per event on stderr, unless the host process set logging up."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )


def _cors_options(settings: Settings) -> dict[str, Any]:
    """CORSMiddleware's options, or none when no origin is allowed beyond our own."""
    if not settings.allowed_origins:
        return {}
    return {
        "allow_origins": list(settings.allowed_origins),
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["Authorization", "Content-Type", "Last-Event-ID"],
    }


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return refusal(request, exc)


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def _readyz(request: Request) -> Response:
    hub = gateway_of(request).hub
    if hub.closing:
        return PlainTextResponse("shutting down", status_code=503)
    if not hub.ready:
        return PlainTextResponse("broker link not delivering", status_code=503)
    return PlainTextResponse("ready")


async def _metrics(request: Request) -> Response:
    body = gateway_of(request).metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


async def _index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html")


async def _dashboard(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "dashboard.html")


# What ``uvicorn gateway.app:app`` serves: settings from the environment.
app = create_app()
