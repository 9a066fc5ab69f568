"""``GET /presence/{channel}``: the snapshot, and which store keeps presence.

Readable by whoever may read the channel (401/403 as on every route, 400 for
a bad name). The body is ``{"channel","users","connections","members"}``,
members sorted by user; past ``GATEWAY_PRESENCE_MAX_MEMBERS`` users,
``members`` is null and ``counts_only`` true.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.brokers.base import Broker
from gateway.brokers.presence_memory import MemoryPresenceStore
from gateway.message import check_channel
from gateway.presence_wire import PresenceStore
from gateway.state import gateway_of


def make_presence_store(broker: Broker) -> PresenceStore:
    """Presence kept where the broker keeps messages: in memory, or on the same Redis."""
    from gateway.brokers.redis_store import RedisStore

    if isinstance(broker, RedisStore):  # a single Redis or a cluster
        from gateway.brokers.presence_redis import RedisPresenceStore

        return RedisPresenceStore(broker)
    return MemoryPresenceStore()


async def presence_endpoint(request: Request) -> Response:
    gateway = gateway_of(request)
    channel = check_channel(request.path_params["channel"])
    gateway.guard.authorize_read(request, channel)
    gateway.hub.check_broker()
    snapshot = await gateway.presence.snapshot(channel)
    return Response(
        snapshot.body(), media_type="application/json", headers={"Cache-Control": "no-store"}
    )
