"""Unit tests of frame validation (_frames) and the wire codecs (_codec)."""

from __future__ import annotations

import tracemalloc
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genesis_trio._core.codec import (
    CODECS,
    CODECS_BY_NAME,
    JSON,
    JSON_SUBPROTOCOL,
    MSGPACK,
    MSGPACK_SUBPROTOCOL,
    Codec,
    EncodedBody,
    negotiate,
)
from genesis_trio._core.errors import CloseCode, ErrorCode, RemoteProtocolError
from genesis_trio._core.frames import (
    HUB_ID,
    MAX_TOPICS,
    PROTOCOL_VERSION,
    Ack,
    Bye,
    Error,
    Hello,
    MessageFrame,
    Ping,
    Pong,
    Rejected,
    Subscribe,
    Welcome,
    check_body,
    parse_frame,
    valid_component_id,
    valid_topic,
)

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None)
"""Hypothesis runs the same examples every time (no flaky runs, no example database)."""

CODEC_LIST = [JSON, MSGPACK]
codecs = pytest.mark.parametrize("codec", CODEC_LIST, ids=lambda c: c.name)


def roundtrip(codec: Codec, wire: dict[str, Any], sender: str) -> Any:
    return parse_frame(codec.decode(codec.encode(wire)), sender=sender)  # type: ignore[arg-type]


def raises(obj: object, sender: str, code: ErrorCode) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as excinfo:
        parse_frame(obj, sender=sender)  # type: ignore[arg-type]
    assert excinfo.value.code is code, excinfo.value
    return excinfo.value


WELCOME = Welcome(
    id="comp", sid="S1", epoch=3, recovered=True, ack=7, hb=5000, window=100, max_size=1 << 20
)

CLIENT_FRAMES = [
    Hello(),
    Hello(id="comp-1", sid="abc", epoch=4, ack=17, topics=("a.b", "c/d"), token="t" * 8192),
    Ack(0),
    Ack(12),
    Ping(0),
    Ping(2**40),
    Pong(5),
    Subscribe(("x", "y.z")),
    Subscribe(("x",), remove=True),
    Subscribe(()),
    Error("bad_field", "oops"),
    Error("x", "", seq=3, id="req-1"),
    Bye(),
]
HUB_FRAMES = [
    WELCOME,
    Welcome(
        id="anon-1", sid="S", epoch=1, recovered=False, ack=0, hb=0, window=1, max_size=1, node="n"
    ),
    Ack(3),
    Ping(1),
    Pong(1),
    Error("unknown_target", "no such component", seq=12, id="req-7"),
]


# --------------------------------------------------------------------------- round trips


@codecs
@pytest.mark.parametrize("frame", CLIENT_FRAMES, ids=repr)
def test_client_frames_round_trip(codec: Codec, frame: Any) -> None:
    assert roundtrip(codec, frame.wire(), "client") == frame


@codecs
@pytest.mark.parametrize("frame", HUB_FRAMES, ids=repr)
def test_hub_frames_round_trip(codec: Codec, frame: Any) -> None:
    assert roundtrip(codec, frame.wire(), "hub") == frame


@codecs
@pytest.mark.parametrize("ack", [None, 0, 9])
def test_msg_and_batch_round_trip(codec: Codec, ack: int | None) -> None:
    one = {"type": "m", "to": "b", "data": {"k": [1, 2.5, None, "s"]}}
    many = [{"type": "m", "topic": "t.1", "data": i} for i in range(3)]
    frame = parse_frame(
        codec.decode(codec.frame("msg", 5, [codec.encode(one)], ack)), sender="client"
    )
    assert frame == MessageFrame(5, [one], ack)
    frame = parse_frame(
        codec.decode(codec.frame("batch", 6, [codec.encode(b) for b in many], ack)),
        sender="client",
    )
    assert frame == MessageFrame(6, many, ack)


def test_wire_maps() -> None:
    assert Hello().wire() == {
        "t": "hello",
        "v": 1,
        "id": None,
        "sid": None,
        "epoch": 0,
        "ack": 0,
        "topics": [],
    }
    assert Hello(token="x").wire()["token"] == "x"
    assert WELCOME.wire() == {
        "t": "welcome",
        "id": "comp",
        "sid": "S1",
        "epoch": 3,
        "recovered": True,
        "ack": 7,
        "hb": 5000,
        "window": 100,
        "max_size": 1 << 20,
        "node": "",
        "v": 1,
    }
    assert Ack(1).wire() == {"t": "ack", "seq": 1}
    assert Ping(2).wire() == {"t": "ping", "id": 2}
    assert Pong(2).wire() == {"t": "pong", "id": 2}
    assert Subscribe(("a",)).wire() == {"t": "sub", "topics": ["a"]}
    assert Subscribe(("a",), remove=True).wire() == {"t": "unsub", "topics": ["a"]}
    assert Error("c", "m").wire() == {"t": "error", "code": "c", "msg": "m"}
    assert Error("c", "m", 1, "r").wire() == {
        "t": "error",
        "code": "c",
        "msg": "m",
        "seq": 1,
        "id": "r",
    }
    assert Bye().wire() == {"t": "bye"}


def test_protocol_example_frames_parse() -> None:
    # docs/protocol.md section 6, verbatim.
    hello = JSON.decode(
        '{"t":"hello","v":1,"id":"sensor-1","sid":null,"epoch":0,"ack":0,"topics":["cmd"]}'
    )
    assert parse_frame(hello, sender="client") == Hello(id="sensor-1", topics=("cmd",))
    welcome = JSON.decode(
        '{"t":"welcome","v":1,"id":"sensor-1","sid":"Xq","epoch":1,"recovered":false,'
        '"ack":0,"hb":5000,"window":1000,"max_size":1048576,"node":"hub-1a2b"}'
    )
    assert parse_frame(welcome, sender="hub") == Welcome(
        "sensor-1", "Xq", 1, False, 0, 5000, 1000, 1048576, "hub-1a2b"
    )
    msg = JSON.decode(
        '{"t":"msg","seq":2,"ack":1,"m":{"type":"set","to":"dashboard","re":"d.7","data":"ok"}}'
    )
    assert parse_frame(msg, sender="client") == MessageFrame(
        2, [{"type": "set", "to": "dashboard", "re": "d.7", "data": "ok"}], 1
    )


def test_unknown_fields_are_ignored() -> None:
    assert parse_frame({"t": "ack", "seq": 1, "extra": [1]}, sender="hub") == Ack(1)
    body = {"type": "m", "to": "b", "whatever": 1}
    assert parse_frame({"t": "msg", "seq": 1, "m": body, "x": 0}, sender="client") == MessageFrame(
        1, [body], None
    )


def test_welcome_defaults_and_lenient_node() -> None:
    wire = WELCOME.wire()
    del wire["v"], wire["node"]
    assert parse_frame(wire, sender="hub") == WELCOME
    wire["node"] = 5
    assert parse_frame(wire, sender="hub").node == ""  # type: ignore[union-attr]


def test_hello_defaults() -> None:
    assert parse_frame({"t": "hello"}, sender="client") == Hello()


def test_error_frame_tolerates_odd_seq_and_missing_msg() -> None:
    assert parse_frame({"t": "error", "code": "c"}, sender="hub") == Error("c", "")
    assert parse_frame({"t": "error", "code": "c", "msg": "m", "seq": "x"}, sender="hub") == Error(
        "c", "m"
    )


def test_check_body_returns_the_same_dict() -> None:
    body = {"type": "m", "to": HUB_ID}
    assert check_body(body, from_client=True) is body


@pytest.mark.parametrize(
    "body",
    [
        {"type": "m"},  # no target: routed, then answered with no_target (not a parse error)
        {"type": "t" * 128, "data": None},
        {"type": "m", "to": "$hub"},
        {"type": "m", "to": "a" * 128},
        {"type": "m", "topic": "a/b:c@d-e.f_" + "x" * 244},
        {"type": "m", "to": "b", "id": "r" * 128, "re": "q"},
        {"type": "m", "to": "b", "re": "q", "error": {"code": "handler_error", "msg": "x"}},
    ],
)
def test_valid_client_bodies(body: dict[str, Any]) -> None:
    assert check_body(body, from_client=True) is body


def test_hub_bodies_may_carry_from_and_both_addresses() -> None:
    body = {"type": "m", "from": "a", "to": "b", "topic": "t"}
    assert check_body(body, from_client=False) is body


def test_component_id_and_topic_syntax() -> None:
    assert valid_component_id("a")
    assert valid_component_id("_a.b:c@d-e")
    assert valid_component_id("a" * 128)
    for bad in ("", "a" * 129, "$hub", ".a", "-a", "a b", "a/b", 5, None):
        assert not valid_component_id(bad)
    assert valid_topic("a/b")
    assert valid_topic("a" * 256)
    for bad in ("", "a" * 257, "/a", "a b", "a#", 5, None):
        assert not valid_topic(bad)


# --------------------------------------------------------------------------- invalid frames


@pytest.mark.parametrize("sender", ["client", "hub"])
@pytest.mark.parametrize("obj", [None, 5, "ack", [1], {}, {"t": None}, {"t": 5}, {"x": "ack"}])
def test_not_a_frame_is_bad_frame(sender: str, obj: object) -> None:
    raises(obj, sender, ErrorCode.BAD_FRAME)


@pytest.mark.parametrize(
    ("t", "sender"),
    [
        ("nope", "client"),
        ("nope", "hub"),
        ("", "client"),
        ("MSG", "client"),
        ("welcome", "client"),  # a hub-only frame from a client
        ("hello", "hub"),  # client-only frames from the hub
        ("sub", "hub"),
        ("unsub", "hub"),
        ("bye", "hub"),
    ],
)
def test_unknown_or_misdirected_frame_type(t: str, sender: str) -> None:
    raises({"t": t}, sender, ErrorCode.UNKNOWN_FRAME)


BAD_FIELD_FRAMES: list[tuple[str, dict[str, Any]]] = [
    ("client", {"t": "msg", "m": {"type": "m"}}),
    ("client", {"t": "msg", "seq": 0, "m": {"type": "m"}}),
    ("client", {"t": "msg", "seq": -1, "m": {"type": "m"}}),
    ("client", {"t": "msg", "seq": "1", "m": {"type": "m"}}),
    ("client", {"t": "msg", "seq": 1.0, "m": {"type": "m"}}),
    ("client", {"t": "msg", "seq": True, "m": {"type": "m"}}),
    ("client", {"t": "msg", "seq": 1, "ack": -1, "m": {"type": "m"}}),
    ("client", {"t": "msg", "seq": 1, "ack": "2", "m": {"type": "m"}}),
    ("client", {"t": "msg", "seq": 1, "ack": False, "m": {"type": "m"}}),
    ("hub", {"t": "msg", "seq": 1}),
    ("hub", {"t": "msg", "seq": 1, "m": [{"type": "m"}]}),
    ("client", {"t": "batch", "seq": 1}),
    ("client", {"t": "batch", "seq": 1, "m": []}),
    ("client", {"t": "batch", "seq": 1, "m": {"type": "m"}}),
    ("hub", {"t": "batch", "seq": 1, "m": [{"type": "m"}, 3]}),
    ("hub", {"t": "batch", "seq": 1}),
    ("client", {"t": "ack"}),
    ("client", {"t": "ack", "seq": -1}),
    ("hub", {"t": "ack", "seq": "1"}),
    ("client", {"t": "ping"}),
    ("hub", {"t": "ping", "id": -1}),
    ("client", {"t": "pong", "id": None}),
    ("hub", {"t": "pong", "id": 1.5}),
    ("client", {"t": "error", "msg": "x"}),
    ("hub", {"t": "error", "code": 5, "msg": "x"}),
    ("hub", {"t": "error", "code": "c", "msg": None}),
    ("hub", {"t": "error", "code": "c", "msg": "m", "id": ""}),
    ("client", {"t": "hello", "v": "1"}),
    ("client", {"t": "hello", "id": "$hub"}),
    ("client", {"t": "hello", "id": ""}),
    ("client", {"t": "hello", "id": 5}),
    ("client", {"t": "hello", "sid": ""}),
    ("client", {"t": "hello", "sid": 5}),
    ("client", {"t": "hello", "sid": "s" * 129}),
    ("client", {"t": "hello", "epoch": -1}),
    ("client", {"t": "hello", "ack": None}),
    ("client", {"t": "hello", "topics": "a"}),
    ("client", {"t": "hello", "topics": ["ok", "not ok"]}),
    ("client", {"t": "hello", "topics": ["a"] * (MAX_TOPICS + 1)}),
    ("client", {"t": "hello", "token": ""}),
    ("client", {"t": "hello", "token": "t" * 8193}),
    ("client", {"t": "sub", "topics": [1]}),
    ("client", {"t": "unsub", "topics": None}),
    ("hub", {**WELCOME.wire(), "recovered": "yes"}),
    ("hub", {**WELCOME.wire(), "recovered": None}),
    ("hub", {**WELCOME.wire(), "id": None}),
    ("hub", {**WELCOME.wire(), "sid": 5}),
    ("hub", {**WELCOME.wire(), "epoch": -1}),
    ("hub", {**WELCOME.wire(), "ack": None}),
    ("hub", {**WELCOME.wire(), "hb": "5"}),
    ("hub", {**WELCOME.wire(), "window": 0}),
    ("hub", {**WELCOME.wire(), "max_size": 0}),
    ("hub", {**WELCOME.wire(), "v": "1"}),
]


@pytest.mark.parametrize(("sender", "obj"), BAD_FIELD_FRAMES, ids=repr)
def test_invalid_fields_are_bad_field(sender: str, obj: dict[str, Any]) -> None:
    exc = raises(obj, sender, ErrorCode.BAD_FIELD)
    assert exc.close_code is None


def test_max_topics_is_accepted() -> None:
    frame = parse_frame({"t": "sub", "topics": ["a"] * MAX_TOPICS}, sender="client")
    assert frame == Subscribe(("a",) * MAX_TOPICS)


@pytest.mark.parametrize("v", [0, 2, 99])
def test_unsupported_version_closes_with_4008(v: int) -> None:
    exc = raises({"t": "hello", "v": v}, "client", ErrorCode.BAD_FIELD)
    assert exc.close_code is CloseCode.UNSUPPORTED_VERSION


def test_hello_version_1_is_explicitly_fine() -> None:
    assert parse_frame({"t": "hello", "v": PROTOCOL_VERSION}, sender="client") == Hello()


BAD_BODIES: list[tuple[bool, object]] = [
    (True, None),
    (True, [1]),
    (True, "m"),
    (True, {}),
    (True, {"type": ""}),
    (True, {"type": 5}),
    (True, {"type": "t" * 129}),
    (True, {"type": "m", "to": ""}),
    (True, {"type": "m", "to": "a b"}),
    (True, {"type": "m", "to": 5}),
    (True, {"type": "m", "to": "$other"}),
    (True, {"type": "m", "topic": ""}),
    (True, {"type": "m", "topic": "a b"}),
    (True, {"type": "m", "topic": "x" * 257}),
    (True, {"type": "m", "to": "b", "id": ""}),
    (True, {"type": "m", "to": "b", "id": 5}),
    (True, {"type": "m", "to": "b", "id": "r" * 129}),
    (True, {"type": "m", "to": "b", "re": ""}),
    (True, {"type": "m", "to": "b", "error": "boom"}),
    (True, {"type": "m", "to": "b", "error": {"msg": "no code"}}),
    (True, {"type": "m", "to": "b", "error": {"code": 5}}),
    (True, {"type": "m", "to": "b", "from": "me"}),
    (True, {"type": "m", "to": "b", "from": None}),
    (True, {"type": "m", "to": "b", "topic": "t"}),
    (False, {"type": "m", "to": "a b"}),
    (False, {"type": ""}),
]


@pytest.mark.parametrize(("from_client", "body"), BAD_BODIES, ids=repr)
def test_invalid_bodies(from_client: bool, body: object) -> None:
    with pytest.raises(RemoteProtocolError) as excinfo:
        check_body(body, from_client=from_client)
    assert excinfo.value.code is ErrorCode.BAD_FIELD


HUB_BAD_BODIES = [body for from_client, body in BAD_BODIES if from_client is False] + [
    {"type": "m", "to": "b", "error": "boom"},
    None,
]


@pytest.mark.parametrize("body", HUB_BAD_BODIES, ids=repr)
@pytest.mark.parametrize("kind", ["msg", "batch"])
def test_invalid_body_from_hub_rejects_the_frame_naming_its_seq(body: object, kind: str) -> None:
    m = body if kind == "msg" else [{"type": "ok"}, body]
    exc = raises({"t": kind, "seq": 42, "m": m}, "hub", ErrorCode.BAD_FIELD)
    assert exc.seq == (42 if kind == "msg" else 43)  # the body's own sequence number


@pytest.mark.parametrize(("from_client", "body"), [b for b in BAD_BODIES if b[0]], ids=repr)
@pytest.mark.parametrize("kind", ["msg", "batch"])
def test_invalid_client_body_is_rejected_alone(from_client: bool, body: object, kind: str) -> None:
    # docs/protocol.md 2.9: the body is not delivered, the error names its seq,
    # and its sequence number is consumed.
    good = {"type": "ok", "to": "b"}
    if kind == "msg" and not isinstance(body, dict):  # the frame's own field is wrong
        raises({"t": kind, "seq": 42, "m": body}, "client", ErrorCode.BAD_FIELD)
        return
    m = body if kind == "msg" else [good, body, good]
    frame = parse_frame({"t": kind, "seq": 42, "m": m}, sender="client")
    assert isinstance(frame, MessageFrame)
    assert frame.seq == 42
    index = 0 if kind == "msg" else 1
    assert len(frame.bodies) == (1 if kind == "msg" else 3)
    rejected = frame.bodies[index]
    assert isinstance(rejected, Rejected)
    assert rejected.error.code is ErrorCode.BAD_FIELD
    assert rejected.error.seq == 42 + index
    assert rejected.error.close_code is None
    for i, b in enumerate(frame.bodies):
        if i != index:
            assert b == good


@pytest.mark.parametrize("m", [None, [{"type": "x"}], "body", 3])
def test_msg_whose_m_is_not_a_map_is_rejected_whole(m: object) -> None:
    """One rule with batch: a frame whose own field is wrong consumes nothing (§2.9)."""
    frame = {"t": "msg", "seq": 7} if m is None else {"t": "msg", "seq": 7, "m": m}
    exc = raises(frame, "client", ErrorCode.BAD_FIELD)
    assert exc.seq == 7
    assert exc.close_code is None


@pytest.mark.parametrize("m", [None, [], {"type": "m"}, "x"], ids=repr)
def test_batch_with_bad_m_is_rejected_whole(m: object) -> None:
    # A frame whose own fields are wrong consumes nothing.
    exc = raises({"t": "batch", "seq": 5, "m": m}, "client", ErrorCode.BAD_FIELD)
    assert exc.seq == 5


def test_bad_ack_in_msg_names_the_seq() -> None:
    exc = raises({"t": "msg", "seq": 8, "ack": -3, "m": {"type": "m"}}, "hub", ErrorCode.BAD_FIELD)
    assert exc.seq == 8


# --------------------------------------------------------------------------- codecs


def test_codec_registry_and_negotiation() -> None:
    assert CODECS == {JSON_SUBPROTOCOL: JSON, MSGPACK_SUBPROTOCOL: MSGPACK}
    assert CODECS_BY_NAME == {"json": JSON, "msgpack": MSGPACK}
    assert (JSON.binary, MSGPACK.binary) == (False, True)
    assert negotiate([]) is JSON
    assert negotiate([MSGPACK_SUBPROTOCOL, JSON_SUBPROTOCOL]) is MSGPACK
    assert negotiate(["x", " genesis.v1.json "]) is JSON
    assert negotiate(["genesis.v2.json"]) is None


@pytest.mark.parametrize(
    "data", [b"", b"{", b"{'t': 1}", b"\xff\xfe", "nope", b'{"t":"ack"'], ids=repr
)
def test_json_decode_errors_are_bad_frame(data: bytes | str) -> None:
    with pytest.raises(RemoteProtocolError) as excinfo:
        JSON.decode(data)
    assert excinfo.value.code is ErrorCode.BAD_FRAME


def test_json_accepts_text_and_binary() -> None:
    assert JSON.decode('{"t":"ack","seq":1}') == JSON.decode(b'{"t":"ack","seq":1}')


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x81",  # map of one entry, truncated
        b"\xc1",  # never-used type byte
        b"\x81\x01\x02",  # integer map key (strict_map_key)
        msgpack.packb({"t": "ack"}) + b"\x00",  # trailing data
        '{"t":"ack","seq":1}',  # a text frame on the msgpack subprotocol
    ],
    ids=repr,
)
def test_msgpack_decode_errors_are_bad_frame(data: bytes | str) -> None:
    with pytest.raises(RemoteProtocolError) as excinfo:
        MSGPACK.decode(data)
    assert excinfo.value.code is ErrorCode.BAD_FRAME


def test_msgpack_keeps_str_and_bin_apart() -> None:
    value = {"s": "text", "b": b"\x00\x01"}
    assert MSGPACK.decode(MSGPACK.encode(value)) == value


# --------------------------------------------------------------------------- deliver

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.fixed_dictionaries(
    {"type": st.text(min_size=1, max_size=20)},
    optional={
        "data": json_values,
        "to": st.sampled_from(["b", HUB_ID, "comp-1"]),
        "id": st.text(min_size=1, max_size=10),
        "extra": json_values,
    },
)


def expected_frame(kind: str, seq: int, bs: list[dict[str, Any]], ack: int | None) -> Any:
    frame: dict[str, Any] = {"t": kind, "seq": seq}
    if ack is not None:
        frame["ack"] = ack
    frame["m"] = bs[0] if kind == "msg" else bs
    return frame


@codecs
@DETERMINISTIC
@given(
    kind=st.sampled_from(["msg", "batch"]),
    seq=st.integers(1, 2**63 - 1),
    bs=st.lists(bodies, min_size=1, max_size=20),
    ack=st.none() | st.integers(0, 2**63 - 1),
)
def test_deliver_equals_encoding_the_whole_frame(
    codec: Codec, kind: str, seq: int, bs: list[dict[str, Any]], ack: int | None
) -> None:
    if kind == "msg":
        bs = bs[:1]
    frame = expected_frame(kind, seq, bs, ack)
    spliced = codec.frame(kind, seq, [codec.encode(b) for b in bs], ack)
    decoded = codec.decode(spliced)
    assert decoded == codec.decode(codec.encode(frame))
    assert decoded == frame
    assert parse_frame(decoded, sender="hub") == MessageFrame(seq, bs, ack)


@pytest.mark.parametrize("n", [15, 16, 0xFFFF, 0x10000])
def test_msgpack_batch_array_headers(n: int) -> None:
    body = MSGPACK.encode({"type": "m"})
    spliced = MSGPACK.frame("batch", 1, [body] * n, 3)
    decoded = MSGPACK.decode(spliced)
    assert decoded["m"] == [{"type": "m"}] * n
    assert decoded == {"t": "batch", "seq": 1, "ack": 3, "m": [{"type": "m"}] * n}


def test_json_deliver_is_valid_json_text() -> None:
    out = JSON.frame("batch", 3, [JSON.encode({"type": "é"}), JSON.encode({"type": "x"})], None)
    assert orjson.loads(out.decode("utf-8")) == {
        "t": "batch",
        "seq": 3,
        "m": [{"type": "é"}, {"type": "x"}],
    }


def test_json_bodies_hold_only_their_own_size() -> None:
    # orjson's dumps returns its whole output buffer (4 KiB for a tiny body);
    # encoded bodies are retained until acknowledged, so the codec trims them.
    body = {"type": "e", "to": "lg-1", "data": "x" * 64}
    tracemalloc.start()
    try:
        kept = [JSON.encode(body) for _ in range(1000)]
        per_body = tracemalloc.get_traced_memory()[0] / len(kept)
    finally:
        tracemalloc.stop()
    assert orjson.loads(kept[0]) == body
    assert per_body < 3 * len(kept[0]) + 100, per_body  # ~140 B, not ~4100


def test_a_compacted_body_keeps_its_encoded_size_only() -> None:
    """A body waiting for an absent receiver is kept as MessagePack: ``[[], [], ...]``
    decoded takes ~25 times its encoded size. It decodes again to the same body, and
    its size (what retention counts) does not change."""
    body = {"type": "e", "from": "a", "to": "b", "data": [[] for _ in range(20_000)]}
    tracemalloc.start()
    try:
        out = EncodedBody(orjson.loads(orjson.dumps(body)))
        size = out.size
        decoded = tracemalloc.get_traced_memory()[0]
        out.compact()
        compacted = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert compacted < decoded / 5, (decoded, compacted)
    assert out.size == size
    assert out.body == body
    assert orjson.loads(out.encoded(JSON)) == body
    huge = EncodedBody({"type": "e", "data": 2**70})  # MessagePack cannot carry it
    huge.compact()
    assert huge.body["data"] == 2**70
