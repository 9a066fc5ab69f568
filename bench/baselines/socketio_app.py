"""Baseline 2: python-socketio as an ASGI app under uvicorn, fanned out through Redis.

The Flask-SocketIO family's way: an ``AsyncServer`` with an
``AsyncRedisManager`` (so several processes could share rooms), a client
joins the room named in its connect ``auth`` payload, and a publish is
``sio.emit("message", data, room=channel)``: the manager publishes it on
Redis, every process's listener receives it and emits it to its local room
members. ``POST /publish/{channel}`` is the HTTP publish the load generator
uses for every server. Both Engine.IO transports are served (WebSocket and
long-polling); the generator picks one per run.

Run: ``REDIS_URL=redis://127.0.0.1:6380 uvicorn socketio_app:app --app-dir bench/baselines``.
"""

import os

import socketio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

manager = socketio.AsyncRedisManager(os.environ.get("REDIS_URL", "redis://localhost:6379"))
sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, cors_allowed_origins="*")


@sio.event
async def connect(sid, environ, auth):
    channel = (auth or {}).get("channel")
    if not channel:
        raise socketio.exceptions.ConnectionRefusedError("auth.channel is required")
    await sio.enter_room(sid, channel)


async def publish(request: Request) -> JSONResponse:
    channel = request.path_params["channel"]
    body = (await request.body()).decode()
    await sio.emit("message", body, room=channel)
    return JSONResponse({"status": "published"}, status_code=201)


http_app = Starlette(routes=[Route("/publish/{channel}", publish, methods=["POST"])])
app = socketio.ASGIApp(sio, other_asgi_app=http_app)
