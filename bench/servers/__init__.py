"""Baseline servers for the benchmarks, each a script run as its own process.

Every server listens on ``127.0.0.1:PORT`` and serves two WebSocket paths:
``/ws`` echoes every message back to its sender, ``/bcast`` sends every
message it receives to all *other* connections on ``/bcast`` (the fan-out
workload's publisher is the only one that sends there).
"""
