"""A realtime gateway: one stream over WebSocket, SSE and long-polling."""
