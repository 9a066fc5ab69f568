"""Presence in the demo chat, in a real Chromium: who is in the room, live, across tabs and nodes.

Two users in three tabs (one has two): each sees the other in the room's
"Here" list within a second of arriving, a user's second tab is no second
person, and closing a user's last tab takes them out of the others' list.
On Redis, each user's tabs talk to another gateway node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests import test_browser
from tests.conftest import gateway_env
from tests.servers import GatewayServer, RedisServer
from tests.test_browser import WAIT_MS, PageLog, screenshot, wait_open
from tests.test_browser_multi import watch

pytestmark = pytest.mark.browser

browser = test_browser.browser
page_log = test_browser.page_log


@pytest.fixture(scope="module", params=["one-node", "two-nodes"])
def nodes(request: pytest.FixtureRequest) -> Iterator[tuple[GatewayServer, GatewayServer]]:
    """One gateway on the embedded broker (twice the same), or two nodes on one Redis."""
    if request.param == "one-node":
        server = GatewayServer(gateway_env("memory", None)).start()
        yield server, server
        server.close()
        return
    redis = RedisServer().start()
    env = gateway_env("redis", redis)
    pair = GatewayServer(env).start(), GatewayServer(env).start()
    yield pair
    for server in pair:
        server.close()
    redis.close()


def new_context(browser: Browser, log: PageLog) -> BrowserContext:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(WAIT_MS)
    ctx.on("page", lambda page: watch(page, log))
    return ctx


def open_room(ctx: BrowserContext, base: str, room: str, name: str) -> Page:
    page = ctx.new_page()
    page.goto(f"{base}/?{httpx.QueryParams(channel=room, rooms=room, name=name)}")
    wait_open(page)
    return page


def people(page: Page) -> list[str]:
    return list(page.eval_on_selector_all("#people li", "items => items.map(li => li.dataset.user)"))


def wait_people(page: Page, expected: list[str], timeout_ms: float = WAIT_MS) -> float:
    """Until the page's "Here" list is ``expected``; the seconds it took."""
    started = time.monotonic()
    page.wait_for_function(
        "want => JSON.stringify([...document.querySelectorAll('#people li')].map(li => li.dataset.user)) === want",
        arg=json.dumps(expected, separators=(",", ":")),
        timeout=timeout_ms,
    )
    return time.monotonic() - started


def test_two_users_in_three_tabs_see_each_other_within_a_second(browser, page_log, nodes, channel):
    """ada (two tabs) and bo (one tab, on the other node when there are two) see each other live."""
    first, second = nodes
    room = f"chat:{channel.split(':')[0]}-here"
    ada_ctx, bo_ctx = new_context(browser, page_log), new_context(browser, page_log)
    try:
        ada = [open_room(ada_ctx, first.url, room, "ada") for _ in range(2)]
        for tab in ada:
            wait_people(tab, ["ada"])
        bo = open_room(bo_ctx, second.url, room, "bo")
        took = max(wait_people(tab, ["ada", "bo"], timeout_ms=1000) for tab in ada)
        wait_people(bo, ["ada", "bo"], timeout_ms=1000)
        assert took < 1.0
        assert httpx.get(f"{first.url}/presence/{room}").json()["users"] == 2
        screenshot(ada[0], "demo-presence.png")
        ada[0].close()  # one of ada's two tabs: ada is still here
        time.sleep(3)
        assert people(bo) == ["ada", "bo"]
        bo.close()  # bo's last tab
        for tab in ada[1:]:
            wait_people(tab, ["ada"], timeout_ms=10_000)
    finally:
        ada_ctx.close()
        bo_ctx.close()
    assert page_log.errors == []
