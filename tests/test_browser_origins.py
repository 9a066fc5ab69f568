"""A page on another origin than its gateway: the client shares without a word, or through workerUrl.

Two gateways on two ports are two origins: the page comes from one (A) and
reads from the other (B, ``baseUrl``), loading the client's script from B
as a page embedding a hosted gateway would. A SharedWorker's script must be
of the page's origin, so B's copy cannot be one: the client must lead from
a tab, without a warning. Given ``workerUrl`` (A's copy of the same global
build) it shares through a worker again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page

from tests import test_browser
from tests.servers import GatewayServer
from tests.test_browser import WAIT_MS, memory_env, publish

pytestmark = pytest.mark.browser

browser = test_browser.browser


@pytest.fixture(scope="module")
def origins() -> Iterator[tuple[GatewayServer, GatewayServer]]:
    """A: the page's origin. B: the gateway it reads, allowing A's origin."""
    page_origin = GatewayServer(memory_env()).start()
    gateway = GatewayServer(memory_env(GATEWAY_ALLOWED_ORIGINS=page_origin.url)).start()
    yield page_origin, gateway
    gateway.close()
    page_origin.close()


def open_page(browser: Browser, origin: str, said: list[str]) -> Page:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.route("**/favicon.ico", lambda route: route.fulfill(status=204))

    def console(message: ConsoleMessage) -> None:
        if message.type in ("warning", "error"):
            said.append(f"{message.type}: {message.text}")

    page.on("console", console)
    page.on("pageerror", lambda error: said.append(f"pageerror: {error}"))
    page.goto(f"{origin}/healthz")
    return page


def read_one(page: Page, gateway: str, channel: str, **opts: str) -> dict[str, object]:
    page.add_script_tag(url=f"{gateway}/static/gateway.js")
    page.evaluate(
        """([base, c, o]) => { window.got = [];
            Gateway.subscribe(c, { baseUrl: base, ...o, onMessage: (m) => got.push(m.id) }); }""",
        [gateway, channel, opts],
    )
    page.wait_for_function("() => Gateway.connections().some(c => c.status === 'open')")
    sent = publish(gateway, channel, "across origins")
    page.wait_for_function("() => got.length === 1")
    assert page.evaluate("() => got") == [sent]
    return page.evaluate("() => Gateway.connections()[0]")  # type: ignore[no-any-return]


def test_a_page_on_another_origin_shares_through_a_leader_tab_without_a_warning(
    browser, origins, channel
):
    """The client's script and gateway on B, the page on A: no worker tried, no warning, it reads."""
    page_origin, gateway = origins
    said: list[str] = []
    page = open_page(browser, page_origin.url, said)
    try:
        connection = read_one(page, gateway.url, channel)
        assert connection["holder"] == "this tab", connection
        assert said == []
    finally:
        page.context.close()


def test_worker_url_of_the_page_origin_shares_through_a_worker(browser, origins, channel):
    """workerUrl names A's copy of the global build: the connection to B lives in a worker."""
    page_origin, gateway = origins
    said: list[str] = []
    page = open_page(browser, page_origin.url, said)
    try:
        worker_url = f"{page_origin.url}/static/gateway.js"
        connection = read_one(page, gateway.url, channel, workerUrl=worker_url)
        assert connection["holder"] == "worker", connection
        assert said == []
    finally:
        page.context.close()
