"""``ClusterStore``: one Redis shared by several hubs (nodes) acting as one.

Layout, under the key prefix, in addition to :class:`RedisStore`'s
sessions, logs and messages:

* ``{prefix}:node:{node}`` -- the node's incarnation token ``node/random``,
  with a lease (``lease`` seconds, renewed every third of it): the node is
  alive while it holds it;
* ``{prefix}:owner`` -- a hash, component id -> the token of the node
  holding its session (a component's session is live on one node at a
  time: every write is fenced on it);
* ``{prefix}:ids`` -- a hash, component id -> session id;
* ``{prefix}:tsubs:{len}:{token}:{topic}`` -- the components a node (its
  token; ``-``: nobody) holds subscribed to a topic; ``{prefix}:stok:{topic}``
  -- the tokens with any;
* ``{prefix}:ninbox:{token}`` -- a node's inbox: messages from other nodes
  for its components, one entry per message and node (a publish reaches each
  node with subscribers once), appended in the sender's own commit (so a
  message is acknowledged only once it is there) and delivered by the node
  in its own commit (exactly once); ``{prefix}:nihead:{token}`` its absolute
  head, ``{prefix}:ngaps:{token}`` the topics it had to refuse (full);
* ``{prefix}:inbox:{component}`` -- a component's own inbox: what it
  received while held by nobody, what its node could not deliver at once
  (a slow reader), and what a node that let it go (or died) had not
  delivered; moved into its log by its owner, in order, exactly once;
* ``{prefix}:dirty:{node}`` -- the components of a node with inbox entries;
  ``{prefix}:wake:{node}`` -- a list the node waits on (``d``: drain;
  ``r<component>``: another node asks it to let go of a component);
* ``{prefix}:idblock`` -- a counter: each incarnation's message ids start
  at its block (``block << 32``), so ids never collide across nodes.

Every write is one Lua script (atomic): the fence check, then the batch,
then the forwards to other nodes. On a Redis Cluster (``?cluster=yes``) the
keys share the prefix's hash tag, so every script runs on one shard.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, Final

import attrs
import msgpack
import trio

from . import _cluster_lua as lua
from ._protocol import Forward, StoreBatch, StoredSession, StoredState, StoreError
from ._redis import LEASE_SECONDS, RedisStore, _pack_row, _unpack_log, _unpack_row, log

if TYPE_CHECKING:
    from ._redis import Client

INBOX_CAPACITY: Final = 10_000
"""Entries a component's inbox holds at most; a message beyond it is refused
(``full``), a publish leaves a gap (the session is marked truncated)."""
NODE_INBOX_CAPACITY: Final = 100_000
"""Entries a node's inbox holds at most (the same rules beyond it)."""
CLUSTER_LAYOUT: Final = 2
"""The cluster's own keys (``meta`` field ``cluster``): 2 = fan-out once per node."""


class StoreFenced(StoreError):
    """Another node holds a component this node wrote to: this node must stop."""


@attrs.frozen
class Inbox:
    """The head of a component's inbox: its absolute position, a gap, the bodies."""

    head: int
    """The absolute position of ``bodies[0]`` (entries ever moved out before it)."""
    gap: str | None
    """Set when a message could not be put in it (it was full): the session is truncated."""
    bodies: list[bytes]
    asked: int = 0
    """How many bodies were asked for (fewer came: the inbox was emptied)."""
    component_id: str = ""


@attrs.frozen
class NodeInbox:
    """The head of this node's own inbox: its position, its gaps, its entries."""

    head: int
    """The absolute position of ``entries[0]``."""
    gaps: dict[str, str]
    """Topics a publish could not be put here for (full), each with its gap's mark."""
    entries: list[tuple[str, str, bytes]]
    """``(kind, name, body)``: ``d`` for the component ``name``, ``t`` for the topic."""
    asked: int = 0


@attrs.frozen
class Claim:
    """What :meth:`ClusterStore.claim` found."""

    kind: str
    """``ok`` (taken, with its session), ``new`` (taken, no session yet),
    ``busy`` (held by the live node ``holder``) or ``none`` (no such session)."""
    component_id: str | None = None
    holder: str | None = None
    state: StoredState | None = None
    upto: int = 0
    """The end of this node's inbox when claimed: what it holds before was sent before."""


class ClusterStore(RedisStore):
    """A :class:`RedisStore` shared by several nodes (see the module docstring).

    ``node``: this node's id, unique in the cluster (``--node-id``). The
    node's sessions are not loaded at :meth:`open`: the hub claims each when
    its client arrives (:meth:`claim`), from whichever node held it.
    """

    clustered = True
    shares_bodies = False
    """A message fanned out is stored inline in each log: no shared bodies, so no
    compaction racing other nodes' writes."""

    def __init__(
        self,
        url: str,
        *,
        node: str,
        prefix: str = "genesis",
        timeout: float = 5.0,
        lease: float = LEASE_SECONDS,
        inbox_capacity: int = INBOX_CAPACITY,
        node_inbox_capacity: int = NODE_INBOX_CAPACITY,
    ) -> None:
        super().__init__(url, prefix=prefix, timeout=timeout, owner=node, lease=lease)
        if not node or "/" in node or any(c.isspace() for c in node):
            raise ValueError(f"a node id is a word without '/' or spaces: {node!r}")
        self.node = node
        self.token = f"{node}/{secrets.token_hex(6)}"
        """This incarnation (a restarted node is a new one: its old claims lapse)."""
        self.inbox_capacity = inbox_capacity
        self.node_inbox_capacity = node_inbox_capacity
        self._scripts: dict[str, Any] = {}

    def _argv(self, *more: str | bytes | int) -> list[str | bytes | int]:
        ttl = int(self.lease * 10_000)
        caps = (self.inbox_capacity, self.node_inbox_capacity)
        return [self.keyspace, self.token, self.node, ttl, *caps, *more]

    async def _run(self, r: Client, name: str, *more: str | bytes | int) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = r.register_script(getattr(lua, name))
        return await script(keys=[self._meta], args=self._argv(*more))  # routed by its slot

    def _taken(self) -> StoreError:
        return StoreFenced(f"{self.name}: this node no longer holds {self._lost}")

    async def _script(self, what: str, name: str, *more: str | bytes | int) -> Any:
        try:
            return await self._call(what, self._run, name, *more)
        except StoreError as exc:
            if "FENCED" in str(exc):
                self._lost = str(exc).rsplit("FENCED", 1)[-1].strip()
                raise StoreFenced(f"{self.name}: this node no longer holds {self._lost}") from None
            raise

    # -- joining and leaving ------------------------------------------------------------

    async def _claim(self) -> None:
        """Join: register this incarnation once no live process holds the node id.

        A node that crashed holds it until its lease lapses: its restart
        waits that long (at most ``lease``). One still running keeps it: a
        second process started with its id refuses to start, and the running
        one is not disturbed.
        """
        deadline = trio.current_time() + self.lease + 1.0
        while (holder := await self._call("connect", self._register)) is not None:
            if trio.current_time() >= deadline:
                raise StoreError(
                    f"node id {self.node!r} is in use by a running node ({holder}) on "
                    f"{self.name}: give each node its own --node-id"
                )
            await trio.sleep(0.25)
        self._claimed = True

    async def _register(self, r: Client) -> str | None:
        from coredis import PureToken

        key = f"{self.keyspace}:node:{self.node}".encode()
        ms = int(self.lease * 1000)
        if await r.set(key, self.token.encode(), condition=PureToken.NX, px=ms):
            return None
        holder = await r.get(key)
        return "?" if holder is None else holder.decode(errors="replace")

    async def _renew(self) -> bool:
        try:
            await self._script("lease", "RENEW", int(self.lease * 1000))
        except StoreFenced as exc:  # _lost is set: every later call fails: the hub stops
            log.error("%s", exc)
        except StoreError:
            return False  # Redis is away: the writes say so
        return True

    async def _release(self, r: Client) -> None:
        """Leave: drop the node's key if it is still this incarnation's (claims lapse at once)."""
        key = f"{self.keyspace}:node:{self.node}".encode()
        if await r.get(key) == self.token.encode():
            await r.delete([key])

    async def _load(self, r: Client) -> StoredState:
        await self._check_layout(r)
        layout = await r.hget(self._meta, b"cluster")
        if layout is None:
            await r.hset(self._meta, {b"cluster": str(CLUSTER_LAYOUT).encode()})
        elif int(layout) != CLUSTER_LAYOUT:
            want = CLUSTER_LAYOUT
            raise StoreError(f"{self.name} holds cluster layout {int(layout)}, not {want}")
        block = int(await r.incr(f"{self.keyspace}:idblock".encode()))
        return StoredState((), {}, first_id=block << 32)

    # -- claiming components ------------------------------------------------------------

    async def claim(self, component_id: str | None, sid: str | None) -> Claim:
        """Take the session of ``component_id`` (or of ``sid`` when no id is given)."""
        reply = await self._script("claim", "CLAIM", component_id or "", sid or "")
        kind = reply[0].decode()
        if kind == "none":
            return Claim(kind)
        cid = reply[1].decode()
        if kind == "busy":
            return Claim(kind, cid, holder=reply[2].decode())
        upto = int(reply[2])
        if kind == "new":
            return Claim(kind, cid, upto=upto)
        row = _unpack_row(reply[3])
        entries = tuple(_unpack_log(reply[4]))
        wanted = sorted({e.msg_id for e in entries if e.msg_id})
        messages: dict[int, bytes] = {}
        if wanted:
            bodies = await self._call("claim", self._bodies, wanted)
            messages = {i: b for i, b in zip(wanted, bodies, strict=True) if b is not None}
        state = StoredState((StoredSession(row, entries),), messages)
        return Claim(kind, cid, state=state, upto=upto)

    async def _bodies(self, r: Client, ids: list[int]) -> list[bytes | None]:
        return list(await r.hmget(self._messages, [str(i).encode() for i in ids]))

    async def orphans(self, cursor: int) -> tuple[int, list[str]]:
        """One step of a scan for components held by dead nodes: (next cursor, ids)."""
        reply = await self._script("orphan scan", "ORPHANS", cursor)
        return int(reply[0]), [c.decode() for c in reply[1]]

    async def release(self, component_id: str) -> None:
        """Let go of a component whose last change is committed."""
        await self._script("release", "RELEASE", component_id)

    async def ask_release(self, holder: str, component_id: str) -> None:
        """Ask the node holding ``component_id`` (token ``holder``) to let go of it."""
        node = holder.rsplit("/", 1)[0]
        key = f"{self.keyspace}:wake:{node}".encode()
        await self._call("handover", self._ask, key, b"r" + component_id.encode())

    async def _ask(self, r: Client, key: bytes, item: bytes) -> None:
        async with r.pipeline(transaction=False) as pipe:
            pipe.rpush(key, [item])
            pipe.ltrim(key, -256, -1)  # a node that never reads it holds a bounded list
            pipe.pexpire(key, int(self.lease * 10_000))

    # -- this node's inboxes ------------------------------------------------------------------

    async def wait_wake(self, seconds: float) -> list[str]:
        """Wait (up to ``seconds``) for work: ``d`` (drain) or ``r<component>`` (let go)."""
        return list(await self._call("wake", self._wait_wake, seconds))

    async def _wait_wake(self, r: Client, seconds: float) -> list[str]:
        key = f"{self.keyspace}:wake:{self.node}".encode()
        first = await r.blpop([key], timeout=seconds)
        if not first:
            return []
        rest = await r.lpop(key, 64) or []
        return [v.decode() for v in [first[1], *rest]]

    async def read(
        self, component_ids: list[str], count: int, node_count: int
    ) -> tuple[list[Inbox], NodeInbox | None]:
        """The heads of this node's inboxes, as of one moment.

        Each component's in ``component_ids`` (up to ``count`` bodies each);
        this node's own (``node_count`` entries) with the components' marked
        dirty, unless ``node_count`` is 0 (then None).
        """
        reply = await self._script("inbox", "READ", count, node_count, *component_ids)
        inboxes = [
            Inbox(int(head), gap.decode() or None, list(bodies), count, cid.decode())
            for cid, head, gap, bodies in reply[0]
        ]
        if not node_count:
            return inboxes, None
        head, gaps, entries = reply[1]
        pairs = iter(gaps)
        return inboxes, NodeInbox(
            int(head),
            {t.decode(): g.decode() for t, g in zip(pairs, pairs, strict=True)},
            [_entry(e) for e in entries],
            node_count,
        )

    # -- statistics ---------------------------------------------------------------------

    async def publish_stats(self, snapshot: bytes) -> None:
        """Publish this node's statistics (kept three leases unless published again)."""
        key = f"{self.keyspace}:stats:{self.node}".encode()
        ms = int(self.lease * 3000)
        await self._call("statistics", lambda r: r.set(key, snapshot, px=ms))

    async def node_stats(self) -> dict[str, bytes]:
        """The statistics every live node published, by node id."""
        return dict(await self._call("statistics", self._node_stats))

    async def _node_stats(self, r: Client) -> dict[str, bytes]:
        head = f"{self.keyspace}:stats:"
        keys = [k async for k in r.scan_iter(match=f"{head}*".encode(), count=100)]
        values = await r.mget(keys) if keys else []
        return {
            k.decode()[len(head) :]: v for k, v in zip(keys, values, strict=True) if v is not None
        }

    async def compact(self) -> int:
        """Nothing to compact: a cluster stores every body inline (:attr:`shares_bodies`)."""
        return 0

    # -- writing ------------------------------------------------------------------------

    async def write(self, batch: StoreBatch) -> list[tuple[Forward, str]] | None:
        """Apply ``batch`` in one fenced script; return the forwards refused and why."""
        if not batch:
            return None
        packed = _pack_batch(batch)
        reply = await self._script("write", "WRITE", packed)
        return [(batch.forwards[int(i) - 1], why.decode()) for i, why in reply or ()]


def _entry(raw: bytes) -> tuple[str, str, bytes]:
    """A node inbox entry: ``kind`` (one letter), ``len:name``, then the body."""
    colon = raw.index(b":", 1)
    end = colon + 1 + int(raw[1:colon])
    return raw[:1].decode(), raw[colon + 1 : end].decode(), raw[end:]


def _flat(entries: Any) -> list[Any]:
    out: list[Any] = []
    for e in entries:
        out += [e.seq, msgpack.packb(list(e))]
    return out


def _pack_batch(batch: StoreBatch) -> bytes:
    cids = batch.cids
    return msgpack.packb(
        [
            sorted(set(cids.values())),
            [[sid, cids.get(sid, "")] for sid in batch.deletes],
            [[str(k), v] for k, v in batch.messages.items()],
            [[sid, _flat(e)] for sid, e in batch.rewrites.items()],
            [[sid, _flat(e)] for sid, e in batch.appends.items() if e],
            [[sid, seq] for sid, seq in batch.trims.items()],
            [[sid, row.component_id, _pack_row(row)] for sid, row in batch.sessions.items()],
            [[cid, upto] for cid, upto in batch.consumed.items()],
            [[f.to or "", f.topic or "", f.body, f.number, int(f.spill)] for f in batch.forwards],
            [[cid, gap] for cid, gap in batch.gaps.items()],
        ],
        use_bin_type=False,  # Redis's cmsgpack reads no bin type: bytes go as (binary-safe) raw
    )
