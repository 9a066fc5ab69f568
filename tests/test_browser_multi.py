"""One connection per browser: many channels, many tabs, a holder that goes away.

Real Chromium through Playwright's sync API against gateways in subprocesses
(``tests.servers``). A bare page of the gateway's origin loads
``/static/gateway.js`` and records what each subscription delivers; the
gateway's ``gateway_connections`` gauge says how many connections the browser
really holds. Every page fails its test on a console error or an uncaught
exception, but for the network errors a test provokes on purpose.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests import test_browser
from tests.conftest import gateway_env
from tests.servers import GatewayServer, RedisServer, wait_until
from tests.test_browser import WAIT_MS, PageLog, publish, screenshot

pytestmark = pytest.mark.browser

# The browser, the memory-broker gateway and the page log of test_browser.py, shared.
browser = test_browser.browser
server = test_browser.server
page_log = test_browser.page_log

# A page that records, per channel, the ids its subscription delivered.
HARNESS = """
window.H = { got: {}, gaps: {}, errors: [], subs: {} };
H.subscribe = (channels, opts) => {
  for (const c of channels) {
    H.got[c] = H.got[c] || [];
    H.subs[c] = Gateway.subscribe(c, { ...opts,
      onMessage: (m) => H.got[c].push(m.id),
      onGap: () => { H.gaps[c] = (H.gaps[c] || 0) + 1; },
      onError: (e) => H.errors.push(String(e)) });
  }
};
H.open = (n) => { const c = Gateway.connections();
  return c.length === 1 && c[0].status === "open" && c[0].channels === n; };
"""


def connections(base: str) -> dict[str, int]:
    """The gateway's ``gateway_connections`` gauge, by transport."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = re.findall(r'^gateway_connections\{transport="(\w+)"\} ([0-9.e+]+)$', text, re.M)
    return {transport: int(float(value)) for transport, value in found}


def opened(base: str, transport: str) -> int:
    """How many connections of ``transport`` the gateway has opened so far."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    pattern = rf'^gateway_connections_opened_total\{{transport="{transport}"\}} ([0-9.e+]+)$'
    found = re.search(pattern, text, re.M)
    assert found, text
    return int(float(found.group(1)))


def settled(base: str) -> dict[str, int]:
    """Until the gateway counts no WebSocket or SSE stream; then the gauge.

    An SSE stream a closed page left is noticed at its next heartbeat (1 s
    here). A poll a closed page left pending is not noticed at all: it stays
    counted until its timeout, so polls are counted against this baseline.
    """
    wait_until(lambda: not any(n for t, n in connections(base).items() if t != "poll"), timeout=10)
    return connections(base)


def harness(page: Page, base: str) -> Page:
    page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    page.goto(f"{base}/healthz")
    page.add_script_tag(url="/static/gateway.js")
    page.evaluate(HARNESS)
    return page


def subscribe(page: Page, channels: list[str], **opts: Any) -> None:
    page.evaluate("([cs, o]) => H.subscribe(cs, o)", [channels, opts])
    page.wait_for_function("n => H.open(n)", arg=len(channels))


def wait_got(page: Page, expected: dict[str, list[str]]) -> dict[str, list[str]]:
    """Until every channel delivered at least its expected count; then what each delivered."""
    counts = {channel: len(ids) for channel, ids in expected.items()}
    try:
        page.wait_for_function(
            "want => Object.entries(want).every(([c, n]) => (H.got[c] || []).length >= n)",
            arg=counts,
        )
    except PlaywrightTimeout:
        state = page.evaluate("() => [H.got, H.gaps, H.errors, Gateway.connections()]")
        raise AssertionError(
            f"expected {expected}; got, gaps, errors, connections: {state}"
        ) from None
    return page.evaluate("cs => Object.fromEntries(cs.map(c => [c, H.got[c]]))", list(expected))  # type: ignore[no-any-return]


def names(channel: str, count: int) -> list[str]:
    return [f"{channel}.{n}" for n in range(count)]


@pytest.fixture
def context(browser: Browser, page_log: PageLog) -> Iterator[BrowserContext]:
    """One browser context: its pages are tabs of one origin, sharing a worker and locks."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(WAIT_MS)
    ctx.on("page", lambda page: watch(page, page_log))
    yield ctx
    ctx.close()
    assert page_log.errors == []


def watch(page: Page, log: PageLog) -> None:
    page.on("console", log.console)
    page.on("pageerror", log.page_error)


class Publisher(threading.Thread):
    """Publishes to the channels in turn, every few ms, until stopped; keeps the ids."""

    def __init__(self, base: str, channels: list[str]) -> None:
        super().__init__(daemon=True)
        self.base, self.channels = base, channels
        self.sent: dict[str, list[str]] = {c: [] for c in channels}
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while not self.stop.is_set():
                channel = self.channels[n % len(self.channels)]
                response = client.post(f"{self.base}/publish/{channel}", content=f"m{n}".encode())
                assert response.status_code == 201, response.text
                self.sent[channel].append(response.json()["id"])
                n += 1
                time.sleep(0.02)

    def finish(self) -> dict[str, list[str]]:
        self.stop.set()
        self.join()
        return self.sent


@pytest.mark.parametrize("count", [8, 32])
@pytest.mark.parametrize("transport", ["sse", "poll"])
def test_a_page_with_many_channels_holds_one_connection_and_publishes_at_once(
    context, server, channel, transport, count
):
    """8 or 32 channels over one SSE stream (one pending poll); every message once, in order."""
    before = settled(server.url)
    page = harness(context.new_page(), server.url)
    channels = names(channel, count)
    subscribe(page, channels, transports=[transport])
    held = connections(server.url)
    assert held[transport] - before[transport] <= 1, held
    if transport == "sse":
        assert held["sse"] == 1, held
    sent: dict[str, list[str]] = {c: [] for c in channels}
    for n in range(3):
        for c in channels:
            sent[c].append(publish(server.url, c, f"{c} #{n}"))
    # The page's own publish does not queue behind its subscriptions.
    took = page.evaluate(
        """async (c) => { const t = performance.now(); await Gateway.publish(c, "mine");
            return performance.now() - t; }""",
        channels[0],
    )
    assert took < 2000, f"the page's own publish took {took:.0f} ms"
    got = wait_got(
        page, {c: [*ids, "mine"] if c == channels[0] else ids for c, ids in sent.items()}
    )
    for c in channels:
        expected = sent[c]
        assert got[c][: len(expected)] == expected, c
        assert len(got[c]) == len(set(got[c])) == len(expected) + (c == channels[0])
    assert connections(server.url)[transport] - before[transport] <= 1
    assert page.evaluate("() => H.errors") == []


def test_ten_tabs_share_one_sse_stream(context, server, channel):
    """Ten tabs of one origin on SSE: all load and receive; the gateway sees at most 2 streams."""
    channels = names(channel, 3)
    settled(server.url)
    tabs = []
    for _ in range(10):
        tab = harness(context.new_page(), server.url)
        subscribe(tab, channels, transports=["sse"])
        tabs.append(tab)
    assert connections(server.url)["sse"] <= 2
    sent = {c: [publish(server.url, c, f"to {c} #{n}") for n in range(3)] for c in channels}
    for tab in tabs:
        got = wait_got(tab, sent)
        assert got == sent
        assert tab.evaluate("() => Gateway.connections()[0].holder") == "worker"
    assert connections(server.url)["sse"] <= 2


@pytest.mark.slow
@pytest.mark.parametrize("share", ["leader", "worker"])
@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_the_holder_goes_away_mid_stream_and_the_others_miss_nothing(
    context, server, channel, share, transport
):
    """The leading tab closes (leader), or the shared worker ends as if it crashed (worker).

    Messages are published throughout; every other tab shows each id once, in order.
    """
    channels = names(channel, 2)
    settled(server.url)
    tabs = [harness(context.new_page(), server.url) for _ in range(3)]
    for tab in tabs:
        subscribe(tab, channels, transports=[transport], share=share)
    holders = [tab.evaluate("() => Gateway.connections()[0].holder") for tab in tabs]
    if share == "leader":
        assert holders == ["this tab", "other tab", "other tab"]
    else:
        assert holders == ["worker"] * 3
    first = opened(server.url, transport)
    publisher = Publisher(server.url, channels)
    publisher.start()
    try:
        wait_until(lambda: all(len(ids) >= 5 for ids in publisher.sent.values()), timeout=10)
        if share == "leader":
            tabs.pop(0).close()  # the leader: the next tab in the lock's queue takes over
            tabs[0].wait_for_function("() => Gateway.connections()[0]?.holder === 'this tab'")
        else:
            tabs.pop(0).close()  # a tab going changes nothing for the others
            tabs[0].evaluate("() => Gateway._endSharedWorker()")
            time.sleep(0.5)
        for tab in tabs:
            tab.wait_for_function("n => H.open(n)", arg=len(channels))
        wait_until(lambda: all(len(ids) >= 15 for ids in publisher.sent.values()), timeout=10)
    finally:
        sent = publisher.finish()
    assert opened(server.url, transport) > first  # the new holder's connection
    for tab in tabs:
        got = wait_got(tab, sent)
        assert {c: got[c][: len(sent[c])] for c in channels} == sent
        assert all(len(got[c]) == len(sent[c]) for c in channels)
        assert tab.evaluate("() => H.gaps") == {}
    # The ended worker closes its sockets before it goes (with ``close()`` alone
    # Chromium kept one open for over 20 s, in 1 of 10 module runs); the
    # gateway counts a socket until it sees it close.
    wait_until(lambda: connections(server.url).get(transport, 0) <= 1, timeout=20)


@pytest.mark.slow
def test_a_native_eventsource_resumes_every_channel_after_a_gateway_restart(
    context, page_log, redis_server: RedisServer, channel
):
    """EventSource on /sse?channel=a&channel=b: Last-Event-ID resumes both after a restart."""
    page_log.noise_allowed = True  # the reconnects while the gateway is down
    env = gateway_env("redis", redis_server)
    other = GatewayServer(env).start()  # publishes while the page's gateway is down
    node = GatewayServer(env).start()
    try:
        a, b = names(channel, 2)
        page = harness(context.new_page(), node.url)
        page.evaluate(
            """([a, b]) => {
                window.seen = []; window.opened = 0;
                const es = new EventSource(`/sse?channel=${a}&channel=${b}`);
                es.addEventListener("subscribed", () => { window.opened += 1; });
                es.onmessage = (ev) => { const m = JSON.parse(ev.data); seen.push([m.channel, m.id]); };
            }""",
            [a, b],
        )
        page.wait_for_function("() => window.opened === 1")
        sent = [(c, publish(node.url, c, f"{c} before")) for c in (a, b, a)]
        page.wait_for_function("n => seen.length >= n", arg=len(sent))
        node.terminate()  # graceful: `retry: 1000`, then the end of the stream
        sent += [(c, publish(other.url, c, f"{c} while down")) for c in (b, a, b)]
        node.start()
        page.wait_for_function("() => window.opened === 2")
        sent += [(c, publish(node.url, c, f"{c} after")) for c in (a, b)]
        page.wait_for_function("n => seen.length >= n", arg=len(sent))
        time.sleep(0.3)  # nothing more may come
        seen = [tuple(pair) for pair in page.evaluate("() => seen")]
        for c in (a, b):
            assert [i for ch, i in seen if ch == c] == [i for ch, i in sent if ch == c]
    finally:
        node.close()
        other.close()


@pytest.mark.parametrize("transport", ["sse", "poll"])
def test_the_demo_chats_in_several_rooms_over_one_connection(context, server, channel, transport):
    """The demo's room sidebar: every room a channel, all on one connection, unread counts."""
    prefix = f"chat:{channel.split(':')[0]}"
    rooms = [f"{prefix}-lobby", f"{prefix}-dev", f"{prefix}-random", f"{prefix}-support"]
    settled(server.url)
    page = context.new_page()
    query = httpx.QueryParams(rooms=",".join(rooms), transport=transport, name="ada")
    page.goto(f"{server.url}/?{query}")
    page.wait_for_function("n => document.body.dataset.rooms === String(n)", arg=len(rooms))
    page.wait_for_function("() => document.body.dataset.status === 'open'")
    assert connections(server.url).get(transport, 0) <= 1
    for n, room in enumerate(rooms[1:], start=1):
        for k in range(n):
            publish(server.url, room, f'{{"name": "grace", "text": "news #{k} in {room}"}}')
    page.fill("#text", "hello lobby")
    page.press("#text", "Enter")
    page.wait_for_selector("#messages li.msg")
    page.wait_for_function(
        "() => document.querySelector('#rooms li:nth-child(4) .unread').textContent === '3'"
    )
    assert page.text_content("#fact-connections") == "1"
    page.click("#rooms li:nth-child(2)")
    page.wait_for_function("() => document.querySelectorAll('#messages li.msg').length === 1")
    page.click("#rooms li:nth-child(4)")
    page.wait_for_function("() => document.querySelectorAll('#messages li.msg').length === 3")
    assert connections(server.url).get(transport, 0) <= 1
    page.wait_for_function(
        "t => document.querySelector('#fact-server').textContent.includes(`${t} 1`)", arg=transport
    )
    if transport == "sse":
        page.set_viewport_size({"width": 1280, "height": 960})
        page.evaluate("() => window.scrollTo(0, 0)")
        screenshot(page, "demo-rooms.png")


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_a_channel_left_and_joined_again_at_once_starts_where_the_new_one_asked(
    context, server, channel, transport
):
    """Closing a subscription and subscribing its channel again in the same tick, while
    another channel keeps the connection open: the new one starts at its own cursor.

    The holder dropped the channel and took it again before the connection was told, so
    the connection went on from where the old subscription was, and the new one, told it
    started where it asked, silently missed what lay between. A shared worker that a tab
    saw go away when it had not (the tab then attached again, as the same client) did
    exactly this: one message lost in ~1 of 150 runs of the holder-goes-away test.
    """
    other, chan = names(channel, 2)
    page = harness(context.new_page(), server.url)
    subscribe(page, [other, chan], transports=[transport], share=False)
    ids = [publish(server.url, chan, f"m{n}") for n in range(5)]
    wait_got(page, {chan: ids})
    page.evaluate(
        """([c, since, transports]) => {
            H.subs[c].close();
            H.got[c] = [];
            H.subscribe([c], { since, transports, share: false });
        }""",
        [chan, ids[1], [transport]],
    )
    later = [publish(server.url, chan, "after")]
    got = wait_got(page, {chan: ids[2:] + later})
    time.sleep(0.3)  # nothing more may come
    assert page.evaluate("c => H.got[c]", chan) == got[chan] == ids[2:] + later
    assert page.evaluate("() => [H.gaps, H.errors]") == [{}, []]


@pytest.mark.parametrize("share", ["auto", "leader", False])
def test_a_channel_joined_mid_stream_reads_what_it_asked_for_once(context, server, channel, share):
    """A second and third subscription of a carried channel (last=N, since=<id>) catch up once."""
    page = harness(context.new_page(), server.url)
    ids = [publish(server.url, channel, f"old {n}") for n in range(5)]
    page.evaluate(
        """([c, share]) => { H.more = (name, opts) => { H.got[name] = [];
              Gateway.subscribe(c, { ...opts, share, onMessage: (m) => H.got[name].push(m.id),
                onError: (e) => H.errors.push(String(e)) }); };
            H.more("first", { last: 3 }); }""",
        [channel, share],
    )
    page.wait_for_function("() => H.got.first.length === 3")
    ids += [publish(server.url, channel, f"more {n}") for n in range(2)]
    page.wait_for_function("() => H.got.first.length === 5")
    page.evaluate("since => { H.more('second', { last: 4 }); H.more('third', { since }); }", ids[1])
    ids += [publish(server.url, channel, f"live {n}") for n in range(2)]
    got = wait_got(page, {"first": ids[2:], "second": ids[3:], "third": ids[2:]})
    assert got == {"first": ids[2:], "second": ids[3:], "third": ids[2:]}
    assert page.evaluate("() => Gateway.connections().length") == 1
    assert page.evaluate("() => H.errors") == []


@pytest.mark.parametrize("share", ["auto", False])
def test_last_n_joining_a_carried_channel_counts_back_from_where_it_joined(
    context, server, channel, share
):
    """``last: N`` on a carried channel reads the N messages up to the wire's position W.

    Its catch-up read goes out after it joined; messages published in
    between (held here until two were) are after W and come live. Asking
    the gateway for "the last N" at read time counted them too, and the
    subscription started two messages late (the flake of the test above).
    """
    page = harness(context.new_page(), server.url)
    ids = [publish(server.url, channel, f"old {n}") for n in range(6)]
    page.evaluate(
        """([c, share]) => { H.more = (name, opts) => { H.got[name] = [];
              Gateway.subscribe(c, { ...opts, share, onMessage: (m) => H.got[name].push(m.id),
                onError: (e) => H.errors.push(String(e)) }); };
            H.more("first", {}); }""",
        [channel, share],
    )
    page.wait_for_function("() => H.open(1)")
    ids.append(publish(server.url, channel, "seen live"))
    page.wait_for_function("() => H.got.first.length === 1")
    held: list[str] = []

    def late(route: Any) -> None:  # the catch-up read, after two more messages
        if "last=" in route.request.url and not held:
            held.extend(publish(server.url, channel, f"live {n}") for n in range(2))
        route.continue_()

    page.route("**/poll/**", late)
    page.evaluate("() => H.more('second', { last: 3 })")
    got = wait_got(page, {"first": [*ids[6:], "x", "x"], "second": [*ids[4:], "x", "x"]})
    assert held, "the catch-up read was not seen"
    assert got == {"first": ids[6:] + held, "second": ids[4:] + held}
    assert page.evaluate("() => H.errors") == []
