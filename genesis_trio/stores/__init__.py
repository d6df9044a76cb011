"""Session stores: where a hub keeps sessions so that they survive its restart.

A hub given a store (``TranscendentalExternalWebSocket(store=...)``) journals
every session change and acknowledges a client's message only once the
transaction holding it has committed (docs/operations.md). Stores here:

* :class:`SQLiteStore` -- one SQLite file; the default of ``genesis-trio serve``;
* :class:`RedisStore` -- a Redis server (``coredis``, imported when opened);
* :class:`ClusterStore` -- one Redis shared by several hubs, the nodes of a
  cluster (docs/cluster.md); a node that lost a session raises :class:`StoreFenced`;
* :class:`MemoryStore` -- this process's memory: survives a hub object, not the
  process (tests restart hubs with it).

Write your own by implementing :class:`SessionStore` over the plain data types
below (:class:`StoreBatch` in, :class:`StoredState` out).
"""

from ._cluster import ClusterStore as ClusterStore
from ._cluster import StoreFenced as StoreFenced
from ._memory import MemoryStore as MemoryStore
from ._protocol import Forward as Forward
from ._protocol import SessionRow as SessionRow
from ._protocol import SessionStore as SessionStore
from ._protocol import StoreBatch as StoreBatch
from ._protocol import StoredEntry as StoredEntry
from ._protocol import StoredSession as StoredSession
from ._protocol import StoredState as StoredState
from ._protocol import StoreError as StoreError
from ._redis import RedisStore as RedisStore
from ._sqlite import SQLiteStore as SQLiteStore

__all__ = [
    "ClusterStore",
    "Forward",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "SessionRow",
    "SessionStore",
    "StoreBatch",
    "StoreError",
    "StoreFenced",
    "StoredEntry",
    "StoredSession",
    "StoredState",
]
