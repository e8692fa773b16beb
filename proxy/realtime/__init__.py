"""Real-time transports: Socket.IO packets (`socketio`), the WebSocket relay
(`websocket`) and Socket.IO long-polling (`polling`), each rewriting CONNECT packets so the
API sees the verified principal in `auth.principal`.

May import: `proxy.observe`, `proxy.config`, `proxy.core` (it is independent of
`proxy.http` and `proxy.auth`). The principal arrives already verified: nothing here
verifies tokens itself.
"""
