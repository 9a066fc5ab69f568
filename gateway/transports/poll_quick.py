"""Long-polls served with no task, from the gateway's HTTP protocol (protocol.py).

A poll that the hub can serve at once is answered from memory or left as
waiters (polls.py) inside uvicorn's parser callback; ``False`` from
``quick_poll`` or ``quick_poll_multi`` means nothing happened, and the
request goes through ASGI as usual (a refusal, a channel not joined, a
cursor older than memory, ``last=N``, a wait of 0). The answers are the
same bytes the ASGI routes give (longpoll.py, poll_multi.py).

Several channels on one poll: one waiter per channel, all for the one
request (``MultiPoll``); the first that ends (a channel's messages, the
timeout, shutdown) answers, and the others are released at once.
"""

from __future__ import annotations

from typing import Protocol

from starlette.requests import HTTPConnection
from starlette.types import Scope

from gateway.errors import GatewayError
from gateway.message import Cursor, Item
from gateway.polls import ANSWERED, CLIENT_GONE, Client, Ended, Waiter
from gateway.state import Gateway
from gateway.transports.channels import ChannelSpec, label
from gateway.transports.longpoll import (
    PollAnswer,
    admit,
    encode,
    known_answer,
    watch_waiter,
)
from gateway.transports.poll_multi import Runs, admit_multi, answer_body


class Ending(Ended, Protocol):
    """A waiting poll, as its request holds it: a waiter, or a ``MultiPoll``."""

    def cancel(self) -> None:
        """The client left: release it, write nothing."""


class QuickRequest(Client, Protocol):
    """The request, as the protocol holds it until the poll ends (protocol.py)."""

    def waiter(self, start: Cursor, limit: int) -> Waiter:
        """Its single channel's waiter, its client itself (the protocol's ``Poll`` is one)."""

    def waits(self, gateway: Gateway, waiter: Ending, label: str) -> None:
        """Parked as ``waiter``: counted in (and out when told it ``settled``)."""


def quick_poll(
    gateway: Gateway,
    channel: str,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    request: QuickRequest,
) -> bool:
    """``GET /poll/{channel}`` at once: from memory, or as a waiter the hub answers."""
    try:
        visit, ask = admit(gateway, channel, query, headers)
    except GatewayError:
        return False
    known = known_answer(gateway.hub, ask)
    if known is None:
        return False
    timeout, limit = ask[3], ask[4]
    if isinstance(known, PollAnswer):
        request.write(known)
        gateway.passed("poll", channel, ANSWERED)  # counted in and out, as through ASGI
    elif timeout <= 0:
        return False
    else:
        waiter = request.waiter(known, limit)
        if not gateway.hub.park(channel, waiter, timeout, encode):
            waiter.client = None  # (the protocol's poll is its own client: no cycle left behind)
            return False
        watch_waiter(gateway, ask[5], waiter, [channel])  # 401 at its token's exp, 403 revoked
        request.waits(gateway, waiter, channel)
    if visit.identity is not None:
        gateway.presence.polled(visit, [channel])
    return True


def quick_poll_multi(gateway: Gateway, scope: Scope, request: QuickRequest) -> bool:
    """``GET /poll?channel=…`` at once, when every channel is joined and known to the hub."""
    try:
        specs, visit, timeout, limit = admit_multi(gateway, HTTPConnection(scope))
    except GatewayError:
        return False
    hub = gateway.hub
    starts: list[Cursor] = []
    runs: Runs = []
    for spec in specs:
        if spec.last is not None:
            return False
        start = spec.cursor if spec.cursor is not None else hub.newest(spec.channel)
        waiting = hub.waiting(spec.channel, start, limit) if start is not None else None
        if start is None or waiting is None:
            return False
        starts.append(start)  # (a cursor ahead of the live link: ``Hub.park`` refuses it)
        if waiting and limit > 0:
            runs.append((spec.channel, list(waiting[:limit])))
            limit -= len(runs[-1][1])
    channels = [spec.channel for spec in specs]
    if runs:
        request.write(PollAnswer(answer_body(specs, starts, runs)))
        gateway.passed("poll", label(channels), ANSWERED)
    elif timeout <= 0:
        return False
    else:
        multi = MultiPoll(specs, starts, request)
        for spec, start in zip(specs, starts, strict=True):
            member = Waiter(start, limit, multi, raw=True)
            multi.members.append(member)
            if not hub.park(spec.channel, member, timeout, encode):
                multi.settled(member, None)  # releases those parked already
                return False
        rights = gateway.guard.rights(HTTPConnection(scope))
        watch_waiter(gateway, rights, multi.members[0], channels)  # its first ends them all
        request.waits(gateway, multi, label(channels))
    gateway.presence.polled(visit, channels)
    return True


class MultiPoll:
    """A several-channel poll with no task: the client of its channels' waiters (``raw``)."""

    __slots__ = ("done", "members", "reason", "request", "specs", "starts")

    def __init__(self, specs: list[ChannelSpec], starts: list[Cursor], request: QuickRequest):
        self.specs = specs
        self.starts = starts
        self.request = request
        self.members: list[Waiter] = []
        self.done = False
        self.reason = CLIENT_GONE

    def write(self, answer: object) -> bool:
        return False  # written once, in ``settled``, when the first channel's waiter ends

    def settled(self, waiter: Ended, answer: object | None) -> None:
        if self.done:
            return
        assert isinstance(waiter, Waiter)
        self.done = True
        self.reason = waiter.reason
        for member in self.members:
            member.cancel()  # the other channels' waiters (this one is done already)
        if isinstance(answer, PollAnswer):  # a refusal: its token expired or was revoked
            self.request.write(answer)
        elif answer is not None:
            assert waiter.polls is not None and isinstance(answer, list)
            items: list[Item] = answer
            runs = [(waiter.polls.name, items)] if items else []
            body = answer_body(self.specs, self.starts, runs)
            self.request.write(PollAnswer(body))
        self.request.settled(self, answer)

    def cancel(self) -> None:
        """The client left: release every channel's waiter."""
        if self.members:
            self.members[0].cancel()
