"""Protocol conformance: a raw client written from ``docs/protocol.md`` alone.

Nothing here uses the package's own client: every frame is built by hand and
sent with the ``websockets`` sync client in a worker thread, while the hub runs
in the test's Trio nursery. Section numbers refer to ``docs/protocol.md``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgpack
import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from genesis_trio.testing import RunningHub

JSON = "genesis.v1.json"
MSGPACK = "genesis.v1.msgpack"
TIMEOUT = 5.0
ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$")


class ProtocolError(AssertionError):
    """The hub sent something the test did not expect."""


class RawClient:
    """A minimal genesis client straight from the wire-protocol document.

    It keeps the two sequence streams of §3 (``out_seq``: last number this
    client used; ``in_seq``: highest contiguous hub number received), answers
    hub pings, records hub acks, and buffers frames that arrive while it waits
    for another kind.
    """

    _ping_ids = itertools.count(1_000_000)

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.codec = MSGPACK if ws.subprotocol == MSGPACK else JSON
        self.welcome: dict[str, Any] = {}
        self.out_seq = 0
        self.in_seq = 0
        self.hub_acks: list[int] = []
        self.inbox: deque[dict[str, Any]] = deque()
        self.bodies: deque[tuple[int, dict[str, Any]]] = deque()

    # -- connection ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        subprotocols: Sequence[str] | None = (JSON,),
        compression: str | None = None,
        origin: str | None = None,
        max_size: int | None = 16 * 1024 * 1024,
    ) -> RawClient:
        """Open the WebSocket only (no ``hello``)."""
        ws = connect(
            url,
            subprotocols=list(subprotocols) if subprotocols else None,  # type: ignore[misc]
            compression=compression,
            origin=origin,  # type: ignore[arg-type]
            proxy=None,
            open_timeout=TIMEOUT,
            close_timeout=2,
            ping_interval=None,
            max_size=max_size,
            legacy=True,  # a plain connection; callers close it (see ``clients``)
        )
        return cls(ws)

    @classmethod
    def join(
        cls,
        url: str,
        cid: str | None,
        *,
        sid: str | None = None,
        epoch: int = 0,
        ack: int = 0,
        topics: Sequence[str] = (),
        **open_options: Any,
    ) -> RawClient:
        """Open the WebSocket and complete the handshake (§2.1, §2.2)."""
        client = cls.open(url, **open_options)
        client.hello(cid, sid=sid, epoch=epoch, ack=ack, topics=topics)
        return client

    def hello(
        self,
        cid: str | None,
        *,
        sid: str | None = None,
        epoch: int = 0,
        ack: int = 0,
        topics: Sequence[str] = (),
        v: int = 1,
    ) -> dict[str, Any]:
        hello = {"t": "hello", "v": v, "id": cid, "sid": sid, "epoch": epoch, "ack": ack}
        self.send_frame({**hello, "topics": list(topics)})
        self.welcome = self.next("welcome")
        self.in_seq = ack
        return self.welcome

    def close(self) -> None:
        self.ws.close()

    def drop(self) -> None:
        """Cut the TCP connection without a WebSocket close handshake."""
        with contextlib.suppress(OSError):
            self.ws.socket.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                self.ws.recv(timeout=TIMEOUT)
        self.ws.close_socket()

    # -- codec --------------------------------------------------------------

    def encode(self, frame: Any) -> str | bytes:
        if self.codec == MSGPACK:
            return msgpack.packb(frame, use_bin_type=True)  # type: ignore[no-any-return]
        return json.dumps(frame, separators=(",", ":"))

    def decode(self, data: str | bytes) -> dict[str, Any]:
        if self.codec == MSGPACK:
            if not isinstance(data, bytes):
                raise ProtocolError(f"text message on the MessagePack subprotocol: {data!r}")
            frame = msgpack.unpackb(data, raw=False)
        else:
            if not isinstance(data, str):
                raise ProtocolError(f"binary message on the JSON subprotocol: {data!r}")
            frame = json.loads(data)
        if not isinstance(frame, dict) or not isinstance(frame.get("t"), str):
            raise ProtocolError(f"hub sent a non-frame: {frame!r}")
        return frame

    # -- sending ------------------------------------------------------------

    def send_raw(self, data: str | bytes) -> None:
        self.ws.send(data)

    def send_frame(self, frame: dict[str, Any]) -> None:
        self.ws.send(self.encode(frame))

    def send_msg(
        self, body: dict[str, Any], *, seq: int | None = None, ack: int | None = None
    ) -> int:
        """Send one body in a ``msg`` frame (§2.4); returns its sequence number."""
        if seq is None:
            seq = self.out_seq + 1
        self.out_seq = max(self.out_seq, seq)
        frame: dict[str, Any] = {"t": "msg", "seq": seq, "m": body}
        if ack is not None:
            frame["ack"] = ack
        self.send_frame(frame)
        return seq

    def send_batch(self, bodies: list[dict[str, Any]], *, seq: int | None = None) -> int:
        """Send bodies in one ``batch`` frame; returns the first sequence number."""
        if seq is None:
            seq = self.out_seq + 1
        self.out_seq = max(self.out_seq, seq + len(bodies) - 1)
        self.send_frame({"t": "batch", "seq": seq, "m": bodies})
        return seq

    def ack(self, seq: int | None = None) -> None:
        self.send_frame({"t": "ack", "seq": self.in_seq if seq is None else seq})

    # -- receiving ----------------------------------------------------------

    def recv_frame(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return self.decode(self.ws.recv(timeout=timeout))

    def pump(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Receive one frame: record acks (also piggybacked ones), answer pings.

        Frames other than ``ack``, ``ping`` are appended to the inbox.
        """
        frame = self.recv_frame(timeout)
        kind = frame["t"]
        if kind == "ack":
            self._record_ack(frame["seq"])
        elif kind == "ping":
            self.send_frame({"t": "pong", "id": frame["id"]})
        else:
            if kind in ("msg", "batch") and "ack" in frame:
                self._record_ack(frame["ack"])  # piggybacked ack (§2.4)
            self.inbox.append(frame)
        return frame

    def next(self, *kinds: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The oldest frame whose ``t`` is one of ``kinds``; others stay buffered."""
        while True:
            for i, frame in enumerate(self.inbox):
                if frame["t"] in kinds:
                    del self.inbox[i]
                    return frame
            frame = self.pump(timeout)
            if frame["t"] in kinds and frame["t"] in ("ack", "ping"):
                return frame

    def _record_ack(self, seq: Any) -> None:
        assert type(seq) is int, seq
        self.hub_acks.append(seq)

    @property
    def hub_ack(self) -> int:
        return max(self.hub_acks, default=0)

    def wait_acked(self, seq: int) -> None:
        """Receive until the hub has acknowledged everything up to ``seq`` (§2.5)."""
        while self.hub_ack < seq:
            self.pump()

    def sync(self) -> None:
        """Ping and wait for the pong: every frame sent before was processed (§2.6)."""
        ping_id = next(self._ping_ids)
        self.send_frame({"t": "ping", "id": ping_id})
        while True:
            frame = self.next("pong")
            if frame["id"] == ping_id:
                return

    def recv_body(self, timeout: float = TIMEOUT) -> tuple[int, dict[str, Any]]:
        """The next delivered body with its hub sequence number (``msg`` or ``batch``)."""
        while not self.bodies:
            frame = self.next("msg", "batch", timeout=timeout)
            seq = frame["seq"]
            assert type(seq) is int, frame
            bodies = [frame["m"]] if frame["t"] == "msg" else frame["m"]
            assert isinstance(bodies, list), frame
            for offset, body in enumerate(bodies):
                self.bodies.append((seq + offset, body))
        seq, body = self.bodies.popleft()
        if seq == self.in_seq + 1:
            self.in_seq = seq
        return seq, body

    def pending_bodies(self) -> list[tuple[int, dict[str, Any]]]:
        """Bodies that have arrived so far (call after :meth:`sync`)."""
        out = list(self.bodies)
        self.bodies.clear()
        for frame in list(self.inbox):
            if frame["t"] in ("msg", "batch"):
                self.inbox.remove(frame)
                bodies = [frame["m"]] if frame["t"] == "msg" else frame["m"]
                out.extend((frame["seq"] + i, b) for i, b in enumerate(bodies))
        return out

    def errors(self) -> list[dict[str, Any]]:
        """Error frames buffered so far (call after :meth:`sync`)."""
        return [f for f in self.inbox if f["t"] == "error"]

    def expect_close(self, timeout: float = TIMEOUT) -> int | None:
        """Receive (and discard frames) until the hub closes; return its close code."""
        try:
            while True:
                self.recv_frame(timeout)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None


@contextlib.contextmanager
def clients() -> Iterator[Callable[[RawClient], RawClient]]:
    """Close every registered client at the end, whatever happens."""
    opened: list[RawClient] = []

    def keep(client: RawClient) -> RawClient:
        opened.append(client)
        return client

    try:
        yield keep
    finally:
        for client in opened:
            with contextlib.suppress(Exception):
                client.close()


def stats(hub: RunningHub) -> dict[str, Any]:
    """Hub statistics, read from a worker thread."""
    return trio.from_thread.run_sync(hub.hub.get_stats)  # type: ignore[no-any-return]


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


# -- §2.1 / §2.2 handshake ----------------------------------------------------


@pytest.mark.parametrize("codec", [JSON, MSGPACK])
async def test_welcome_fields_have_documented_types_and_values(hub: RunningHub, codec: str) -> None:
    """H1: the welcome has the fields of §2.2, of the documented types."""

    def scenario(url: str) -> tuple[dict[str, Any], dict[str, Any], str | None]:
        with clients() as keep:
            alice = keep(RawClient.join(url, "alice", subprotocols=[codec]))
            anon = keep(RawClient.join(url, None, subprotocols=[codec]))
            return alice.welcome, anon.welcome, alice.ws.subprotocol

    welcome, anon, chosen = await run(scenario, hub.url)
    assert chosen == codec
    assert welcome["t"] == "welcome"
    assert type(welcome["v"]) is int
    assert welcome["v"] == 1
    assert welcome["id"] == "alice"
    assert isinstance(welcome["sid"], str)
    assert welcome["sid"]
    assert type(welcome["epoch"]) is int
    assert welcome["recovered"] is False
    assert type(welcome["ack"]) is int
    assert welcome["ack"] == 0
    assert type(welcome["hb"]) is int
    assert welcome["hb"] > 0
    assert type(welcome["window"]) is int
    assert welcome["window"] > 0
    assert type(welcome["max_size"]) is int
    assert welcome["max_size"] == 1024 * 1024  # default 1 MiB (§1)
    assert isinstance(welcome["node"], str)
    assert welcome["node"] == hub.hub.get_stats()["node_id"]
    # A null id gets an assigned ``anon-<hex>`` id (§2.1).
    assert re.fullmatch(r"anon-[0-9a-f]+", anon["id"]), anon["id"]
    assert ID_RE.match(anon["id"])
    assert anon["sid"] != welcome["sid"]


# -- §2.3 / §2.4 / §2.5 messages, batches, acks --------------------------------


async def test_two_raw_clients_exchange_messages_both_ways(hub: RunningHub) -> None:
    """H4: exactly once, in order, `from` stamped."""

    def scenario(url: str) -> None:
        with clients() as keep:
            alice = keep(RawClient.join(url, "alice"))
            bob = keep(RawClient.join(url, "bob"))
            for i in range(3):
                assert alice.send_msg({"type": "ab", "to": "bob", "data": i}) == i + 1
                assert bob.send_msg({"type": "ba", "to": "alice", "data": {"n": -i}}) == i + 1
            for i in range(3):
                seq, body = bob.recv_body()
                assert seq == i + 1
                assert body["type"] == "ab"
                assert body["from"] == "alice"
                assert body["to"] == "bob"
                assert body["data"] == i
                seq, body = alice.recv_body()
                assert seq == i + 1
                assert body["type"] == "ba"
                assert body["from"] == "bob"
                assert body["data"] == {"n": -i}
            # The next messages continue the same streams, acks piggybacked (§2.4).
            alice.send_msg({"type": "ab", "to": "bob", "data": "last"}, ack=alice.in_seq)
            bob.send_msg({"type": "ba", "to": "alice"}, ack=bob.in_seq)
            assert bob.recv_body() == (
                4,
                {"type": "ab", "to": "bob", "from": "alice", "data": "last"},
            )
            seq, body = alice.recv_body()
            assert seq == 4
            assert body["from"] == "bob"
            assert body.get("data") is None  # absent data is null (§2.3)
            alice.wait_acked(4)
            bob.wait_acked(4)

    await run(scenario, hub.url)
    stats_now = hub.hub.get_stats()
    assert stats_now["messages_in"] == 8


async def test_batch_frames_are_accepted_and_delivered_in_order(hub: RunningHub) -> None:
    """H4: batches and messages interoperate."""

    def scenario(url: str) -> None:
        with clients() as keep:
            alice = keep(RawClient.join(url, "alice"))
            bob = keep(RawClient.join(url, "bob"))
            assert alice.send_batch([{"type": "n", "to": "bob", "data": i} for i in range(5)]) == 1
            assert alice.send_msg({"type": "n", "to": "bob", "data": 5}) == 6
            assert alice.send_batch([{"type": "n", "to": "bob", "data": i} for i in (6, 7)]) == 7
            got = [bob.recv_body() for _ in range(8)]
            assert [seq for seq, _ in got] == list(range(1, 9))
            assert [body["data"] for _, body in got] == list(range(8))
            assert all(body["from"] == "alice" for _, body in got)
            alice.wait_acked(8)
            assert alice.hub_ack == 8

    await run(scenario, hub.url)


async def test_acks_are_cumulative_and_never_exceed_what_was_sent(hub: RunningHub) -> None:
    """H5: acks are cumulative and never exceed what was stored."""

    def scenario(url: str) -> None:
        with clients() as keep:
            alice = keep(RawClient.join(url, "alice"))
            for i in range(20):
                alice.send_msg({"type": "n", "topic": "nobody.listens", "data": i})
            alice.wait_acked(20)
            acks = alice.hub_acks
            assert acks == sorted(acks), f"acks went backwards: {acks}"
            assert all(1 <= a <= 20 for a in acks), acks
            assert acks[-1] == 20
            # A stale ack from the client is ignored, not an error (§2.5).
            bob = keep(RawClient.join(url, "bob"))
            for i in range(3):
                bob.send_msg({"type": "n", "to": "alice", "data": i})
            assert [alice.recv_body()[0] for _ in range(3)] == [1, 2, 3]
            alice.ack(3)
            alice.ack(1)
            alice.sync()
            assert alice.errors() == []

    await run(scenario, hub.url)


async def test_request_reply_between_raw_clients(hub: RunningHub) -> None:
    """H11: a request to a component is answered by its reply."""

    def scenario(url: str) -> None:
        with clients() as keep:
            client = keep(RawClient.join(url, "client"))
            server = keep(RawClient.join(url, "server"))
            client.send_msg({"type": "add", "to": "server", "id": "req-1", "data": [2, 3]})
            client.send_msg({"type": "add", "to": "server", "id": "req-2", "data": "x"})
            for _ in range(2):
                _, request = server.recv_body()
                assert request["from"] == "client"
                assert request["type"] == "add"
                reply: dict[str, Any] = {"type": "add", "to": request["from"], "re": request["id"]}
                if isinstance(request["data"], list):
                    reply["data"] = sum(request["data"])
                else:
                    reply["error"] = {"code": "handler_error", "msg": "not numbers"}
                server.send_msg(reply, ack=server.in_seq)
            _, first = client.recv_body()
            _, second = client.recv_body()
            assert first["re"] == "req-1"
            assert first["from"] == "server"
            assert first["data"] == 5
            assert second["re"] == "req-2"
            assert second["from"] == "server"
            assert second["error"] == {"code": "handler_error", "msg": "not numbers"}

    await run(scenario, hub.url)


# -- §2.7 topics ------------------------------------------------------------------


async def test_topics_via_hello_sub_and_unsub(hub: RunningHub) -> None:
    """H10: hello.topics, sub and unsub set the subscriptions."""

    def scenario(url: str) -> None:
        with clients() as keep:
            alice = keep(RawClient.join(url, "alice", topics=["room.1"]))
            bob = keep(RawClient.join(url, "bob"))
            bob.send_frame({"t": "sub", "topics": ["room/2", "room.1"]})
            bob.sync()
            carol = keep(RawClient.join(url, "carol", topics=["room/2"]))

            carol.send_msg({"type": "say", "topic": "room.1", "data": "one"})
            carol.send_msg({"type": "say", "topic": "room/2", "data": "two"})
            carol.send_msg({"type": "say", "topic": "empty.room", "data": "nobody"})
            carol.sync()
            assert carol.errors() == [], "publishing to a topic without subscribers is not an error"

            seq, body = alice.recv_body()
            assert (seq, body["data"], body["topic"], body["from"]) == (1, "one", "room.1", "carol")
            got = [bob.recv_body() for _ in range(2)]
            assert [(s, b["data"], b["topic"]) for s, b in got] == [
                (1, "one", "room.1"),
                (2, "two", "room/2"),
            ]
            # A publisher subscribed to its own topic receives its own message.
            seq, body = carol.recv_body()
            assert (seq, body["data"], body["from"]) == (1, "two", "carol")

            bob.send_frame({"t": "unsub", "topics": ["room/2"]})
            bob.sync()
            carol.send_msg({"type": "say", "topic": "room/2", "data": "after-unsub"})
            carol.send_msg({"type": "say", "topic": "room.1", "data": "still-here"})
            seq, body = bob.recv_body()
            assert (seq, body["data"]) == (3, "still-here")
            seq, body = alice.recv_body()
            assert (seq, body["data"]) == (2, "still-here")

    await run(scenario, hub.url)


# -- §1 subprotocols -------------------------------------------------------------


@pytest.mark.parametrize(
    ("offer", "chosen"),
    [
        ([JSON], JSON),
        ([MSGPACK], MSGPACK),
        ([MSGPACK, JSON], MSGPACK),
        ([JSON, MSGPACK], JSON),
        (["chat.v9", MSGPACK], MSGPACK),
    ],
)
async def test_subprotocol_selects_encoding(hub: RunningHub, offer: list[str], chosen: str) -> None:
    """H3: the subprotocol decides the encoding."""

    def scenario(url: str) -> None:
        with clients() as keep:
            client = keep(RawClient.open(url, subprotocols=offer))
            assert client.ws.subprotocol == chosen
            client.hello("client")  # decode() checks text vs binary per encoding
            json_peer = keep(RawClient.join(url, "jpeer", subprotocols=[JSON]))
            mp_peer = keep(RawClient.join(url, "mpeer", subprotocols=[MSGPACK]))
            data = {"text": "é ☃", "list": [1, 2.5, None, True], "neg": -7}
            client.send_msg({"type": "x", "to": "jpeer", "data": data})
            client.send_msg({"type": "x", "to": "mpeer", "data": data})
            assert json_peer.recv_body()[1]["data"] == data
            assert mp_peer.recv_body()[1]["data"] == data
            json_peer.send_msg({"type": "y", "to": "client", "data": "from-json"})
            mp_peer.send_msg({"type": "y", "to": "client", "data": "from-msgpack"})
            got = sorted(client.recv_body()[1]["data"] for _ in range(2))
            assert got == ["from-json", "from-msgpack"]

    await run(scenario, hub.url)


async def test_msgpack_binary_payload_round_trips_as_bin(hub: RunningHub) -> None:
    def scenario(url: str) -> None:
        with clients() as keep:
            a = keep(RawClient.join(url, "a", subprotocols=[MSGPACK]))
            b = keep(RawClient.join(url, "b", subprotocols=[MSGPACK]))
            a.send_msg({"type": "blob", "to": "b", "data": {"raw": b"\x00\xff\x10", "s": "str"}})
            _, body = b.recv_body()
            assert body["data"] == {"raw": b"\x00\xff\x10", "s": "str"}

    await run(scenario, hub.url)


async def test_no_subprotocol_offered_uses_json(hub: RunningHub) -> None:
    """H3: none offered means JSON."""

    def scenario(url: str) -> None:
        with clients() as keep:
            client = keep(RawClient.open(url, subprotocols=None))
            assert client.ws.subprotocol is None
            client.send_raw(
                '{"t":"hello","v":1,"id":"plain","sid":null,"epoch":0,"ack":0,"topics":[]}'
            )
            raw = client.ws.recv(timeout=TIMEOUT)
            assert isinstance(raw, str)
            welcome = json.loads(raw)
            assert welcome["t"] == "welcome"
            assert welcome["id"] == "plain"

    await run(scenario, hub.url)


async def test_only_unknown_subprotocols_are_refused_with_400(hub: RunningHub) -> None:
    """H3: only unknown ones get HTTP 400."""

    def scenario(url: str) -> None:
        with pytest.raises(InvalidStatus) as info:
            RawClient.open(url, subprotocols=["chat.v9", "genesis.v2.json"])
        response = info.value.response
        assert response.status_code == 400
        assert JSON.encode() in (response.body or b""), response.body

    await run(scenario, hub.url)


# -- §4 resume ----------------------------------------------------------------------


@pytest.mark.parametrize("hello_ack", [3, 1])
async def test_resume_redelivers_exactly_the_missed_messages(
    hub: RunningHub, hello_ack: int
) -> None:
    """H12: an exact resume gets exactly the missed messages."""

    def scenario(url: str) -> None:
        with clients() as keep:
            alice = keep(RawClient.join(url, "alice"))
            bob = keep(RawClient.join(url, "bob"))
            sid, epoch = alice.welcome["sid"], alice.welcome["epoch"]

            # bob -> alice 1..3: received by alice, never acknowledged.
            for i in range(1, 4):
                bob.send_msg({"type": "b", "to": "alice", "data": i})
            assert [alice.recv_body() for _ in range(3)] == [
                (i, {"type": "b", "to": "alice", "from": "bob", "data": i}) for i in range(1, 4)
            ]
            # alice -> bob 1..2: stored by the hub (acknowledged), delivered to bob.
            for i in range(1, 3):
                alice.send_msg({"type": "a", "to": "bob", "data": i})
            alice.wait_acked(2)
            assert [bob.recv_body()[1]["data"] for _ in range(2)] == [1, 2]
            bob.ack()

            alice.drop()
            for i in range(4, 6):
                bob.send_msg({"type": "b", "to": "alice", "data": i})
            bob.wait_acked(5)

            before = stats(hub)
            alice2 = keep(RawClient.open(url))
            welcome = alice2.hello("alice", sid=sid, epoch=epoch, ack=hello_ack)
            assert welcome["recovered"] is True
            assert welcome["sid"] == sid
            assert welcome["epoch"] == epoch
            assert welcome["ack"] == 2  # both of alice's messages are stored

            expected = [
                (i, {"type": "b", "to": "alice", "from": "bob", "data": i})
                for i in range(hello_ack + 1, 6)
            ]
            assert [alice2.recv_body() for _ in expected] == expected
            alice2.sync()
            assert alice2.pending_bodies() == [], "more than the missed messages came back"

            # Re-send alice's own messages with the same numbers, plus a new one.
            alice2.out_seq = 0
            for i in range(1, 4):
                alice2.send_msg({"type": "a", "to": "bob", "data": i}, seq=i)
            alice2.wait_acked(3)
            assert bob.recv_body() == (3, {"type": "a", "to": "bob", "from": "alice", "data": 3})
            bob.sync()
            assert bob.pending_bodies() == [], "duplicates were delivered to the peer"
            after = stats(hub)
            assert after["duplicates_dropped"] >= before["duplicates_dropped"] + 2
            assert after["resumes_recovered"] == before["resumes_recovered"] + 1

    await run(scenario, hub.url)


async def test_resume_with_unknown_sid_starts_a_new_session(hub: RunningHub) -> None:
    """H12: an unknown sid gets a new session."""

    def scenario(url: str) -> None:
        with clients() as keep:
            bob = keep(RawClient.join(url, "bob"))
            alice = keep(RawClient.open(url))
            welcome = alice.hello("alice", sid="no-such-session", epoch=7, ack=5)
            assert welcome["recovered"] is False
            assert welcome["sid"] != "no-such-session" or welcome["epoch"] != 7
            assert welcome["ack"] == 0
            # Both streams restart at 1 (§4).
            alice.in_seq = 0
            alice.send_msg({"type": "hi", "to": "bob"})
            assert bob.recv_body()[1]["from"] == "alice"
            bob.send_msg({"type": "hi", "to": "alice"})
            assert alice.recv_body()[0] == 1
            alice.wait_acked(1)

    await run(scenario, hub.url)


# -- §2.8 bye, §4 replacement --------------------------------------------------------


async def test_bye_ends_the_session(hub: RunningHub) -> None:
    """H14: bye ends the session."""

    def scenario(url: str) -> None:
        with clients() as keep:
            alice = keep(RawClient.join(url, "alice"))
            bob = keep(RawClient.join(url, "bob"))
            bob.send_msg({"type": "x", "to": "alice"})
            assert alice.recv_body()[0] == 1
            alice.send_frame({"t": "bye"})
            assert alice.expect_close() == 1000
            seq = bob.send_msg({"type": "x", "to": "alice", "id": "r-1"})
            error = bob.next("error")
            assert error["code"] == "unknown_target"
            assert error.get("seq") == seq
            assert error.get("id") == "r-1"
            assert isinstance(error["msg"], str)

    await run(scenario, hub.url)


async def test_second_hello_without_sid_replaces_the_first(hub: RunningHub) -> None:
    """H13: a hello without sid takes over (4001)."""

    def scenario(url: str) -> None:
        with clients() as keep:
            bob = keep(RawClient.join(url, "bob"))
            first = keep(RawClient.join(url, "alice"))
            second = keep(RawClient.join(url, "alice"))
            assert first.expect_close() == 4001
            assert second.welcome["recovered"] is False
            assert (second.welcome["sid"], second.welcome["epoch"]) != (
                first.welcome["sid"],
                first.welcome["epoch"],
            )
            bob.send_msg({"type": "x", "to": "alice", "data": "for-the-new-link"})
            assert second.recv_body() == (
                1,
                {"type": "x", "to": "alice", "from": "bob", "data": "for-the-new-link"},
            )

    await run(scenario, hub.url)
    assert hub.hub.get_stats()["replaced_connections"] == 1
