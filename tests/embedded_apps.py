"""Parent apps that mount the gateway, exactly as docs/embedding.md shows.

The tests serve them with ``uvicorn tests.embedded_apps:<name>``:

* ``starlette_app``: a Starlette app whose lifespan is the gateway's, and a
  route that publishes through the mounted gateway (``realtime.publisher``).
* ``fastapi_app``: a FastAPI app with a lifespan of its own, which starts the
  gateway inside it, and a route that publishes the same way, answering a
  ``GatewayError`` with its status. Neither needs ``GATEWAY_URL`` or ``REDIS_URL``.
* ``not_started_app``: the mistake: mounted, never started.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from gateway.app import create_app
from gateway.errors import GatewayError


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the parent app is alive")


# -- Starlette: the gateway's lifespan is the app's ------------------------------

realtime = create_app()


async def notify(request: Request) -> JSONResponse:
    text = (await request.body()).decode()
    channel = request.path_params["channel"]
    message_id = await realtime.publisher.publish(channel, text, event="notice")
    return JSONResponse({"id": message_id})


starlette_app = Starlette(
    routes=[
        Route("/healthz", healthz),
        Route("/notify/{channel}", notify, methods=["POST"]),
        Mount("/realtime", realtime),
    ],
    lifespan=realtime.lifespan,
)


# -- FastAPI: a lifespan of its own ----------------------------------------------

fastapi_realtime = create_app()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with fastapi_realtime.running():
        yield


fastapi_app = FastAPI(lifespan=lifespan)
fastapi_app.mount("/realtime", fastapi_realtime)


@fastapi_app.post("/notify/{channel}", response_model=None)
async def fastapi_notify(channel: str, request: Request) -> Response | dict[str, str]:
    text = (await request.body()).decode()
    try:
        message_id = await fastapi_realtime.publisher.publish(channel, text, event="notice")
    except GatewayError as exc:
        return JSONResponse({"error": exc.reason}, status_code=exc.status)
    return {"id": message_id}


@fastapi_app.get("/healthz")
async def fastapi_healthz() -> dict[str, str]:
    return {"status": "the parent app is alive"}


# -- The mistake: mounted without starting it ------------------------------------

not_started_app = Starlette(routes=[Route("/healthz", healthz), Mount("/realtime", create_app())])
