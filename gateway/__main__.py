"""``python -m gateway``: serve | publish CHANNEL DATA | token."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

import httpx

from gateway.auth import Guard
from gateway.errors import ConfigError
from gateway.settings import Settings

WS_LINE_MAX = 65536


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    command = args.command or "serve"
    if command == "serve":
        return _serve(settings, args.host, args.port)
    if command == "publish":
        return _publish(args)
    return _token(settings, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the gateway (the default)")
    for p in (parser, serve):
        p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    publish = commands.add_parser("publish", help="publish one message over HTTP")
    publish.add_argument("channel")
    publish.add_argument("data")
    publish.add_argument("--event", default=None)
    publish.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway's base URL")
    publish.add_argument("--token", default=None)
    token = commands.add_parser("token", help="mint a development token (needs GATEWAY_SECRET)")
    token.add_argument("--sub", action="append", default=[], help="glob of readable channels")
    token.add_argument("--pub", action="append", default=[], help="glob of publishable channels")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.add_argument("--user", default=None, help="who it names, for presence (the sub claim)")
    return parser


def _serve(settings: Settings, host: str, port: int) -> int:
    # websockets' documented setting, read when it is first imported (by uvicorn,
    # below): handshake lines up to 64 KiB reach the gateway, which answers a
    # URL or header past 8 KiB with its reason (server/accelerations.py).
    os.environ.setdefault("WEBSOCKETS_MAX_LINE_LENGTH", str(WS_LINE_MAX))
    import uvicorn

    uvicorn.run(
        "gateway.app:app",
        host=host,
        port=port,
        loop="gateway.server.loop:GreedyAcceptLoop",  # uvloop, accepting every waiting connection
        access_log=False,  # the platform's router logs requests; ours logs connections
        http="gateway.server.protocol:GatewayHttpProtocol",  # long-polls served without a task
        ws_ping_interval=settings.heartbeat_s,
        ws_ping_timeout=settings.heartbeat_s,
        ws_max_size=settings.ws_max_frame_bytes,
        ws_per_message_deflate=False,
        # Rounded up, never to None: None would wait for connections forever.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
        proxy_headers=True,
        log_level=os.environ.get("LOG_LEVEL", "info"),
    )
    return 0


def _publish(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    params = {"event": args.event} if args.event else {}
    response = httpx.post(
        f"{args.url.rstrip('/')}/publish/{args.channel}",
        content=args.data.encode(),
        params=params,
        headers=headers,
    )
    print(response.text)
    return 0 if response.status_code == 201 else 1


def _token(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.secret:
        print("gateway: set GATEWAY_SECRET to mint tokens", file=sys.stderr)
        return 2
    try:
        guard = Guard(settings)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    print(guard.mint(args.sub, args.pub, args.ttl, user=args.user))
    return 0


if __name__ == "__main__":
    sys.exit(main())
