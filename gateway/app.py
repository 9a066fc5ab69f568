"""The Starlette app: routes, static pages, ``/metrics``, and the lifespan.

Every app-wide object (broker, hub, metrics, guard) is made when the app
starts (its lifespan, or a parent app's: see ``GatewayApp``) and reaches
requests through the scope (``gateway_of``); nothing is a module global, so
tests can run several apps in one process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.access import Access
from gateway.admin import admin_disconnect_endpoint
from gateway.auth import Guard
from gateway.brokers import make_broker
from gateway.collector import Collector, collector_running
from gateway.errors import GatewayError
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.presence import Presence
from gateway.presence_route import make_presence_store, presence_endpoint
from gateway.publish import PUBLISH_PATH_PREFIX, LocalPublisher, publish_app
from gateway.server import accelerations
from gateway.server.cors import CorsHeaders
from gateway.server.direct import RAW_SEND
from gateway.server.redis_replies import replies_reader
from gateway.server.shutdown import signals_watched, wait_for_exit_signal
from gateway.settings import Settings
from gateway.stall_watch import stall_watched
from gateway.state import NOT_STARTED, Gateway, gateway_of
from gateway.stats import stats_running
from gateway.transports.common import refusal, route_path
from gateway.transports.longpoll import POLL_PATH_PREFIX, poll_app
from gateway.transports.poll_multi import POLL_MULTI_PATH, poll_multi_app, poll_multi_endpoint
from gateway.transports.sse import SSE_PATH_PREFIX, sse_app
from gateway.transports.sse_multi import SSE_MULTI_PATH, sse_multi_app
from gateway.transports.websocket import MAX_CLOSE_REASON_BYTES, WS_PATH_PREFIX, ws_app
from gateway.transports.ws_multi import WS_MULTI_PATH, ws_multi_app
from gateway.workers import sole_worker

logger = logging.getLogger("gateway")


def _static_dir() -> Path:
    """The pages and browser client: inside the package once installed (the wheel
    carries them there, pyproject.toml), else the checkout's top-level ``static/``."""
    package = Path(__file__).resolve().parent
    installed = package / "static"
    return installed if installed.is_dir() else package.parent / "static"


STATIC_DIR = _static_dir()


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
    """Starlette, with the gateway's own lifetime and two things for the fan-out's fast path.

    * The running ``Gateway`` lives on the app (``running()`` sets it) and
      is found through the scope's ``app`` (which this class sets on every
      path, and Starlette does too), not in the lifespan's state: one more
      scope key cost ~0.8 KB per idle SSE connection (the dict grew a size),
      and mounted in a parent app (``app.mount("/realtime",
      create_app())``) the parent's lifespan runs instead of ours, so the
      parent starts the gateway with ``lifespan=realtime.lifespan`` or
      ``async with realtime.running():`` inside its own. A request that
      reaches a gateway never started is answered 503 with that reason.
    * The server's own ``send`` is kept in the scope: middleware wraps
      ``send``, and the transports need the server's object behind it to
      write straight to a socket (server/direct.py). Under a parent app
      its middleware has wrapped ``send`` already, so streams write through
      ASGI there: correct, slower, and safe for a parent's middleware.
    * ``/sse/…``, ``/sse``, ``/ws/…``, ``/ws``, ``/poll/…``, ``/poll`` and
      ``/publish/…`` go to
      their transports directly, past the router and the exception
      middleware: a streaming connection's task stays inside every frame on
      its way for its whole life, and those held about 4 KB per idle SSE
      connection (tracemalloc), a fifth of what one may cost; a poll, one
      request per message, spent about 40 % of its CPU in them (py-spy,
      bench/README.md); so did a publish's (publish.py). CORS (HTTP only)
      still wraps SSE, poll and publish.
    """

    def __init__(
        self,
        *,
        direct: Direct,
        start: Callable[[], Started],
        cors: dict[str, Any] | None = None,
        header_timeout_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        self.gateway: Gateway | None = None
        # A connection's wait for a whole request head (protocol.py, keepalive.py).
        self.header_timeout_s = header_timeout_s
        # Publishes from the app that mounts this one, without a URL (publish.py).
        self.publisher = LocalPublisher(lambda: self.gateway)
        self._sse = direct.sse
        self._sse_multi = direct.sse_multi
        self._poll = direct.poll
        self._poll_multi = direct.poll_multi
        self._publish = direct.publish
        # What CORS adds to an answer written outside ASGI (protocol.py), when configured.
        self.cors = CorsHeaders(cors) if cors else None
        self._start = start
        self._refused_at = -NOT_STARTED_LOG_EVERY_S
        super().__init__(lifespan=self.lifespan, **kwargs)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """Start the gateway for the block's duration: a parent app's lifespan runs this."""
        if self.gateway is not None:
            raise RuntimeError("this gateway is already running")
        async with self._start() as gateway:
            self.gateway = gateway
            try:
                yield gateway
            finally:
                self.gateway = None

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """A lifespan for any Starlette or FastAPI app: ``lifespan=realtime.lifespan``."""
        async with self.running():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await super().__call__(scope, receive, send)
            return
        if self.gateway is None:
            await self._not_started(scope, receive, send)
            return
        scope[RAW_SEND] = send
        path = route_path(scope)
        if kind == "http" and path.startswith(SSE_PATH_PREFIX):
            scope["app"] = self
            await self._sse(scope, receive, send)
        elif kind == "http" and path.startswith(POLL_PATH_PREFIX) and path != POLL_PATH_PREFIX:
            scope["app"] = self
            await self._poll(scope, receive, send)
        elif kind == "http" and path == POLL_MULTI_PATH:
            scope["app"] = self
            await self._poll_multi(scope, receive, send)
        elif (
            kind == "http" and path.startswith(PUBLISH_PATH_PREFIX) and path != PUBLISH_PATH_PREFIX
        ):
            scope["app"] = self
            await self._publish(scope, receive, send)
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

    async def _not_started(self, scope: Scope, receive: Receive, send: Send) -> None:
        """503 (WebSocket: close 1011) with the reason, and a log line now and then."""
        now = time.monotonic()
        if now - self._refused_at >= NOT_STARTED_LOG_EVERY_S:
            self._refused_at = now
            logger.error("refusing %s %s: %s", scope["type"], scope.get("path"), NOT_STARTED)
        if scope["type"] == "websocket":
            websocket = WebSocket(scope, receive, send)
            await websocket.accept()
            await websocket.close(code=1011, reason=NOT_STARTED[:MAX_CLOSE_REASON_BYTES])
        else:
            await JSONResponse({"error": NOT_STARTED}, status_code=503)(scope, receive, send)


NOT_STARTED_LOG_EVERY_S = 60.0

Started = AbstractAsyncContextManager[Gateway]


@dataclass(frozen=True)
class Direct:
    """The HTTP routes ``GatewayApp`` dispatches past the router (CORS-wrapped when configured)."""

    sse: ASGIApp
    sse_multi: ASGIApp
    poll: ASGIApp
    poll_multi: ASGIApp
    publish: ASGIApp


def create_app(settings: Settings | None = None) -> GatewayApp:
    """The gateway as an ASGI app: served alone, or mounted in a Starlette or FastAPI app."""
    settings = settings or Settings.from_env()
    _configure_logging()
    routes = [
        Route("/", _index),
        Route("/dashboard", _dashboard),
        Route("/healthz", _healthz),
        Route("/readyz", _readyz),
        Route("/metrics", _metrics),
        # Served past the router (GatewayApp); here for what the router says
        # of the paths around them ("/poll/" redirects to "/poll"). So is
        # POST /publish/{channel}, whose neighbours the router answers 404.
        Route("/poll", poll_multi_endpoint),
        Route("/presence/{channel:anytext}", presence_endpoint),
        Route("/admin/disconnect", admin_disconnect_endpoint, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    cors = _cors_options(settings)
    middleware = [Middleware(CORSMiddleware, **cors)] if cors else []

    def direct(app: ASGIApp) -> ASGIApp:
        return CORSMiddleware(app, **cors) if cors else app

    return GatewayApp(
        direct=Direct(
            sse=direct(sse_app),
            sse_multi=direct(sse_multi_app),
            poll=direct(poll_app),
            poll_multi=direct(poll_multi_app),
            publish=direct(publish_app),
        ),
        start=lambda: _started(settings),
        cors=cors,
        header_timeout_s=settings.header_timeout_s,
        routes=routes,
        middleware=middleware,
        exception_handlers={GatewayError: _gateway_error},
    )


@asynccontextmanager
async def _started(settings: Settings) -> AsyncIterator[Gateway]:
    """Every app-wide object, made and running for the block's duration."""
    metrics = Metrics()
    for name, on in accelerations.decide(settings.accelerations).items():
        metrics.accelerations.labels(name).set(1 if on else 0)
    broker = make_broker(settings, replies_reader() if settings.redis_url else None)
    hub = Hub(broker, settings, metrics, wait_for_exit_signal)
    guard = Guard(settings)
    if guard.open:
        logger.warning(
            "GATEWAY_SECRET is not set: the gateway is OPEN, anyone may read and publish"
        )
    presence = Presence(make_presence_store(hub.broker), settings, wait_for_exit_signal)
    access = Access(guard.revocations)
    gateway = Gateway(settings, hub, metrics, guard, presence, access)
    collector = Collector(lambda: gateway.open_connections, lambda: gateway.closed_connections)
    with signals_watched(), stall_watched(asyncio.get_running_loop()):
        async with (
            sole_worker() if not settings.redis_url else nullcontext(),
            hub.running(),
            presence.running(),
            access.running(hub),
            stats_running(hub, metrics, settings.stats_interval_s),
            collector_running(collector),
        ):
            yield gateway


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
