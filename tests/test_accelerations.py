"""The server layer's accelerations: checked at start, off with a log line when they do not fit.

A reach into another library's internals (gateway/server/) is used only
when the code it touches is as in a version it was checked with; here the
installed (pinned) versions must fit, a changed class (faked) turns its
acceleration off with one warning naming it, GATEWAY_ACCELERATIONS turns
any off, and a gateway with all off serves the same routes through plain
ASGI (tests/test_contract.py runs the whole contract that way too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.errors import ConfigError
from gateway.server import accelerations
from gateway.settings import ALL_ACCELERATIONS, Settings
from tests.clients import publish
from tests.servers import GatewayServer


@pytest.fixture
def fresh() -> Iterator[None]:
    """Each test decides anew; the process's decision is restored after it."""
    before = dict(accelerations._decided)
    yield
    accelerations._decided.clear()
    accelerations._decided.update(before)


def test_the_pinned_libraries_fit_every_acceleration(fresh: None) -> None:
    """requirements.txt's uvicorn, websockets and uvloop: every acceleration on. (A bump that
    changes a touched class fails here: read its code, then add its fingerprint.)"""
    decided = accelerations.decide(log=False)
    assert decided == dict.fromkeys(ALL_ACCELERATIONS, True), {
        name: a.reason for name, a in accelerations.REGISTRY.items() if not a.on
    }


def test_a_changed_class_turns_its_acceleration_off_with_a_line_naming_it(
    fresh: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A touched class whose code is not one checked (faked: no fingerprint known) turns
    the acceleration off, logged once at WARNING with its name, and ``on()`` says so."""
    monkeypatch.setitem(accelerations.CHECKED, accelerations.HTTP_PROTOCOL, {})
    with caplog.at_level(logging.INFO, logger="gateway.accelerations"):
        decided = accelerations.decide()
    assert decided[accelerations.HTTP_PROTOCOL] is False
    assert accelerations.on(accelerations.HTTP_PROTOCOL) is False
    assert decided[accelerations.HTTP_DIRECT] is True  # (its own fingerprints still fit)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if w.startswith("acceleration http-protocol: OFF")], warnings
    assert "HttpToolsProtocol" in next(w for w in warnings if "http-protocol" in w)


def test_a_missing_member_turns_its_acceleration_off(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member the acceleration uses, gone from the library: off, and the reason names it."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    monkeypatch.delattr(HttpToolsProtocol, "send_400_response")
    accelerations.decide(log=False)
    off = accelerations.REGISTRY[accelerations.HTTP_PROTOCOL]
    assert not off.on and "send_400_response" in off.reason


def test_the_protocol_is_uvicorns_own_when_its_acceleration_is_off(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GatewayHttpProtocol`` builds uvicorn's ``HttpToolsProtocol`` unchanged when off."""
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from gateway.server.protocol import GatewayHttpProtocol

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError

    config = uvicorn.Config(app, http="httptools", log_level="warning")
    config.load()
    loop = asyncio.new_event_loop()
    try:
        made = {}
        for allowed in ([n for n in ALL_ACCELERATIONS if n != "http-protocol"], ALL_ACCELERATIONS):
            accelerations.decide(allowed, log=False)
            protocol = GatewayHttpProtocol(
                config=config, server_state=ServerState(), app_state={}, _loop=loop
            )
            made[len(allowed)] = type(protocol)
    finally:
        loop.close()
    assert made == {
        len(ALL_ACCELERATIONS) - 1: HttpToolsProtocol,
        len(ALL_ACCELERATIONS): (GatewayHttpProtocol),
    }


def test_the_setting_names_what_may_be_on_and_refuses_unknown_names() -> None:
    """GATEWAY_ACCELERATIONS: all (default), none, or names; an unknown name is a clear error."""
    assert Settings.from_env({}).accelerations == ALL_ACCELERATIONS
    assert Settings.from_env({"GATEWAY_ACCELERATIONS": "none"}).accelerations == ()
    some = Settings.from_env({"GATEWAY_ACCELERATIONS": "ws-lean, accept-loop"})
    assert some.accelerations == ("ws-lean", "accept-loop")
    with pytest.raises(ConfigError, match="unknown: http-fast"):
        Settings.from_env({"GATEWAY_ACCELERATIONS": "ws-lean,http-fast"})


@pytest.mark.anyio
async def test_a_gateway_says_which_accelerations_are_on_in_its_log_and_metrics() -> None:
    """At start, one line per acceleration; /metrics has ``gateway_acceleration`` per name;
    with GATEWAY_ACCELERATIONS=none every one is off and a poll is still answered."""
    for setting, value in (("all", 1.0), ("none", 0.0)):
        env = {"REDIS_URL": "", "GATEWAY_ACCELERATIONS": setting}
        server = GatewayServer(env, args=["--log-level", "info"]).start()
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                metrics = (await http.get(f"{server.url}/metrics")).text
                first = await publish(server.url, "acc", "one")
                answer = await http.get(f"{server.url}/poll/acc", params={"since": "0"})
            for name in ALL_ACCELERATIONS:
                assert f'gateway_acceleration{{name="{name}"}} {value}' in metrics, name
                state = "on" if value else "OFF"
                assert f"acceleration {name}: {state}" in server.log(), name
            assert [m["id"] for m in answer.json()["messages"]] == [first]
        finally:
            server.close()


_TRICKY_MODULE = '''\
import dataclasses


class KeyBase:
    """class Key in a docstring is not its heading"""


@dataclasses.dataclass(
    frozen=True,
)
# a comment between the decorators
@dataclasses.dataclass
class Key(KeyBase):
    name: str = "class Key"

    class Inner:
        pass


def after() -> None:
    pass
'''


def test_a_class_source_is_read_without_ast_and_as_inspect_reads_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fingerprints hash a class's source; ``inspect.getsource`` finds a class with
    ``ast.parse``, which CPython 3.11.5-3.11.7 can fail ("AST constructor recursion depth
    mismatch", seen failing a server's start in CI). ``_source`` must give the same text
    without it, for every class fingerprinted and for decorators, comments and prefixes."""
    import ast
    import importlib
    import inspect

    (tmp_path / "tricky_classes.py").write_text(_TRICKY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    tricky = importlib.import_module("tricky_classes")
    found = [tricky.KeyBase, tricky.Key] + [
        accelerations._resolve(name)
        for names in (accelerations._HTTP_CLASSES, accelerations._WS_FRAMES_CLASSES)
        for name in names
    ]
    expected = [inspect.getsource(kind) for kind in found]
    assert expected[1].startswith("@dataclasses.dataclass(\n")  # (the case is the tricky one)

    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ast.parse was called")

    monkeypatch.setattr(ast, "parse", refused)
    assert [accelerations._source(kind) for kind in found] == expected
