"""Serving: the ASGI app, Hypercorn's Trio worker, ``GenesisHybridSystem``."""
