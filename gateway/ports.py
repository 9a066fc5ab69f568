"""What the core asks of the server it runs under: defined here, implemented in gateway/server.

The core (hub, presence, subscriptions) never imports the server layer;
the app hands it what it needs of the server when it starts (app.py).
``Sink``, the other port, is defined beside its caller in subscription.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

# Returns once the server was asked to stop (SIGTERM); ``now``, if given, may be
# called earlier, from the signal's own handler, to start telling clients at once.
ExitSignal = Callable[[Callable[[], None] | None], Awaitable[None]]


async def never_asked_to_exit(now: Callable[[], None] | None = None) -> None:
    """The exit signal of a core run alone (a test): it never comes."""
    await asyncio.Event().wait()
