"""Tokens of a few seconds in Chromium: the client's token function keeps it reading (issue 23).

The page's token function mints a fresh HS256 token (WebCrypto, with the
test's secret) that expires 4 s later. While messages are published every
150 ms for 12 s, the client must refresh before each expiry (on WebSocket in
place, with the ``refresh`` frame; on SSE and poll by reconnecting from its
cursor) and show every message exactly once, in order, with no error.
"""

from __future__ import annotations

import importlib.util
import threading
import time

import httpx
import jwt
import pytest
from playwright.sync_api import Page

from tests import test_browser
from tests.servers import GatewayServer
from tests.test_browser import TRANSPORTS, memory_env

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gateway.transports.refresh") is None,
        reason="needs server-side expiry (issue 23)",
    ),
]

browser = test_browser.browser
page_log = test_browser.page_log
new_page = test_browser.new_page

SECRET = "a-secret-of-at-least-thirty-two-bytes-for-tests"
LIFETIME_S = 4
RUN_S = 12  # three lifetimes: three refreshes at least

# A token function that mints in the page, and a record of what arrived.
HARNESS = """
window.H = { got: [], statuses: [], gaps: 0, errors: [], minted: 0 };
const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replace(/=+$/, "").replace(/\\+/g, "-").replace(/\\//g, "_");
const text = (s) => new TextEncoder().encode(s);
H.token = async () => {
  const now = Math.floor(Date.now() / 1000);
  const head = b64(text(JSON.stringify({ alg: "HS256", typ: "JWT" })));
  const body = b64(text(JSON.stringify({ sub: "ada", sub_channels: ["*"], pub_channels: ["*"],
    iat: now, exp: now + H.lifetime })));
  const key = await crypto.subtle.importKey("raw", text(H.secret), { name: "HMAC", hash: "SHA-256" },
    false, ["sign"]);
  const sig = await crypto.subtle.sign("HMAC", key, text(`${head}.${body}`));
  H.minted += 1;
  return `${head}.${body}.${b64(sig)}`;
};
H.subscribe = (channel, opts) => Gateway.subscribe(channel, { ...opts, token: H.token,
  onMessage: (m) => H.got.push(m.id),
  onStatus: (s) => H.statuses.push(s),
  onGap: () => { H.gaps += 1; },
  onError: (e) => H.errors.push(String(e)) });
true;
"""


class Publisher(threading.Thread):
    """Publishes every 150 ms for ``RUN_S`` seconds, with a token of its own; keeps the ids."""

    def __init__(self, base: str, channel: str) -> None:
        super().__init__(daemon=True)
        self.base, self.channel = base, channel
        self.sent: list[str] = []

    def run(self) -> None:
        claims = {"sub": "publisher", "pub_channels": ["*"], "exp": int(time.time()) + 600}
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + RUN_S
        with httpx.Client(timeout=30, headers=headers) as client:
            n = 0
            while time.monotonic() < deadline:
                response = client.post(
                    f"{self.base}/publish/{self.channel}", content=f"m{n}".encode()
                )
                assert response.status_code == 201, response.text
                self.sent.append(response.json()["id"])
                n += 1
                time.sleep(0.15)


def open_harness(page: Page, base: str, channel: str, transport: str) -> Page:
    page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    page.goto(f"{base}/healthz")
    page.add_script_tag(url="/static/gateway.js")
    page.evaluate(HARNESS)
    page.evaluate(f"() => {{ H.secret = {SECRET!r}; H.lifetime = {LIFETIME_S}; }}")
    page.evaluate(
        "([c, t]) => { H.sub = H.subscribe(c, {transports: [t], heartbeat: 1, pollTimeout: 2}); }",
        [channel, transport],
    )
    page.wait_for_function("() => H.sub.transport !== null")
    return page


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_token_function_keeps_a_page_reading_across_expiries(new_page, channel, transport):
    """Tokens of 4 s for 12 s of traffic: refreshed in time, every message once, in order."""
    gateway = GatewayServer(memory_env(GATEWAY_SECRET=SECRET)).start()
    try:
        page = open_harness(new_page(), gateway.url, channel, transport)
        publisher = Publisher(gateway.url, channel)
        publisher.start()
        publisher.join()
        sent = publisher.sent
        page.wait_for_function("n => H.got.length >= n", arg=len(sent))
        state = page.evaluate("() => H")
        assert state["errors"] == [] and state["gaps"] == 0, state
        assert state["got"] == sent
        assert state["minted"] >= RUN_S // LIFETIME_S + 1, state["minted"]
        if transport == "websocket":  # refreshed in place: the socket never closed
            assert state["statuses"].count("open") == 1, state["statuses"]
    finally:
        gateway.close()
