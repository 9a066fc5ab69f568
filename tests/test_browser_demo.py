"""The demo chat and the dashboard as a newcomer meets them, in a real Chromium.

Under a mount prefix (the FastAPI app of docs/embedding.md, ``tests.embedded_apps``,
gateway at ``/realtime``) every page, script and route is found and
messages arrive; a long-polling page sees who comes and goes; from a
phone's 420 px to 1920 px nothing overflows or clips. Screenshots of each
width land in ``artifacts/screenshots/``.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests import test_browser
from tests.servers import GatewayServer
from tests.test_browser import (
    WAIT_MS,
    PageLog,
    memory_env,
    open_chat,
    publish,
    screenshot,
    wait_open,
    wait_rows,
)
from tests.test_browser_multi import watch
from tests.test_browser_presence import wait_people

pytestmark = pytest.mark.browser

browser = test_browser.browser
page_log = test_browser.page_log
new_page = test_browser.new_page
server = test_browser.server  # the gateway alone, at /

MOUNT = "/realtime"
WIDTHS = [(420, 900), (1366, 768), (1920, 1080)]


@pytest.fixture(scope="module")
def mounted() -> Iterator[GatewayServer]:
    """docs/embedding.md's FastAPI app, the gateway mounted at /realtime, on the embedded broker."""
    parent = GatewayServer(memory_env(), app="tests.embedded_apps:fastapi_app", mount=MOUNT)
    yield parent.start()
    parent.close()


def open_page(browser: Browser, log: PageLog, width: int, height: int) -> Page:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    watch(page, log)
    return page


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_the_demo_under_a_mount_prefix_receives_and_sends(new_page, mounted, channel, transport):
    """At /realtime/ the page loads its script and styles there, subscribes, and a message arrives."""
    page = open_chat(new_page(), mounted.url, channel, transport, name="ada")
    wait_open(page, transport)
    answer = httpx.post(f"{mounted.origin}/notify/{channel}", content=b"from the app", timeout=30)
    assert answer.status_code == 200, answer.text
    page.fill("#text", "from the page")
    page.press("#text", "Enter")
    seen = wait_rows(page, 2)
    assert seen[0] == {"id": answer.json()["id"], "transport": transport, "text": "from the app"}
    assert seen[1]["text"] == "from the page"
    styled = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert styled == "rgb(11, 16, 32)"  # app.css came from /realtime/static/
    assert page.text_content("#send-error") == ""


def test_the_dashboard_under_a_mount_prefix_shows_the_stats(new_page, mounted, channel):
    """/realtime/dashboard reads the stats stream at /realtime, and its links stay under it."""
    dashboard = new_page()
    dashboard.goto(f"{mounted.url}/dashboard")
    publish(mounted.url, channel, "traffic")
    dashboard.wait_for_function("() => +document.body.dataset.stats >= 2")
    dashboard.wait_for_function("() => document.body.dataset.broker === 'ready'")
    links = dashboard.eval_on_selector_all("nav a", "as => as.map(a => a.href)")
    assert links == [f"{mounted.url}/", f"{mounted.url}/dashboard"]
    dashboard.click("nav a >> text=Chat")
    wait_open(dashboard)
    assert dashboard.url.startswith(f"{mounted.url}/")


def test_a_long_polling_page_sees_who_comes_and_goes(browser, page_log, server, channel):
    """Long-poll carries no presence events: the poll page's list follows the snapshot."""
    room = f"chat:{channel.split(':')[0]}-poll"
    ada = open_page(browser, page_log, 1280, 800)
    open_chat(ada, server.url, room, "poll", name="ada")
    wait_people(ada, ["ada"])
    bo = open_page(browser, page_log, 1280, 800)
    open_chat(bo, server.url, room, "sse", name="bo")
    took = wait_people(ada, ["ada", "bo"], timeout_ms=10_000)
    bo.context.close()
    wait_people(ada, ["ada"], timeout_ms=20_000)
    ada.context.close()
    assert took < 5
    assert page_log.errors == []


def test_the_demo_and_dashboard_fit_from_420_to_1920_px(browser, page_log, server, channel):
    """No page wider than the window, no message's transport badge past its bubble."""
    room = f"chat:{channel.split(':')[0]}-fit"
    for n in range(3):
        publish(
            server.url,
            room,
            f'{{"name":"bo","text":"message {n}, long enough to wrap on a phone"}}',
            "chat",
        )
    for width, height in WIDTHS:
        page = open_page(browser, page_log, width, height)
        open_chat(page, server.url, room, "auto", name="ada")
        wait_rows(page, 3)
        overflow = page.evaluate(
            """() => ({
              page: document.documentElement.scrollWidth - innerWidth,
              badges: [...document.querySelectorAll('.bubble')].map(b => {
                const badge = b.querySelector('.badge').getBoundingClientRect();
                return Math.max(0, badge.right - b.getBoundingClientRect().right);
              }),
              bar: [...document.querySelectorAll('.topbar > *')].map(e =>
                Math.max(0, e.getBoundingClientRect().right - innerWidth)),
            })"""
        )
        assert overflow["page"] <= 0, (width, overflow)
        assert max(overflow["badges"]) <= 0.5, (width, overflow)
        assert max(overflow["bar"]) <= 0.5, (width, overflow)
        page.fill("#text", "")
        screenshot(page, f"demo-{width}.png")
        page.goto(f"{server.url}/dashboard")
        page.wait_for_function("() => document.body.dataset.broker === 'ready'")
        assert page.evaluate("() => document.documentElement.scrollWidth - innerWidth") <= 0, width
        if width in (420, 1366):
            screenshot(page, f"dashboard-{width}.png")
        page.context.close()
    assert page_log.errors == []
