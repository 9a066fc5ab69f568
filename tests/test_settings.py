"""Settings come from the environment only, with the SPEC's names and defaults."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.settings import Settings


def test_defaults_are_the_specs():
    """An empty environment gives the documented defaults."""
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert settings.history_size == 1000
    assert settings.heartbeat_s == 15
    assert settings.poll_timeout_s == 25
    assert settings.max_message_bytes == 65536
    assert settings.transports == ("websocket", "sse", "poll")
    assert settings.secret is None and settings.public_channels == () and settings.allowed_origins == ()
    assert settings.shutdown_grace_s == 10 and settings.redis_prefix == "gw"
    assert 100 <= settings.queue_size <= 1000 and settings.max_connections >= 10000


def test_every_setting_is_read():
    """Each GATEWAY_* variable changes its field."""
    settings = Settings.from_env(
        {
            "REDIS_URL": "rediss://h:1/0",
            "GATEWAY_HISTORY_SIZE": "5",
            "GATEWAY_HEARTBEAT": "2.5",
            "GATEWAY_POLL_TIMEOUT": "60",
            "GATEWAY_MAX_MESSAGE_BYTES": "10",
            "GATEWAY_QUEUE_SIZE": "7",
            "GATEWAY_MAX_CONNECTIONS": "3",
            "GATEWAY_TRANSPORTS": "sse, poll",
            "GATEWAY_SECRET": "s",
            "GATEWAY_PUBLIC_CHANNELS": "news:*, status",
            "GATEWAY_ALLOWED_ORIGINS": "https://a.example,https://b.example",
            "GATEWAY_SHUTDOWN_GRACE": "4",
            "GATEWAY_REDIS_PREFIX": "app1",
            "GATEWAY_REDIS_SSL_VERIFY": "false",
        }
    )
    assert settings.redis_url == "rediss://h:1/0" and settings.history_size == 5
    assert settings.heartbeat_s == 2.5 and settings.poll_timeout_s == 29  # clamped below 30
    assert (settings.max_message_bytes, settings.queue_size, settings.max_connections) == (10, 7, 3)
    assert settings.transports == ("sse", "poll") and not settings.serves("websocket")
    assert settings.public_channels == ("news:*", "status")
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.shutdown_grace_s == 4 and settings.redis_prefix == "app1"
    assert settings.redis_ssl_verify is False


@pytest.mark.parametrize(
    "name, value",
    [
        ("GATEWAY_HISTORY_SIZE", "many"),
        ("GATEWAY_HISTORY_SIZE", "0"),
        ("GATEWAY_HEARTBEAT", "nan"),
        ("GATEWAY_TRANSPORTS", "carrier-pigeon"),
        ("GATEWAY_TRANSPORTS", ","),
        ("GATEWAY_REDIS_SSL_VERIFY", "maybe"),
    ],
)
def test_a_bad_value_is_a_clear_error(name, value):
    """A setting that cannot be used stops the start, naming the variable."""
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
