"""The browser client, the demo chat and the dashboard, in a real Chromium.

Playwright's sync API drives Debian's ``/usr/bin/chromium`` against gateways
running in subprocesses (``tests.servers``); messages are published with a
plain ``httpx`` client. Every wait is for a condition in the page, with a
generous timeout, never a fixed sleep. Every test fails on a console error or
an uncaught exception in the page, except the network errors a test
provokes on purpose (a transport turned off, a server down), which it names.
Screenshots of the demo page and the dashboard land in
``artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from tests.servers import ROOT, GatewayServer, RedisServer

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
WAIT_MS = 30_000  # generous: a slow machine waits longer, it does not fail
TRANSPORTS = ["websocket", "sse", "poll"]
# What Chromium logs by itself when a connection is refused: expected only
# in tests that turn a transport off or take the server down.
NETWORK_NOISE = re.compile(
    r"^(Failed to load resource: .*|WebSocket connection to '.*' failed: .*)$"
)


def memory_env(**extra: str) -> dict[str, str]:
    return {"REDIS_URL": "", "GATEWAY_HEARTBEAT": "1", **extra}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert os.path.exists(CHROMIUM), "chromium is not installed (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server() -> Iterator[GatewayServer]:
    """A gateway on the embedded broker, every transport served."""
    gateway = GatewayServer(memory_env()).start()
    yield gateway
    gateway.close()


@dataclass
class PageLog:
    """Console errors and uncaught exceptions of every page a test opened."""

    errors: list[str] = field(default_factory=list)
    noise_allowed: bool = False

    def console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        if self.noise_allowed and NETWORK_NOISE.match(message.text):
            return
        self.errors.append(f"console: {message.text} ({message.location.get('url')})")

    def page_error(self, error: Exception) -> None:
        self.errors.append(f"pageerror: {error}")


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


@pytest.fixture
def new_page(browser: Browser, page_log: PageLog) -> Iterator[Any]:
    """Open pages in fresh contexts; at the end, no page may have logged an error."""
    contexts = []

    def open_page() -> Page:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("console", page_log.console)
        page.on("pageerror", page_log.page_error)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert page_log.errors == []


def publish(base: str, channel: str, data: str, event: str | None = None) -> str:
    params = {"event": event} if event else {}
    url = f"{base}/publish/{channel}"
    response = httpx.post(url, content=data.encode(), params=params, timeout=30)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def open_chat(page: Page, base: str, channel: str, transport: str = "auto", name: str = "") -> Page:
    query = httpx.QueryParams(channel=channel, transport=transport, name=name or "tester")
    page.goto(f"{base}/?{query}")
    wait_open(page)
    return page


def wait_open(page: Page, transport: str | None = None) -> None:
    """Until the page is subscribed (over ``transport``, when given)."""
    page.wait_for_function(
        "t => document.body.dataset.status === 'open'"
        " && (!t || document.body.dataset.transport === t)",
        arg=transport,
    )


def wait_rows(page: Page, count: int) -> list[dict[str, str]]:
    page.wait_for_function(
        "n => document.querySelectorAll('#messages li.msg').length >= n", arg=count
    )
    return rows(page)


def rows(page: Page) -> list[dict[str, str]]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#messages li.msg",
        "els => els.map(e => ({id: e.dataset.id, transport: e.dataset.transport,"
        " text: e.dataset.text}))",
    )


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), animations="disabled")


def test_gateway_js_works_as_a_classic_script_and_as_an_es_module(new_page, server, channel):
    """One file: <script src> defines window.Gateway, import {subscribe, publish} works too."""
    page = new_page()
    # A bare page of the gateway's own origin (no <link rel=icon>: answer the favicon request).
    page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    page.goto(f"{server.url}/healthz")
    page.add_script_tag(url="/static/gateway.js")
    classic = page.evaluate(
        "() => [typeof Gateway.subscribe, typeof Gateway.publish, typeof subscribe]"
    )
    assert classic == ["function", "function", "undefined"]  # and nothing else leaks into globals

    page.add_script_tag(
        type="module",
        content="import { subscribe, publish } from '/static/gateway.js';"
        " window.esm = { subscribe, publish };",
    )
    page.wait_for_function("() => window.esm !== undefined")
    # A round trip through the module's functions: publish over the open WebSocket.
    got = page.evaluate(
        """channel => new Promise((resolve, reject) => {
            const sub = esm.subscribe(channel, {
                transports: ["websocket"],
                onTransport: () => esm.publish(channel, "via module")
                    .then(ack => { window.ack = ack; }, reject),
                onMessage: (msg) => { sub.close(); resolve({msg, cursor: sub.cursor}); },
            });
        })""",
        channel,
    )
    ack = page.evaluate("() => window.ack")
    assert got["msg"]["data"] == "via module"
    assert got["msg"]["id"] == ack["id"] == got["cursor"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_forced_transport_brings_published_messages_into_the_page(
    new_page, server, channel, transport
):
    """Forced onto one transport, the demo page shows each published message once, with its id."""
    page = open_chat(new_page(), server.url, channel, transport)
    assert page.evaluate("() => document.body.dataset.transport") == transport
    sent = ["first", "two\nlines", '{"not": "chat"}', "ünïcödé ✓"]
    ids = [publish(server.url, channel, text) for text in sent]
    shown = wait_rows(page, len(sent))
    assert [r["id"] for r in shown] == ids
    assert [r["text"] for r in shown] == sent
    assert {r["transport"] for r in shown} == {transport}


@pytest.mark.parametrize(
    ("served", "expected"),
    [("sse,poll", "sse"), ("poll", "poll")],
    ids=["no-websocket", "poll-only"],
)
def test_auto_falls_back_to_the_first_transport_the_server_serves(
    new_page, page_log, channel, served, expected
):
    """WebSocket (and SSE) turned off on the server: `auto` lands on SSE (on poll) and works."""
    page_log.noise_allowed = True  # the refused handshake and the 404s are the point
    gateway = GatewayServer(memory_env(GATEWAY_TRANSPORTS=served)).start()
    try:
        page = open_chat(new_page(), gateway.url, channel, "auto")
        wait_open(page, expected)
        ids = [publish(gateway.url, channel, f"m{n}") for n in range(3)]
        shown = wait_rows(page, 3)
        assert [r["id"] for r in shown] == ids
        assert {r["transport"] for r in shown} == {expected}
    finally:
        gateway.close()


def test_the_page_resumes_across_restarts_and_switches_without_loss_or_repeat(
    new_page, page_log, channel
):
    """Server restarted on the same port, serving other transports: every message once, in order.

    Redis keeps the history while the page's gateway is down; a second
    gateway on the same Redis publishes meanwhile. Each restart serves a
    different set of transports, so the page must also switch.
    """
    page_log.noise_allowed = True  # connections refused while the server is down
    redis = RedisServer().start()
    env = {
        "REDIS_URL": redis.url,
        "GATEWAY_REDIS_PREFIX": f"gwb{os.getpid()}",
        "GATEWAY_HEARTBEAT": "1",
    }
    other = GatewayServer(env).start()
    node = GatewayServer(env).start()
    try:
        page = open_chat(new_page(), node.url, channel, "auto")
        wait_open(page, "websocket")
        sent: list[tuple[str, str]] = []  # (id, text)

        def send(via: GatewayServer, label: str) -> None:
            for n in range(3):
                text = f"{label}-{n}"
                sent.append((publish(via.url, channel, text), text))

        send(node, "before")
        wait_rows(page, len(sent))
        for served, expected, stop in [
            ("sse,poll", "sse", GatewayServer.terminate),  # graceful: clients told to reconnect
            ("poll", "poll", GatewayServer.kill),  # abrupt: the connection just breaks
            ("websocket,sse,poll", "websocket", GatewayServer.kill),
        ]:
            stop(node)
            node.close()
            send(other, f"while-down-{expected}")
            node = GatewayServer({**env, "GATEWAY_TRANSPORTS": served}, port=node.port).start()
            wait_open(page, expected)
            send(node, f"after-{expected}")
            shown = wait_rows(page, len(sent))
            assert shown[-6:] and {r["transport"] for r in shown[-6:]} == {expected}
        shown = rows(page)
        assert [(r["id"], r["text"]) for r in shown] == sent
        assert len({r["id"] for r in shown}) == len(sent)
        assert page.text_content("#fact-gaps") == "0"
        page.set_viewport_size({"width": 1280, "height": 1500})  # the whole story, every switch
        screenshot(page, "demo-resume.png")
    finally:
        node.close()
        other.close()
        redis.close()


def test_picking_a_transport_in_the_page_resubscribes_over_it(new_page, server, channel):
    """Clicking a transport (even several in quick succession) lands on it, messages follow."""
    page = open_chat(new_page(), server.url, channel, "auto")
    for label in ["sse", "poll", "websocket", "sse"]:  # no waiting: closes while connecting
        page.click(f"label[for=t-{label}]")
    for transport in ["sse", "poll", "websocket"]:
        page.click(f"label[for=t-{transport}]")
        wait_open(page, transport)
        message_id = publish(server.url, channel, f"over {transport}")
        row = page.wait_for_selector(f"#messages li.msg[data-id='{message_id}']")
        assert row is not None and row.get_attribute("data-transport") == transport


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_page_reports_a_gap_when_history_was_lost(new_page, page_log, channel, transport):
    """The embedded broker restarted (history gone): the page says so once, then carries on."""
    page_log.noise_allowed = True  # connections refused while the server is down
    node = GatewayServer(memory_env()).start()
    try:
        page = open_chat(new_page(), node.url, channel, transport)
        before = [publish(node.url, channel, f"old-{n}") for n in range(2)]
        wait_rows(page, 2)
        node.close()
        node = GatewayServer(memory_env(), port=node.port).start()
        page.wait_for_function("() => document.querySelector('#fact-gaps').textContent === '1'")
        wait_open(page, transport)
        after = [publish(node.url, channel, f"new-{n}") for n in range(2)]
        shown = wait_rows(page, 4)
        assert [r["id"] for r in shown] == before + after
        assert page.text_content("#fact-gaps") == "1"
    finally:
        node.close()


def test_the_demo_page_sends_and_receives(new_page, server, channel):
    """A message typed in one page shows in another (on another transport) with the same id."""
    channel = f"chat:lobby-{channel.split(':')[0]}"
    ada = open_chat(new_page(), server.url, channel, "auto", name="ada")
    grace = open_chat(new_page(), server.url, channel, "poll", name="grace")
    wait_open(ada, "websocket")
    conversation = [
        (ada, "Hello from the WebSocket side!"),
        (grace, "Hi Ada, I am on long-polling (my publish goes over HTTP POST)."),
        (ada, "Same ids, same order, whichever transport we use."),
    ]
    for count, (page, text) in enumerate(conversation, start=1):
        page.fill("#text", text)
        page.press("#text", "Enter")
        page.wait_for_function("() => document.querySelector('#text').value === ''")
        wait_rows(ada, count)
        wait_rows(grace, count)
    publish(server.url, channel, "a plain-text message published with curl")
    seen_by_ada, seen_by_grace = wait_rows(ada, 4), wait_rows(grace, 4)
    assert [r["id"] for r in seen_by_ada] == [r["id"] for r in seen_by_grace]
    assert [r["text"] for r in seen_by_ada][:3] == [text for _, text in conversation]
    assert {r["transport"] for r in seen_by_ada} == {"websocket"}
    assert {r["transport"] for r in seen_by_grace} == {"poll"}
    assert ada.text_content("#send-error") == ""
    ada.fill("#text", "")
    screenshot(ada, "demo.png")


def test_the_dashboard_shows_live_figures_after_traffic(new_page, server, channel):
    """Connections, messages in and out and the broker state reach the dashboard via its stream."""
    dashboard = new_page()
    dashboard.goto(f"{server.url}/dashboard")
    open_chat(new_page(), server.url, channel, "websocket")
    open_chat(new_page(), server.url, channel, "sse")
    open_chat(new_page(), server.url, channel, "poll")
    for burst in range(6):
        # A burst, then two fresh snapshots, so the rate chart gets several points.
        seen = int(dashboard.evaluate("() => document.body.dataset.stats"))
        for n in range(5 + 5 * burst):
            publish(server.url, channel, f"burst {burst} message {n}")
        dashboard.wait_for_function("n => +document.body.dataset.stats >= n", arg=seen + 2)

    def figure(name: str) -> float:
        text = dashboard.text_content(f"#{name}") or "0"
        return float(text.rstrip("kM"))

    dashboard.wait_for_function("() => document.body.dataset.broker === 'ready'")
    assert figure("published-total") > 0
    assert figure("delivered-total") > 0
    for transport in ["conn-total", "conn-websocket", "conn-sse"]:
        assert figure(transport) > 0, transport
    points = dashboard.evaluate("() => +document.querySelector('#chart-messages').dataset.points")
    assert points >= 6
    screenshot(dashboard, "dashboard.png")
