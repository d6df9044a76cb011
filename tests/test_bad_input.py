"""Bad input: every case is answered as ``docs/protocol.md`` says, and harms no one else.

Each test keeps a healthy bystander pair (one JSON client with
permessage-deflate, one MessagePack client) on the same hub, checks that they
exchange messages before and after the bad input, and that the hub counted the
contained error. Clients are the raw, document-only client of
``test_protocol_conformance``.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from genesis_trio.testing import RunningHub

from .test_protocol_conformance import JSON, MSGPACK, RawClient, clients, run, stats

Keep = Callable[[RawClient], RawClient]

ERROR_CODES = {
    "bad_frame",
    "bad_field",
    "unknown_frame",
    "unknown_target",
    "no_target",
    "sequence",
    "handler_error",
    "no_handler",
    "internal",
}
VOID = {"type": "x", "topic": "void.nobody"}  # a valid body that reaches nobody
HELLO = {"t": "hello", "v": 1, "id": "bad", "sid": None, "epoch": 0, "ack": 0, "topics": []}


class Bystanders:
    """Two healthy clients that must keep working whatever the bad client does."""

    def __init__(self, url: str, keep: Keep) -> None:
        self.p = keep(RawClient.join(url, "bystander-p", compression="deflate"))
        self.q = keep(RawClient.join(url, "bystander-q", subprotocols=[MSGPACK]))
        self.rounds = 0

    def check(self) -> None:
        self.rounds += 1
        n = self.rounds
        self.p.send_msg({"type": "ping-pong", "to": "bystander-q", "data": n}, ack=self.p.in_seq)
        seq, body = self.q.recv_body()
        assert (seq, body["from"], body["data"]) == (n, "bystander-p", n)
        self.q.send_msg({"type": "ping-pong", "to": "bystander-p", "data": -n}, ack=self.q.in_seq)
        seq, body = self.p.recv_body()
        assert (seq, body["from"], body["data"]) == (n, "bystander-q", -n)


def with_bystanders(
    hub: RunningHub, bad: Callable[[str, Keep], None], counter: str | None = "errors_contained"
) -> None:
    """Run ``bad(url, keep)`` between two bystander checks; ``counter`` must move.

    Runs in a worker thread.
    """
    with clients() as keep:
        bystanders = Bystanders(hub.url, keep)
        bystanders.check()
        before = stats(hub)
        bad(hub.url, keep)
        bystanders.check()
        after = stats(hub)
        if counter is not None:
            assert after[counter] > before[counter], f"{counter} did not move: {before} -> {after}"
        assert after["active_connections"] >= 2


def join_bad(url: str, keep: Keep, **options: Any) -> RawClient:
    return keep(RawClient.join(url, "bad", **options))


def assert_error(client: RawClient, code: str, *, seq: int | None = None) -> dict[str, Any]:
    """The next frame of interest is an ``error`` with ``code``; the link stays open."""
    error = client.next("error")
    assert error["code"] == code, error
    assert isinstance(error["msg"], str), error
    if seq is not None:
        assert error.get("seq") == seq, error
    client.sync()  # the link is still open and processing frames (§2.9)
    return error


# -- frames that draw an error and keep the link (§2, §2.9) -------------------------

LONG = "a" * 300
FRAME_CASES = [
    pytest.param(JSON, "{not json", "bad_frame", None, id="text-not-json"),
    pytest.param(JSON, b"\xff\xfe\x00\x81garbage", "bad_frame", None, id="binary-garbage-on-json"),
    pytest.param(MSGPACK, '{"t":"ping","id":1}', "bad_frame", None, id="text-on-msgpack"),
    pytest.param(MSGPACK, b"\xc1\xc1\xc1", "bad_frame", None, id="msgpack-garbage"),
    pytest.param(JSON, "[1, 2, 3]", "bad_frame", None, id="json-list"),
    pytest.param(JSON, "42", "bad_frame", None, id="json-number"),
    pytest.param(JSON, '"hello"', "bad_frame", None, id="json-string"),
    pytest.param(JSON, {"seq": 1, "m": VOID}, "bad_frame", None, id="missing-t"),
    pytest.param(JSON, {"t": 5}, "bad_frame", None, id="t-not-string"),
    pytest.param(MSGPACK, [1, 2], "bad_frame", None, id="msgpack-array"),
    pytest.param(JSON, {"t": "frobnicate"}, "unknown_frame", None, id="unknown-t"),
    pytest.param(JSON, {"t": "welcome"}, "unknown_frame", None, id="hub-only-t"),
    pytest.param(JSON, {"t": "msg", "m": VOID}, "bad_field", None, id="msg-missing-seq"),
    pytest.param(JSON, {"t": "msg", "seq": "1", "m": VOID}, "bad_field", None, id="msg-seq-str"),
    pytest.param(JSON, {"t": "msg", "seq": None, "m": VOID}, "bad_field", None, id="msg-seq-null"),
    pytest.param(JSON, {"t": "msg", "seq": 1.5, "m": VOID}, "bad_field", None, id="msg-seq-float"),
    pytest.param(JSON, {"t": "msg", "seq": 1}, "bad_field", 1, id="msg-missing-m"),
    pytest.param(JSON, {"t": "msg", "seq": 1, "m": "body"}, "bad_field", 1, id="msg-m-not-map"),
    pytest.param(
        JSON, {"t": "msg", "seq": 1, "m": {"to": "bystander-q"}}, "bad_field", 1, id="no-type"
    ),
    pytest.param(
        JSON,
        {"t": "msg", "seq": 1, "m": {"type": 5, "to": "bystander-q"}},
        "bad_field",
        1,
        id="type-not-string",
    ),
    pytest.param(
        JSON,
        {"t": "msg", "seq": 1, "m": {"type": "", "to": "bystander-q"}},
        "bad_field",
        1,
        id="type-empty",
    ),
    pytest.param(
        JSON,
        {"t": "msg", "seq": 1, "m": {"type": "x" * 129, "to": "bystander-q"}},
        "bad_field",
        1,
        id="type-too-long",
    ),
    pytest.param(
        JSON,
        {"t": "msg", "seq": 1, "m": {"type": "x", "to": "has spaces"}},
        "bad_field",
        1,
        id="to-with-spaces",
    ),
    pytest.param(
        JSON, {"t": "msg", "seq": 1, "m": {"type": "x", "to": LONG}}, "bad_field", 1, id="to-300"
    ),
    pytest.param(
        JSON, {"t": "msg", "seq": 1, "m": {"type": "x", "to": 7}}, "bad_field", 1, id="to-int"
    ),
    pytest.param(
        JSON,
        {"t": "msg", "seq": 1, "m": {"type": "x", "topic": "bad topic!"}},
        "bad_field",
        1,
        id="topic-invalid",
    ),
    pytest.param(
        JSON,
        {"t": "msg", "seq": 1, "m": {"type": "x", "to": "bystander-q", "topic": "room.1"}},
        "bad_field",
        1,
        id="both-to-and-topic",
    ),
    pytest.param(
        MSGPACK,
        {"t": "msg", "seq": 1, "m": {"type": "x", "to": "bystander-q", "topic": "room.1"}},
        "bad_field",
        1,
        id="both-to-and-topic-msgpack",
    ),
    pytest.param(JSON, {"t": "msg", "seq": 1, "m": {"type": "x"}}, "no_target", 1, id="no-target"),
    pytest.param(
        JSON,
        {"t": "msg", "seq": 1, "m": {"type": "x", "to": "ghost"}},
        "unknown_target",
        1,
        id="unknown-target",
    ),
    pytest.param(JSON, {"t": "batch", "seq": 1, "m": VOID}, "bad_field", 1, id="batch-m-not-list"),
    pytest.param(JSON, {"t": "ack"}, "bad_field", None, id="ack-missing-seq"),
    pytest.param(JSON, {"t": "ack", "seq": "0"}, "bad_field", None, id="ack-seq-str"),
    pytest.param(JSON, {"t": "sub", "topics": "room.1"}, "bad_field", None, id="sub-not-list"),
    pytest.param(JSON, {"t": "sub", "topics": ["bad topic!"]}, "bad_field", None, id="sub-bad"),
    pytest.param(JSON, {"t": "unsub", "topics": [1]}, "bad_field", None, id="unsub-not-str"),
    pytest.param(
        JSON,
        {"t": "sub", "topics": [f"t.{i}" for i in range(1025)]},
        "bad_field",
        None,
        id="sub-1025-topics",
    ),
    pytest.param(JSON, {"t": "ping", "id": "x"}, "bad_field", None, id="ping-id-str"),
    pytest.param(JSON, {"t": "ping", "id": -1}, "bad_field", None, id="ping-id-negative"),
]


@pytest.mark.parametrize(("subprotocol", "payload", "code", "seq"), FRAME_CASES)
async def test_bad_frame_draws_error_and_harms_no_one(
    hub: RunningHub, subprotocol: str, payload: Any, code: str, seq: int | None
) -> None:
    """H8: bad frames draw their error and harm no one."""

    def bad(url: str, keep: Keep) -> None:
        client = join_bad(url, keep, subprotocols=[subprotocol])
        if isinstance(payload, (str, bytes)):
            client.send_raw(payload)
        else:
            client.send_frame(payload)
        assert_error(client, code, seq=seq)
        assert client.pending_bodies() == []

    # Routing errors are answered but are not malformed input: no counter is promised.
    counter = None if code in ("no_target", "unknown_target") else "errors_contained"
    await run(with_bystanders, hub, bad, counter)


async def test_client_supplied_from_is_rejected_and_never_forged(hub: RunningHub) -> None:
    def bad(url: str, keep: Keep) -> None:
        client = join_bad(url, keep)
        forged = {"type": "x", "to": "bystander-q", "from": "bystander-p", "data": "forged"}
        client.send_msg(forged)
        assert_error(client, "bad_field", seq=1)

    # The bystander check right after would fail if q had received the forged body.
    await run(with_bystanders, hub, bad)


async def test_duplicate_hello_after_handshake_draws_error(hub: RunningHub) -> None:
    def bad(url: str, keep: Keep) -> None:
        client = join_bad(url, keep)
        client.send_frame(HELLO)
        error = client.next("error")
        assert error["code"] in ERROR_CODES, error
        client.sync()
        assert [f for f in client.inbox if f["t"] == "welcome"] == [], "a second welcome came"
        # The original session is intact: its stream goes on at 1.
        client.send_msg({"type": "x", "topic": "void", "data": "still-me"})
        client.wait_acked(1)

    await run(with_bystanders, hub, bad)


# -- frames that close the link (§2.1, §3, §5) ---------------------------------------


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([{"t": "msg", "seq": 2, "m": VOID}], id="first-seq-2"),
        pytest.param(
            [{"t": "msg", "seq": 1, "m": VOID}, {"t": "msg", "seq": 3, "m": VOID}], id="1-then-3"
        ),
        pytest.param(
            [{"t": "batch", "seq": 1, "m": [VOID, VOID]}, {"t": "batch", "seq": 4, "m": [VOID]}],
            id="batch-gap",
        ),
    ],
)
async def test_sequence_gap_closes_4007(hub: RunningHub, frames: list[dict[str, Any]]) -> None:
    """H7: a sequence gap closes 4007."""

    def bad(url: str, keep: Keep) -> None:
        client = join_bad(url, keep)
        for frame in frames:
            client.send_frame(frame)
        assert client.expect_close() == 4007

    await run(with_bystanders, hub, bad)


@pytest.mark.parametrize(
    ("delivered", "frame"),
    [
        pytest.param(0, {"t": "ack", "seq": 1}, id="nothing-sent"),
        pytest.param(2, {"t": "ack", "seq": 5}, id="beyond-sent"),
        pytest.param(1, {"t": "msg", "seq": 1, "ack": 9, "m": VOID}, id="piggybacked"),
    ],
)
async def test_ack_for_something_never_sent_closes_4007(
    hub: RunningHub, delivered: int, frame: dict[str, Any]
) -> None:
    """H6: an ack of a number never sent closes 4007."""

    def bad(url: str, keep: Keep) -> None:
        client = join_bad(url, keep)
        sender = keep(RawClient.join(url, "sender"))
        for i in range(delivered):
            sender.send_msg({"type": "x", "to": "bad", "data": i})
        for _ in range(delivered):
            client.recv_body()
        client.ack()  # a legitimate ack first: not an error
        client.send_frame(frame)
        assert client.expect_close() == 4007

    await run(with_bystanders, hub, bad)


@pytest.mark.parametrize(
    ("first", "code"),
    [
        pytest.param({"t": "ping", "id": 1}, 4000, id="ping-first"),
        pytest.param({"t": "msg", "seq": 1, "m": VOID}, 4000, id="msg-first"),
        pytest.param("{not json", 4000, id="garbage-first"),
        pytest.param("[]", 4000, id="list-first"),
        pytest.param({**HELLO, "id": "has space"}, 4000, id="hello-bad-id"),
        pytest.param({**HELLO, "id": "-dash"}, 4000, id="hello-id-leading-dash"),
        pytest.param({**HELLO, "id": "x" * 129}, 4000, id="hello-id-129"),
        pytest.param({**HELLO, "id": ""}, 4000, id="hello-id-empty"),
        pytest.param({**HELLO, "topics": "room"}, 4000, id="hello-topics-not-list"),
        pytest.param({**HELLO, "v": 2}, 4008, id="hello-v2"),
    ],
)
async def test_bad_first_frame_closes(hub: RunningHub, first: Any, code: int) -> None:
    """H2: a first frame that is not a valid hello closes 4000 (4008)."""

    def bad(url: str, keep: Keep) -> None:
        client = keep(RawClient.open(url))
        if isinstance(first, str):
            client.send_raw(first)
        else:
            client.send_frame(first)
        assert client.expect_close() == code

    await run(with_bystanders, hub, bad, "handshake_failures")


async def test_no_hello_within_handshake_timeout_closes_4002(hub_factory: Any) -> None:
    """H2: no hello in time closes 4002."""
    fast = await hub_factory(handshake_timeout=0.5)

    def bad(url: str, keep: Keep) -> None:
        client = keep(RawClient.open(url))
        assert client.expect_close(timeout=5) == 4002

    await run(with_bystanders, fast, bad, "handshake_failures")


async def test_too_many_malformed_frames_close_4005(hub: RunningHub) -> None:
    """H8: 10 malformed frames in 10 s close 4005."""

    def bad(url: str, keep: Keep) -> None:
        client = join_bad(url, keep)
        for i in range(10):
            client.send_raw(f"garbage {i}")
        for _ in range(10):
            assert client.next("error")["code"] == "bad_frame"
        client.sync()  # ten are tolerated
        client.send_raw("garbage 11")
        assert client.expect_close() == 4005

    await run(with_bystanders, hub, bad)


async def test_message_larger_than_max_size_closes_1009(hub_factory: Any) -> None:
    """H16: a message over the hub's max_size closes 1009."""
    small = await hub_factory(max_message_size=4096)

    def bad(url: str, keep: Keep) -> None:
        client = join_bad(url, keep)
        assert client.welcome["max_size"] == 4096
        # Just under the limit is fine ...
        client.send_msg({"type": "x", "topic": "void", "data": "y" * 3500})
        client.wait_acked(1)
        # ... just over it is not.
        client.send_msg({"type": "x", "topic": "void", "data": "y" * 5000})
        assert client.expect_close() == 1009

    await run(with_bystanders, small, bad)


async def test_decompression_bomb_closes_1009(hub_factory: Any) -> None:
    """H16: also when it inflates past it."""
    small = await hub_factory(max_message_size=4096)

    def bad(url: str, keep: Keep) -> None:
        client = join_bad(url, keep, compression="deflate")
        extensions = client.ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert "permessage-deflate" in extensions, "the hub accepts permessage-deflate (§1)"
        frame = json.dumps({"t": "msg", "seq": 1, "m": {**VOID, "data": "0" * 2_000_000}})
        deflater = zlib.compressobj(wbits=-15)
        wire = len(deflater.compress(frame.encode()) + deflater.flush(zlib.Z_SYNC_FLUSH))
        assert wire < 4096, f"the compressed frame ({wire} B) must itself fit in max_size"
        client.send_raw(frame)
        assert client.expect_close() == 1009

    await run(with_bystanders, small, bad)


async def test_origin_checked_against_allowed_origins(hub_factory: Any) -> None:
    guarded = await hub_factory(allowed_origins=["http://good.example"])

    def bad(url: str, keep: Keep) -> None:
        with pytest.raises(InvalidStatus) as info:
            RawClient.open(url, origin="http://evil.example")
        assert info.value.response.status_code == 403
        good = keep(RawClient.join(url, "good", origin="http://good.example"))
        assert good.welcome["recovered"] is False
        plain = keep(RawClient.join(url, "plain"))  # no Origin header at all
        assert plain.welcome["recovered"] is False

    await run(with_bystanders, guarded, bad, "handshake_failures")
