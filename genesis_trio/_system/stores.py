"""A session store from its description (``--store``): SQLite, Redis, a Redis cluster, none."""

from __future__ import annotations

import os
import pathlib
import socket

from ..stores._cluster import ClusterStore
from ..stores._protocol import SessionStore
from ..stores._redis import LEASE_SECONDS, RedisStore
from ..stores._sqlite import SQLiteStore


def default_store_path(port: int) -> pathlib.Path:
    """Where ``--store auto`` keeps sessions: a per-user data directory, one file per port."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return pathlib.Path(base) / "genesis_trio" / f"hub-{port}.sqlite3"


def store_from_spec(
    spec: str,
    *,
    port: int,
    sync: str = "normal",
    node_id: str | None = None,
    cluster: bool = False,
    lease: float = LEASE_SECONDS,
) -> SessionStore | None:
    """The store ``spec`` names (None for ``none``); ValueError saying what is wrong.

    ``sqlite:PATH``, ``auto`` (SQLite in :func:`default_store_path`),
    ``redis://HOST:PORT/DB[?prefix=NAME]`` (with ``cluster``: a
    :class:`ClusterStore`, one node of several, named ``node_id``) or ``none``.
    """
    if cluster and not spec.startswith(("redis://", "rediss://")):
        raise ValueError("a cluster shares a Redis: give --store redis://HOST:PORT/DB")
    if spec == "none":
        return None
    if spec == "auto":
        path = default_store_path(port)
        path.parent.mkdir(parents=True, exist_ok=True)
        return SQLiteStore(path, synchronous=sync.upper())
    if spec.startswith("sqlite:") and len(spec) > len("sqlite:"):
        return SQLiteStore(spec[len("sqlite:") :], synchronous=sync.upper())
    if spec.startswith(("redis://", "rediss://")):
        if not lease > 0:
            raise ValueError("the node lease must be positive")
        if cluster:
            if not node_id:
                raise ValueError("each node of a cluster needs its own --node-id")
            return ClusterStore(spec, node=node_id, lease=lease)
        # The same node restarted takes its prefix back at once: named, or host:port.
        same = node_id or (f"{socket.gethostname()}:{port}" if port else None)
        return RedisStore(spec, owner=same, lease=lease)
    raise ValueError(f"must be sqlite:PATH, redis://HOST:PORT/DB, auto or none, not {spec!r}")
