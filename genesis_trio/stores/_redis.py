"""``RedisStore``: sessions kept in Redis (through ``coredis``, which runs on Trio).

Layout under a key prefix (default ``genesis``), MessagePack values:

* ``{prefix}:sessions`` -- a hash, session id -> its header;
* ``{prefix}:log:{sid}`` -- a sorted set per session, scored by sequence
  number, one member per retained message (inline body, or a message id);
* ``{prefix}:messages`` -- a hash, message id -> body (fanned-out messages,
  stored once).

On a Redis Cluster (``?cluster=yes``) the prefix is written ``{prefix}``, a
hash tag: every key of the prefix is in one slot, so a batch is still one
transaction on one shard.

Each batch from the hub's journal is one ``MULTI``/``EXEC`` transaction sent
in one round trip (group commit): all of it applies or none. A write is
acknowledged once Redis has applied it; whether it survives a Redis crash is
Redis's persistence setting (``appendonly yes`` with ``appendfsync always``
or ``everysec``; docs/operations.md). Every call is bounded by ``timeout``;
a Redis that is down, full (``maxmemory``) or slow raises
:class:`StoreError`, which the hub turns into retries and, past its outage
bound, closes links with 4006. The client reconnects by itself; its
retries are safe, as every write is idempotent (a header set, a range of
entries replaced, a trim).

Upstream note (coredis 6.9): a connection that fails to open leaves its two
anyio memory streams to the garbage collector (``ResourceWarning: Unclosed
<MemoryObjectSendStream>``), and logs each failed attempt with a traceback
(we budget those: ``budget_tracebacks``). Reproduce: ``async with
coredis.Redis(port=<closed>) as r: await r.ping()``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import urllib.parse
from typing import TYPE_CHECKING, Any, Final

import attrs
import msgpack
import trio

from .._runtime.logs import budget_tracebacks
from ._protocol import (
    Forward,
    SessionRow,
    StoreBatch,
    StoredEntry,
    StoredSession,
    StoredState,
    StoreError,
)

if TYPE_CHECKING:
    import coredis

    Client = coredis.Redis[bytes] | coredis.RedisCluster[bytes]

DEFAULT_PREFIX: Final = "genesis"
LAYOUT_VERSION: Final = 1
LEASE_SECONDS: Final = 10.0
"""How long a hub's claim on its key prefix lasts unless renewed (every third of it)."""
_RENEW: Final = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE: Final = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
log = logging.getLogger("genesis_trio.stores")


class RedisStore:
    """A :class:`~genesis_trio.stores.SessionStore` in a Redis server.

    ``url``: ``redis://[user:password@]host:port/db`` (``rediss://`` for
    TLS; ``?cluster=yes`` for a Redis Cluster); credentials never appear in
    :attr:`name`. ``prefix`` namespaces
    the keys, so several hubs (or tests) can share one server; the URL may
    carry it too (``?prefix=NAME``). One hub at a time uses a prefix: it
    holds a lease on it (``LEASE_SECONDS``, renewed); :meth:`open` waits
    that long for another ``owner``'s lease, then refuses. ``owner`` names
    this hub (default ``host:pid``); the same owner takes its lease back at
    once (a restarted node). ``timeout``
    bounds every call, in seconds. Call :meth:`open` and :meth:`aclose` from
    one Trio run; the client lives in a system task of its own, so the
    caller's cancel scopes never cut its connections.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 5.0,
        owner: str | None = None,
        lease: float = LEASE_SECONDS,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        if "prefix" in query:
            prefix = query.pop("prefix")[-1]
        sharded = query.pop("cluster", ["no"])[-1].lower()
        if sharded not in ("yes", "no", "true", "false", "1", "0"):
            raise ValueError(f"?cluster= is yes or no, not {sharded!r}")
        parts = parts._replace(query=urllib.parse.urlencode(query, doseq=True))
        url = urllib.parse.urlunsplit(parts)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"a Redis URL is redis://host:port/db, not {url!r}")
        if not prefix or any(c in prefix for c in "{} "):
            raise ValueError(f"a key prefix is a non-empty word without braces: {prefix!r}")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        if sharded in ("yes", "true", "1") and parts.path not in ("", "/", "/0"):
            raise ValueError("a Redis Cluster has database 0 only: redis://host:port/0?cluster=yes")
        self.url = url
        self.prefix = prefix
        self.redis_cluster = sharded in ("yes", "true", "1")
        """The server is a Redis Cluster (``?cluster=yes``): every key of the prefix carries
        the hash tag ``{prefix}``, so they share one slot (one shard)."""
        self.keyspace = f"{{{prefix}}}" if self.redis_cluster else prefix
        """What every key starts with: the prefix, hash-tagged on a Redis Cluster."""
        self.timeout = timeout
        port = f":{parts.port}" if parts.port else ""
        self.name = f"{parts.scheme}://{parts.hostname}{port}{parts.path or '/0'}#{prefix}"
        """``redis://host:port/db#prefix`` (no credentials)."""
        if self.redis_cluster:
            self.name += " (Redis Cluster)"
        self._client: Client | None = None
        self._stop = trio.Event()
        self._stopped = trio.Event()
        keys = self.keyspace
        self._sessions = f"{keys}:sessions".encode()
        self._messages = f"{keys}:messages".encode()
        self._meta = f"{keys}:meta".encode()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.lease = lease
        self._lease = f"{keys}:lease".encode()
        self._claimed = False
        self._lost: str | None = None
        """Who took the lease from us (writes fail from then on)."""

    def _log(self, sid: str) -> bytes:
        return f"{self.keyspace}:log:{sid}".encode()

    # -- the client's lifetime ----------------------------------------------------

    async def _serve_client(self, ready: trio.Event, failure: list[BaseException]) -> None:
        try:
            client = self._make_client()
            async with client:
                self._client = client
                ready.set()
                renewed = True
                while not self._stop.is_set():
                    # every third of the lease; soon again after a failure (an outage)
                    with trio.move_on_after(self.lease / 3 if renewed else self.lease / 20):
                        await self._stop.wait()
                    if self._claimed and not self._stop.is_set() and self._lost is None:
                        renewed = await self._renew()
        except Exception as exc:  # a system task must not raise
            failure.append(exc)
        finally:
            self._client = None
            ready.set()
            self._stopped.set()

    def _make_client(self) -> Client:
        import coredis  # a second to import: only when Redis is used
        from coredis.connection import TCPLocation

        timeout = self.timeout
        if not self.redis_cluster:
            redis: coredis.Redis[bytes] = coredis.Redis.from_url(
                self.url, decode_responses=False, stream_timeout=timeout, connect_timeout=timeout
            )
            return redis
        # Not RedisCluster.from_url: coredis 6.9 passes its own deprecated Node to itself
        # there (a DeprecationWarning on every client).
        parts = urllib.parse.urlsplit(self.url)
        cluster: coredis.RedisCluster[bytes] = coredis.RedisCluster(
            startup_nodes=[TCPLocation(parts.hostname or "", parts.port or 6379)],
            username=parts.username, password=parts.password,
            ssl=parts.scheme == "rediss", decode_responses=False, stream_timeout=timeout,
            connect_timeout=timeout,
        )  # fmt: skip
        return cluster

    async def _call(self, what: str, fn: Any, *args: Any) -> Any:
        if self._client is None:
            raise StoreError(f"session store {self.name} is not open")
        if self._lost is not None:
            raise self._taken()
        from coredis.exceptions import RedisError  # loaded by open()

        try:
            with trio.fail_after(self.timeout):
                return await fn(self._client, *args)
        except trio.TooSlowError:
            raise StoreError(f"Redis {what} took longer than {self.timeout} s") from None
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis {what} failed: {_describe(exc)}") from exc

    def _taken(self) -> StoreError:
        return StoreError(f"{self.name} was taken over by another hub ({self._lost})")

    # -- the lease on the prefix ----------------------------------------------------

    async def _claim(self) -> None:
        deadline = trio.current_time() + self.lease + 1.0
        while (holder := await self._call("connect", self._try_claim)) is not None:
            if trio.current_time() >= deadline:
                raise StoreError(
                    f"{self.name} is in use by another hub ({holder}): give each hub its own "
                    f"?prefix= (several hubs as one cluster is not built yet)"
                )
            await trio.sleep(0.25)
        self._claimed = True

    async def _try_claim(self, r: Client) -> str | None:
        """Take the lease (None) or say who holds it."""
        from coredis import PureToken

        me, ms = self.owner.encode(), int(self.lease * 1000)
        if await r.set(self._lease, me, condition=PureToken.NX, px=ms):
            return None
        holder = await r.get(self._lease)
        if holder == me:  # this node again (restarted): its lease
            await r.set(self._lease, me, px=ms)
            return None
        return "?" if holder is None else holder.decode(errors="replace")

    async def _renew(self) -> bool:
        """Renew the lease; False when Redis did not answer."""
        try:
            if await self._call("lease", self._renew_once):
                return True
            holder = await self._call("lease", self._try_claim)  # expired (an outage): again
        except StoreError:
            return False  # Redis is away: the writes say so
        if holder is not None:
            self._lost = holder
            log.error("%s: another hub (%s) took the key prefix over", self.name, holder)
        return True

    async def _renew_once(self, r: Client) -> bool:
        ms = str(int(self.lease * 1000))
        return bool(await r.eval(_RENEW, keys=[self._lease], args=[self.owner, ms]))

    async def _release(self, r: Client) -> None:
        await r.eval(_RELEASE, keys=[self._lease], args=[self.owner])

    # -- the store protocol -------------------------------------------------------

    async def open(self) -> StoredState:
        """Connect, take the lease on the prefix, check the layout, load every session."""
        if self._client is None:
            budget_tracebacks("coredis", burst=3)  # one per reconnect attempt in an outage
            self._stop, self._stopped = trio.Event(), trio.Event()
            ready = trio.Event()
            failure: list[BaseException] = []
            trio.lowlevel.spawn_system_task(self._serve_client, ready, failure)
            await ready.wait()
            if failure:
                raise StoreError(f"cannot open session store {self.name}: {failure[0]}")
        if not self._claimed:
            await self._claim()
        state: StoredState = await self._call("load", self._load)
        return state

    async def _check_layout(self, r: Client) -> None:
        version = await r.hget(self._meta, b"layout")
        if version is None:
            await r.hset(self._meta, {b"layout": str(LAYOUT_VERSION).encode()})
        elif int(version) != LAYOUT_VERSION:
            raise StoreError(f"{self.name} holds layout {int(version)}, not {LAYOUT_VERSION}")

    async def _load(self, r: Client) -> StoredState:
        await self._check_layout(r)
        rows = {
            sid.decode(): _unpack_row(v) for sid, v in (await r.hgetall(self._sessions)).items()
        }
        sids = list(rows)
        async with r.pipeline(transaction=False) as pipe:
            pending = [pipe.zrange(self._log(sid), 0, -1) for sid in sids]
        sessions = []
        wanted: set[int] = set()
        for sid, members in zip(sids, [await p for p in pending], strict=True):
            entries = _unpack_log(members)
            wanted.update(e.msg_id for e in entries if e.msg_id)
            sessions.append(StoredSession(rows[sid], tuple(entries)))
        messages: dict[int, bytes] = {}
        if wanted:
            ids = sorted(wanted)
            bodies = await r.hmget(self._messages, [str(i).encode() for i in ids])
            messages = {i: b for i, b in zip(ids, bodies, strict=True) if b is not None}
        return StoredState(tuple(sessions), messages)

    async def write(self, batch: StoreBatch) -> list[tuple[Forward, str]] | None:
        """Apply ``batch`` in one ``MULTI``/``EXEC`` round trip (all or nothing)."""
        if batch:
            await self._call("write", self._write, batch)
        return None

    async def _write(self, r: Client, batch: StoreBatch) -> None:
        async with r.pipeline(transaction=True) as pipe:
            if batch.deletes:
                pipe.hdel(self._sessions, [sid.encode() for sid in batch.deletes])
                pipe.delete([self._log(sid) for sid in batch.deletes])
            if batch.messages:
                pipe.hset(self._messages, {str(k).encode(): v for k, v in batch.messages.items()})
            for sid, entries in batch.rewrites.items():
                pipe.delete([self._log(sid)])
                if entries:
                    pipe.zadd(self._log(sid), _members(entries))
            for sid, entries in batch.appends.items():
                if entries:  # an entry appended again replaces the one with its number
                    key = self._log(sid)
                    pipe.zremrangebyscore(key, entries[0].seq, entries[-1].seq)
                    pipe.zadd(key, _members(entries))
            for sid, seq in batch.trims.items():
                pipe.zremrangebyscore(self._log(sid), -math.inf, seq)
            if batch.sessions:
                pipe.hset(
                    self._sessions,
                    {sid.encode(): _pack_row(row) for sid, row in batch.sessions.items()},
                )

    async def compact(self) -> int:
        """Drop message bodies no log references any more; return how many."""
        return int(await self._call("compaction", self._compact))

    async def _compact(self, r: Client) -> int:
        ids = await r.hkeys(self._messages)
        if not ids:
            return 0
        sids = list(await r.hkeys(self._sessions))
        async with r.pipeline(transaction=False) as pipe:
            pending = [pipe.zrange(self._log(sid.decode()), 0, -1) for sid in sids]
        used = {e.msg_id for p in pending for e in _unpack_log(await p) if e.msg_id}
        dead = [k for k in ids if int(k) not in used]
        if dead:
            await r.hdel(self._messages, dead)
        return len(dead)

    async def aclose(self) -> None:
        """Give the prefix back and close the client's connections; idempotent."""
        if self._client is not None:
            if self._claimed and self._lost is None:
                with contextlib.suppress(StoreError):
                    await self._call("lease release", self._release)
            self._claimed = False
            self._stop.set()
            with trio.move_on_after(self.timeout):
                await self._stopped.wait()


def _describe(exc: BaseException) -> str:
    """One short line: a failed pipeline's error quotes every queued command, bodies included."""
    text = str(exc).rsplit("caused error:", 1)[-1].strip()
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _pack_row(row: SessionRow) -> bytes:
    fields = attrs.astuple(row, recurse=False)
    return msgpack.packb([*fields[:7], list(row.topics), *fields[8:]])


def _unpack_row(data: bytes) -> SessionRow:
    f = msgpack.unpackb(data)
    return SessionRow(f[0], f[1], f[2], f[3], f[4], f[5], f[6], tuple(f[7]), f[8], f[9])


def _members(entries: list[StoredEntry]) -> dict[str | bytes, int | float]:
    # The sequence number leads the member, so two entries never collide.
    return {msgpack.packb(list(e)): e.seq for e in entries}


def _unpack_log(members: Any) -> list[StoredEntry]:
    entries = [StoredEntry(*msgpack.unpackb(m)) for m in members]
    entries.sort(key=lambda e: e.seq)
    return entries
