"""The hub: sessions, routing, links, the journal, and its ASGI endpoint."""
