"""The sans-IO core: the wire protocol and the state machines of a link and a session.

Nothing here imports Trio or does I/O; whatever needs time takes ``now``.
The hub and the client are shells that drive these objects (docs/architecture.md).
"""
