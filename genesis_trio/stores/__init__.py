"""Session stores: where a hub keeps sessions so that they survive its restart.

A hub given a store (``TranscendentalExternalWebSocket(store=...)``) journals
every session change and acknowledges a client's message only once the
transaction holding it has committed (docs/operations.md). Stores here:

* :class:`SQLiteStore` -- one SQLite file; the default of ``genesis-trio serve``;
* :class:`RedisStore` -- a Redis server (``coredis``, imported when opened);
* :class:`MemoryStore` -- this process's memory: survives a hub object, not the
  process (tests restart hubs with it).

Write your own by implementing :class:`SessionStore` over the plain data types
below (:class:`StoreBatch` in, :class:`StoredState` out).
"""

from ._memory import MemoryStore as MemoryStore
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
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "SessionRow",
    "SessionStore",
    "StoreBatch",
    "StoreError",
    "StoredEntry",
    "StoredSession",
    "StoredState",
]
