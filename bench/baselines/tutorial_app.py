"""Baseline 1: "real-time updates with FastAPI/Starlette, SSE and Redis", as tutorials write it.

Deliberately *not* improved: one module-level redis-py client with its
default connection pool, and each SSE client opens its own pub/sub
subscription (its own Redis connection, its own task reading it, its own
decode and frame per message). With redis-py's default asyncio pool
(``max_connections`` 100) the 101st concurrent subscriber fails with
``MaxConnectionsError`` *after* the ``200 OK`` and the headers were sent:
its stream just ends, and nothing in the server log says a client was lost
unless someone reads the traceback. That is reproduced here on purpose.

The one knob: ``REDIS_MAX_CONNECTIONS``, unset by default (the tutorial's
pool). The bench sets it only for a second, clearly labelled run
("tutorial, pool raised": what the first forum answer tells you to do), so
that its cost per delivery can be compared at N = 1,000.

Run: ``REDIS_URL=redis://127.0.0.1:6380 uvicorn tutorial_app:app --app-dir bench/baselines``.
"""

import os

import redis.asyncio as redis
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

pool_size = {"max_connections": int(os.environ["REDIS_MAX_CONNECTIONS"])} if os.environ.get(
    "REDIS_MAX_CONNECTIONS"
) else {}
redis_client = redis.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379"), **pool_size)


async def stream(request: Request) -> EventSourceResponse:
    channel = request.path_params["channel"]

    async def event_generator():
        pubsub = redis_client.pubsub()
        await pubsub.subscribe(channel)
        try:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    yield {"event": "message", "data": message["data"].decode()}
        finally:
            await pubsub.unsubscribe(channel)
            await pubsub.aclose()

    return EventSourceResponse(event_generator())


async def publish(request: Request) -> JSONResponse:
    channel = request.path_params["channel"]
    body = await request.body()
    await redis_client.publish(channel, body)
    return JSONResponse({"status": "published"}, status_code=201)


app = Starlette(
    routes=[
        Route("/sse/{channel}", stream),
        Route("/publish/{channel}", publish, methods=["POST"]),
    ]
)
