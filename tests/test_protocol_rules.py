"""Conformance, continued: the rules of docs/protocol.md §8 the first suite did not cover.

Same method as tests/test_protocol_conformance.py: a raw client written from
the document, frames built by hand, the hub on a real socket. Each test names
the rule it checks (H1..H19); a last test checks that every rule is named by
some test.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

from genesis_trio import CloseCode
from genesis_trio._core.codec import JSON as JSON_CODEC
from genesis_trio.testing import RunningHub

from .test_protocol_conformance import RawClient, clients, run

HERE = pathlib.Path(__file__).resolve().parent
PROTOCOL = HERE.parent / "docs" / "protocol.md"


async def test_an_isolated_message_is_acknowledged_without_delay(hub_factory: Any) -> None:
    """H5: with a 5 s ack delay, one message alone is still acknowledged at once."""
    slow_acks: RunningHub = await hub_factory(ack_delay=5.0)

    def scenario(url: str) -> None:
        with clients() as keep:
            keep(RawClient.join(url, "peer"))
            alice = keep(RawClient.join(url, "alice"))
            seq = alice.send_msg({"type": "x", "to": "peer"})
            while alice.hub_ack < seq:
                alice.pump(timeout=1.0)  # TimeoutError (a failure) if it waited the delay

    await run(scenario, slow_acks.url)


async def test_stale_and_early_acks_are_legal(hub: RunningHub) -> None:
    """H6: an ack below an earlier one is ignored; one above hello.ack, before the resend, too."""

    def scenario(url: str) -> None:
        with clients() as keep:
            sender = keep(RawClient.join(url, "sender"))
            alice = keep(RawClient.join(url, "alice"))
            sid, epoch = alice.welcome["sid"], alice.welcome["epoch"]
            for i in range(1, 6):
                sender.send_msg({"type": "n", "to": "alice", "data": i})
            assert [alice.recv_body()[0] for _ in range(5)] == [1, 2, 3, 4, 5]
            alice.ack(3)
            alice.ack(1)  # stale: ignored
            alice.sync()
            alice.drop()
            again = keep(RawClient.open(url))
            welcome = again.hello("alice", sid=sid, epoch=epoch, ack=3)
            assert welcome["recovered"] is True
            again.ack(5)  # received on the old link, not yet sent again on this one
            again.sync()
            assert not [e for e in again.errors() if e["code"] == "sequence"]
            sender.send_msg({"type": "n", "to": "alice", "data": 6})
            while True:  # duplicates of 4 and 5 may come first; 6 must come
                seq, body = again.recv_body()
                if body["data"] == 6:
                    assert seq == 6
                    break

    await run(scenario, hub.url)


async def test_an_ack_of_a_number_never_sent_draws_sequence_then_4007(hub: RunningHub) -> None:
    """H6: the error frame `sequence` explains the close."""

    def scenario(url: str) -> None:
        with clients() as keep:
            alice = keep(RawClient.join(url, "alice"))
            alice.send_frame({"t": "ack", "seq": 3})
            error = alice.next("error")
            assert error["code"] == "sequence"
            assert alice.expect_close() == CloseCode.SESSION_VIOLATION

    await run(scenario, hub.url)


async def test_a_message_beyond_the_window_closes_4007(hub_factory: Any) -> None:
    """H7: at most `window` unacknowledged messages."""
    narrow: RunningHub = await hub_factory(window=4)

    def scenario(url: str) -> None:
        with clients() as keep:
            keep(RawClient.join(url, "peer"))
            alice = keep(RawClient.join(url, "alice"))
            assert alice.welcome["window"] == 4
            alice.send_batch([{"type": "x", "to": "peer", "data": i} for i in range(5)])
            error = alice.next("error")
            assert error["code"] == "sequence"
            assert "window" in error["msg"]
            assert alice.expect_close() == CloseCode.SESSION_VIOLATION

    await run(scenario, narrow.url)


@pytest.mark.parametrize("m", [[{"type": "x", "to": "peer"}], "text", None])
async def test_a_msg_whose_m_is_not_a_map_consumes_no_number(hub: RunningHub, m: Any) -> None:
    """H8: a frame whose own field is wrong is rejected whole (as a batch with a bad m)."""

    def scenario(url: str) -> None:
        with clients() as keep:
            peer = keep(RawClient.join(url, "peer"))
            alice = keep(RawClient.join(url, "alice"))
            frame: dict[str, Any] = {"t": "msg", "seq": 1}
            if m is not None:
                frame["m"] = m
            alice.send_frame(frame)
            error = alice.next("error")
            assert (error["code"], error.get("seq")) == ("bad_field", 1)
            alice.send_msg({"type": "x", "to": "peer", "data": "the real one"}, seq=1)
            assert peer.recv_body() == (
                1,
                {"type": "x", "to": "peer", "from": "alice", "data": "the real one"},
            )
            alice.wait_acked(1)

    await run(scenario, hub.url)


async def test_ping_ids_up_to_2_to_the_53(hub: RunningHub) -> None:
    """H9: ids from 0 to 2**53 - 1 are answered; a larger one gets bad_field."""

    def scenario(url: str) -> None:
        with clients() as keep:
            alice = keep(RawClient.join(url, "alice"))
            for ping_id in (0, 2**53 - 1):
                alice.send_frame({"t": "ping", "id": ping_id})
                assert alice.next("pong")["id"] == ping_id
            alice.send_frame({"t": "ping", "id": 2**53})
            error = alice.next("error")
            assert error["code"] == "bad_field"

    await run(scenario, hub.url)


async def test_messages_to_the_hub_and_to_nobody(hub: RunningHub) -> None:
    """H11: $hub without a handler, and an unknown component, are answered as documented."""

    def scenario(url: str) -> None:
        with clients() as keep:
            alice = keep(RawClient.join(url, "alice"))
            asked = alice.send_msg({"type": "nope", "to": "$hub", "id": "q1"})
            _, reply = alice.recv_body()
            assert reply["re"] == "q1"
            assert reply["from"] == "$hub"
            assert reply["error"]["code"] == "no_handler"
            told = alice.send_msg({"type": "nope", "to": "$hub"})
            error = alice.next("error")
            assert (error["code"], error.get("seq")) == ("no_handler", told)
            lost = alice.send_msg({"type": "x", "to": "nobody", "id": "q2"})
            error = alice.next("error")
            assert (error["code"], error.get("seq"), error.get("id")) == (
                "unknown_target",
                lost,
                "q2",
            )
            alice.wait_acked(lost)  # every one of those numbers was consumed
            assert asked < told < lost

    await run(scenario, hub.url)


async def test_resume_reasons(hub: RunningHub) -> None:
    """H12: an inexact resume says why: unknown, epoch, ack; the epoch moves on."""

    def scenario(url: str) -> None:
        with clients() as keep:
            alice = keep(RawClient.join(url, "alice"))
            sid, epoch = alice.welcome["sid"], alice.welcome["epoch"]
            alice.drop()
            wrong_epoch = keep(RawClient.open(url))
            welcome = wrong_epoch.hello("alice", sid=sid, epoch=epoch + 5, ack=0)
            assert (welcome["recovered"], welcome["reason"]) == (False, "epoch")
            assert (welcome["sid"], welcome["epoch"]) == (sid, epoch + 1)
            wrong_epoch.drop()
            impossible = keep(RawClient.open(url))
            welcome = impossible.hello("alice", sid=sid, epoch=epoch + 1, ack=99)
            assert (welcome["recovered"], welcome["reason"]) == (False, "ack")
            assert welcome["epoch"] == epoch + 2
            impossible.drop()
            exact = keep(RawClient.open(url))
            welcome = exact.hello("alice", sid=sid, epoch=epoch + 2, ack=0)
            assert welcome["recovered"] is True
            assert "reason" not in welcome
            stranger = keep(RawClient.open(url))
            welcome = stranger.hello("bob", sid="no-such-session", epoch=1, ack=0)
            assert (welcome["recovered"], welcome["reason"]) == (False, "unknown")

    await run(scenario, hub.url)


async def test_a_takeover_carries_over_the_unacknowledged_messages(hub: RunningHub) -> None:
    """H13: the new session gets them, renumbered, and they are counted."""

    def scenario(url: str) -> None:
        with clients() as keep:
            sender = keep(RawClient.join(url, "sender"))
            old = keep(RawClient.join(url, "alice"))
            for i in range(2):
                sender.send_msg({"type": "n", "to": "alice", "data": i})
            assert [old.recv_body()[1]["data"] for _ in range(2)] == [0, 1]  # never acked
            new = keep(RawClient.join(url, "alice"))
            assert old.expect_close() == CloseCode.REPLACED
            assert [new.recv_body() for _ in range(2)] == [
                (1, {"type": "n", "to": "alice", "from": "sender", "data": 0}),
                (2, {"type": "n", "to": "alice", "from": "sender", "data": 1}),
            ]

    await run(scenario, hub.url)
    assert hub.hub.get_stats()["messages_carried_over"] == 2


async def test_max_size_is_the_frame_size_exactly(hub: RunningHub) -> None:
    """H15: a frame of exactly hello.max_size arrives; one byte more becomes a true notice."""

    def scenario(url: str) -> None:
        with clients() as keep:
            sender = keep(RawClient.join(url, "sender"))
            tiny = keep(RawClient.open(url))
            tiny.send_frame({"t": "hello", "v": 1, "id": "tiny", "max_size": 1024})
            tiny.welcome = tiny.next("welcome")

            def body_of(frame_size: int) -> dict[str, Any]:
                envelope = {"type": "big", "to": "tiny", "from": "sender", "data": ""}
                bare = len(JSON_CODEC.encode(envelope)) + JSON_CODEC.overhead(1, None, 1)
                return {"type": "big", "to": "tiny", "data": "x" * (frame_size - bare)}

            sender.send_msg(body_of(1024))
            seq, body = tiny.recv_body()
            assert seq == 1
            assert "error" not in body
            sender.send_msg(body_of(1025), ack=None)
            seq, body = tiny.recv_body()
            assert seq == 2
            assert body["error"]["code"] == "too_large"
            numbers = [int(n) for n in re.findall(r"\d+", body["error"]["msg"])]
            assert 1024 in numbers
            assert max(numbers) <= 1026  # the true size (its ack field may add a digit)
            sender.send_msg({**body_of(1100), "id": "big-request"})
            seq, reply = sender.recv_body()
            assert (reply["re"], reply["from"], reply["error"]["code"]) == (
                "big-request",
                "$hub",
                "too_large",
            )

    await run(scenario, hub.url)


async def test_data_a_json_client_cannot_receive_becomes_a_notice(hub: RunningHub) -> None:
    """H19: MessagePack bytes to a JSON client arrive as a `not_representable` notice.

    Before the fix the hub's writer raised, the link closed 1011 and the
    message was replayed on every resume: one message wedged its receiver.
    """

    def scenario(url: str) -> None:
        with clients() as keep:
            reader = keep(RawClient.join(url, "reader"))
            sender = keep(RawClient.join(url, "sender", subprotocols=("genesis.v1.msgpack",)))
            sender.send_msg({"type": "blob", "to": "reader", "data": b"\x00\x01"})
            sender.send_msg({"type": "blob", "to": "reader", "data": b"\x02", "id": "r1"})
            sender.send_msg({"type": "text", "to": "reader", "data": "after"})
            first = reader.recv_body()
            assert first[0] == 1
            assert first[1]["error"]["code"] == "not_representable"
            assert "bytes" in first[1]["error"]["msg"]
            assert reader.recv_body()[1]["error"]["code"] == "not_representable"
            assert reader.recv_body() == (
                3,
                {"type": "text", "to": "reader", "from": "sender", "data": "after"},
            )
            _, reply = sender.recv_body()
            assert (reply["re"], reply["from"], reply["error"]["code"]) == (
                "r1",
                "$hub",
                "not_representable",
            )

    await run(scenario, hub.url)
    stats = hub.hub.get_stats()
    assert stats["messages_not_representable"] == 2
    assert 1011 not in stats["close_codes"]


def test_every_hub_rule_is_tested() -> None:
    """Each H rule of protocol.md §8 is named by a test docstring in the suite."""
    rules = set(re.findall(r"\*\*(H\d+)\*\*", PROTOCOL.read_text()))
    assert rules == {f"H{i}" for i in range(1, len(rules) + 1)}
    named: set[str] = set()
    for name in (
        "test_protocol_conformance.py",
        "test_protocol_rules.py",
        "test_bad_input.py",
        "test_robustness.py",
        "test_security.py",
    ):
        named |= set(re.findall(r"\b(H\d+)\b", (HERE / name).read_text()))
    assert rules <= named, f"rules no test names: {sorted(rules - named)}"
