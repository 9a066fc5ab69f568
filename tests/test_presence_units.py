"""Property tests of presence's bookkeeping: the store's table and a node's counting.

Whatever the order of arrivals, departures, nodes dying and time passing:
a user is a member exactly while some connection (or grace, or poll lease)
holds them, and every user's events alternate join, leave, join ... with
never two joins or two leaves in a row.
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.brokers.presence_memory import MemoryPresenceStore
from gateway.presence import LEAVE_GRACE_S, STORM_GRACE_S, Identity, Presence, Visit
from gateway.presence_table import ChannelTable
from gateway.presence_wire import PresenceEvent
from gateway.settings import Settings
from gateway.subscription import Subscription

NODES = ["n1", "n2", "n3"]
USERS = ["ann", "ben", "cy"]

table_ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from(NODES), st.sampled_from(USERS), st.integers(0, 3)),
        st.tuples(st.just("die"), st.sampled_from(NODES)),
    ),
    max_size=60,
)


def _check_alternation(events: list[tuple[str, str]]) -> dict[str, str]:
    last: dict[str, str] = {}
    for kind, user in events:
        assert last.get(user, "leave") != kind, (user, events)
        last[user] = kind
    return last


@given(table_ops)
def test_the_table_joins_and_leaves_each_user_once_per_presence(ops):
    """Counts set by several nodes, nodes dropped: joins/leaves follow 'any node holds the user'."""
    table = ChannelTable()
    model: dict[tuple[str, str], int] = {}
    events: list[tuple[str, str]] = []
    for op in ops:
        before = {user for (_, user), n in model.items() if n}
        if op[0] == "set":
            _, node, user, count = op
            joins, leaves = table.update(node, [(user, count, "null")])
            model[(node, user)] = count
        else:
            leaves = table.drop_nodes({op[1]})
            joins = []
            model = {key: n for key, n in model.items() if key[0] != op[1]}
        after = {user for (_, user), n in model.items() if n}
        assert {u for u, _ in joins} == after - before
        assert {u for u, _ in leaves} == before - after
        events += [("join", u) for u, _ in joins] + [("leave", u) for u, _ in leaves]
        snap = table.snapshot("c", 100)
        assert snap.users == len(after) == table.users
        assert snap.connections == sum(model.values())
    last = _check_alternation(events)
    assert {u for u, kind in last.items() if kind == "join"} == after if ops else True


node_ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.sampled_from(USERS)),
        st.tuples(st.just("close"), st.integers(0, 10)),
        st.tuples(st.just("poll"), st.sampled_from(USERS)),
        st.tuples(st.just("wait"), st.floats(0.0, 15.0)),
    ),
    max_size=40,
)


@settings(deadline=None, max_examples=200)
@given(node_ops)
def test_a_node_announces_a_user_once_per_stay(ops):
    """Tabs opened and closed, polls, time passing: one join per stay, one leave after it."""
    asyncio.run(_run_node(ops))


async def _run_node(ops: list[tuple[object, ...]]) -> None:
    poll_timeout = 2.0
    presence = Presence(MemoryPresenceStore(), Settings(poll_timeout_s=poll_timeout))
    now = [0.0]
    presence.clock = lambda: now[0]
    listener = Subscription("room", 10_000)
    listener.resuming = False
    events: list[tuple[str, str]] = []
    await presence.store.start(presence._announced)
    open_tabs: list[tuple[str, ExitStack]] = []
    held_until: dict[str, float] = {}  # the model: a user's grace or poll lease
    with presence.attend(Visit(None, listen=True), listener):
        for op in ops:
            if op[0] == "open":
                stack = ExitStack()
                stack.enter_context(presence.attend(Visit(Identity(str(op[1]))), Subscription("room", 10)))
                open_tabs.append((str(op[1]), stack))
            elif op[0] == "close" and open_tabs:
                user, stack = open_tabs.pop(int(str(op[1])) % len(open_tabs))
                stack.close()
                if not any(u == user for u, _ in open_tabs):
                    held_until[user] = max(held_until.get(user, 0), now[0] + LEAVE_GRACE_S)
            elif op[0] == "poll":
                presence.polled(Visit(Identity(str(op[1]))), ["room"])
                if not any(u == str(op[1]) for u, _ in open_tabs):
                    held_until[str(op[1])] = max(held_until.get(str(op[1]), 0), now[0] + poll_timeout + 10)
            elif op[0] == "wait":
                now[0] += float(str(op[1]))
            await presence.flush()
            for item in listener.take(10_000):
                assert isinstance(item, PresenceEvent)
                user = item.data.split('"')[3]
                events.append((item.event, user))
            expected = {u for u, _ in open_tabs} | {u for u, t in held_until.items() if now[0] < t}
            snap = await presence.snapshot("room")
            assert {m.user for m in snap.members or ()} == expected, (ops, events)
            last = _check_alternation(events)
            assert {u for u, kind in last.items() if kind == "join"} == expected
        for _, stack in open_tabs:
            stack.close()


def test_presence_events_encode_for_every_wire():
    """SSE: event: join, no id; several-channel SSE and WS carry the channel."""
    event = PresenceEvent.of("room", "join", "ann", '{"a":1}')
    assert event.sse == b'event: join\ndata: {"user":"ann","info":{"a":1}}\n\n'
    assert event.mux_sse == b'event: join\ndata: {"channel":"room","user":"ann","info":{"a":1}}\n\n'
    assert event.ws_text == '{"type":"join","channel":"room","user":"ann","info":{"a":1}}'
    assert event.id == "" and event.cursor is None


def test_a_storm_of_departures_waits_longer_before_announcing_leaves():
    """150 users dropping at once: none leaves after the usual grace (they may come back), all after the storm's."""
    asyncio.run(_run_storm())


async def _run_storm() -> None:
    presence = Presence(MemoryPresenceStore(), Settings())
    now = [0.0]
    presence.clock = lambda: now[0]
    await presence.store.start(presence._announced)
    tabs = [ExitStack() for _ in range(150)]
    for n, stack in enumerate(tabs):
        stack.enter_context(presence.attend(Visit(Identity(f"u{n}")), Subscription("room", 10)))
    await presence.flush()
    for stack in tabs:
        stack.close()
    now[0] += LEAVE_GRACE_S + 1
    await presence.flush()
    assert (await presence.snapshot("room")).users == 150
    now[0] += STORM_GRACE_S
    await presence.flush()
    assert (await presence.snapshot("room")).users == 0
