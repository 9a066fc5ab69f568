"""The one layer that reaches into other libraries' internals: uvicorn, websockets, uvloop.

Everything here is an acceleration of a path the gateway also serves through
plain ASGI: long-polls answered inside uvicorn's HTTP protocol
(protocol.py, keepalive.py, cors.py), pre-framed bytes written straight to
a client's socket (direct.py), idle WebSockets trimmed (ws_lean.py),
connections accepted greedily (loop.py). The core (hub, subscriptions,
brokers, transports) never needs any of it: ``accelerations.py`` checks at
start what each one touches, and one that does not fit the installed
libraries stays off, with one log line naming it.
"""
