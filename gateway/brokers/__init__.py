"""Brokers: where ids are assigned, history kept and messages fanned in."""

from __future__ import annotations

from gateway.brokers.base import Broker, BrokerListener, History
from gateway.settings import Settings

__all__ = ["Broker", "BrokerListener", "History", "make_broker"]


def make_broker(settings: Settings) -> Broker:
    """The embedded broker, or Redis when ``REDIS_URL`` is set."""
    if settings.redis_url:
        from gateway.brokers.redis import RedisBroker

        return RedisBroker(settings)
    from gateway.brokers.memory import MemoryBroker

    return MemoryBroker(settings)
