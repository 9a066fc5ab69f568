"""Brokers: where ids are assigned, history kept and messages fanned in."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.brokers.base import Broker, BrokerListener, History

if TYPE_CHECKING:
    from gateway.brokers.publish_link import ReadReplies
from gateway.settings import Settings

__all__ = ["Broker", "BrokerListener", "History", "is_cluster", "make_broker"]

logger = logging.getLogger(__name__)
DETECT_TIMEOUT_S = 2.0


def make_broker(settings: Settings, read_replies: ReadReplies | None = None) -> Broker:
    """The embedded broker, or Redis when ``REDIS_URL`` is set (a cluster when it is one).

    ``read_replies``: how a single Redis's publish pipeline reads its replies
    (server/redis_replies.py), when not redis-py's ``read_response``.
    """
    if settings.redis_url:
        if is_cluster(settings.redis_url, ssl_verify=settings.redis_ssl_verify):
            from gateway.brokers.cluster import ClusterBroker

            return ClusterBroker(settings)
        from gateway.brokers.redis import RedisBroker

        return RedisBroker(settings, read_replies)
    from gateway.brokers.memory import MemoryBroker

    return MemoryBroker(settings)


def is_cluster(url: str, *, ssl_verify: bool = True) -> bool:
    """Whether ``url`` names a node of a Redis Cluster (``INFO cluster``: ``cluster_enabled:1``).

    Asked once, at start, with a short timeout: a Redis not reachable then
    is taken for a single one (said in the log), as a gateway started
    before its Redis keeps trying to reach it.
    """
    import redis

    options: dict[str, object] = {
        "socket_connect_timeout": DETECT_TIMEOUT_S,
        "socket_timeout": DETECT_TIMEOUT_S,
    }
    if url.startswith("rediss://") and not ssl_verify:
        options["ssl_cert_reqs"] = "none"
    try:
        with redis.Redis.from_url(url, **options) as client:
            return bool(client.info("cluster").get("cluster_enabled"))
    except (redis.RedisError, OSError) as exc:
        logger.warning("is %s a cluster? not answered (%s): taken as a single Redis", url, exc)
        return False
