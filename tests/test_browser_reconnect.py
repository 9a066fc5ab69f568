"""Live again soon after the network returns, on every transport (issue 25).

A TCP proxy in the test process (``tests.blackhole``) stands between
Chromium and the gateway. Blocked, it forwards nothing and closes nothing:
the connections the page holds, and the ones it opens meanwhile, hang as
they do behind a dropped network, with no event for the page. Messages are
published straight to the gateway during the outage. After it, each page
must show the first message within 2 s of the network's return, and every
message exactly once, in order, with no gap (history holds them all).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests import test_browser
from tests.blackhole import blackhole
from tests.servers import ROOT, GatewayServer
from tests.test_browser import TRANSPORTS, memory_env, publish

pytestmark = [pytest.mark.browser, pytest.mark.slow]

browser = test_browser.browser
page_log = test_browser.page_log
new_page = test_browser.new_page

HEARTBEAT_S = 1  # the gateway's and the client's: dead after 2.5 s of silence
POLL_TIMEOUT_S = 2  # a pending poll is dead 5 s after its timeout
OUTAGE_S = 12  # longer than each transport takes to call its connection dead
BACK_WITHIN_MS = 2000

# Records each message with the time (this machine's clock) it reached the page.
HARNESS = """
window.H = { got: [], statuses: [], gaps: 0, errors: [] };
H.subscribe = (channel, opts) => Gateway.subscribe(channel, { ...opts,
  onMessage: (m) => H.got.push([m.id, Date.now()]),
  onStatus: (s) => H.statuses.push([s, Date.now()]),
  onGap: () => { H.gaps += 1; },
  onError: (e) => H.errors.push(String(e)) });
true;
"""


def open_harness(page: Page, base: str, channel: str, transport: str) -> Page:
    page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    page.goto(f"{base}/healthz")
    page.add_script_tag(url="/static/gateway.js")
    page.evaluate(HARNESS)
    opts = {"transports": [transport], "heartbeat": HEARTBEAT_S, "pollTimeout": POLL_TIMEOUT_S}
    page.evaluate("([c, o]) => { H.sub = H.subscribe(c, o); }", [channel, opts])
    page.wait_for_function("() => H.sub.transport !== null")
    return page


def wait_got(page: Page, transport: str, count: int, back_ms: float) -> None:
    try:
        page.wait_for_function("n => H.got.length >= n", arg=count)
    except PlaywrightTimeout:
        state = page.evaluate("() => [H, Gateway.connections(), Date.now()]")
        raise AssertionError(f"{transport}: back at {back_ms:.0f}; page: {state}") from None


def test_every_transport_is_live_within_2s_of_the_network_returning(new_page, page_log, channel):
    """12 s of silence on the wire: each transport back within 2 s of its end, nothing lost or repeated."""
    page_log.noise_allowed = True  # attempts that hang are given up on
    gateway = GatewayServer(memory_env(GATEWAY_HEARTBEAT=str(HEARTBEAT_S))).start()
    try:
        with blackhole(gateway.port) as proxy:
            pages = {t: open_harness(new_page(), proxy.url, channel, t) for t in TRANSPORTS}
            sent = [publish(gateway.url, channel, "before")]
            for page in pages.values():
                page.wait_for_function("n => H.got.length >= n", arg=len(sent))
            proxy.block()
            blocked_at = time.time()
            for n, at in enumerate([1, 4, 8]):
                time.sleep(max(0.0, blocked_at + at - time.time()))
                sent.append(publish(gateway.url, channel, f"during-{n}"))
            time.sleep(max(0.0, blocked_at + OUTAGE_S - time.time()))
            proxy.unblock()
            back_ms = time.time() * 1000
            sent.append(publish(gateway.url, channel, "after"))
            results: dict[str, Any] = {}
            for transport, page in pages.items():
                wait_got(page, transport, len(sent), back_ms)
                state = page.evaluate("() => H")
                ids = [got[0] for got in state["got"]]
                assert ids == sent, f"{transport}: {ids} != {sent}"
                assert state["gaps"] == 0 and state["errors"] == [], (transport, state)
                during = [at for _, at in state["got"][1:]]
                assert min(during) >= back_ms, f"{transport}: a message came through the outage"
                # The connection was called dead during the outage, not at its end.
                dropped = [
                    at
                    for s, at in state["statuses"]
                    if s == "connecting" and at > blocked_at * 1000
                ]
                assert dropped and min(dropped) < back_ms, (transport, state["statuses"])
                results[transport] = {
                    "first_message_after_return_ms": round(min(during) - back_ms),
                    "noticed_dead_after_ms": round(min(dropped) - blocked_at * 1000),
                }
            artifacts = ROOT / "artifacts"
            artifacts.mkdir(exist_ok=True)
            (artifacts / "reconnect.json").write_text(json.dumps(results, indent=2))
            print(f"\nreconnect after a {OUTAGE_S} s outage: {results}")
            for transport, figures in results.items():
                took = figures["first_message_after_return_ms"]
                assert took <= BACK_WITHIN_MS, f"{transport}: live again {took} ms after: {results}"
    finally:
        gateway.close()
