"""The link protocol (sans-IO) and the defects its move into the core fixed.

Unit tests drive :class:`LinkProtocol` with explicit clocks; integration
tests run the in-memory hub on the mock clock.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from genesis_trio import CloseCode, TranscendentalExternalWebSocket
from genesis_trio._core.codec import JSON, MSGPACK, Codec
from genesis_trio._core.link import Deliver, Idle, LinkProtocol, SendAck
from genesis_trio._core.session import InboundTracker, OutboundLog
from genesis_trio.stores import SQLiteStore
from genesis_trio.testing import LinkFaults, start_memory_hub


def protocol(window: int = 10, ack_delay: float = 0.02) -> LinkProtocol[bytes]:
    return LinkProtocol(
        OutboundLog(capacity=100),
        InboundTracker(),
        window=window,
        max_frame=1 << 20,
        encode=bytes,
        ack_delay=ack_delay,
    )


def receive(p: LinkProtocol[bytes], n: int, now: float) -> bool:
    """``n`` more messages arrive and are released at ``now``; does the writer wake?"""
    start = p.inbound.received + 1
    p.inbound.accept(start, n)
    p.inbound.release(p.inbound.received)
    return p.released(now)


def test_an_isolated_message_is_acknowledged_at_once() -> None:
    p = protocol()
    assert receive(p, 1, now=10.0)
    assert p.poll(10.0) == SendAck(1)
    assert p.poll(10.0) == Idle(math.inf)


def test_a_stream_is_acknowledged_after_the_delay() -> None:
    p = protocol(ack_delay=0.02)
    receive(p, 1, now=10.0)
    assert p.poll(10.0) == SendAck(1)
    assert receive(p, 1, now=10.001)  # close behind: a stream, the delay applies
    assert p.poll(10.001) == Idle(pytest.approx(10.021))
    assert not receive(p, 1, now=10.002)  # already armed: no need to wake
    assert p.poll(10.021) == SendAck(3)


def test_half_a_window_owed_is_acknowledged_at_once() -> None:
    p = protocol(window=10, ack_delay=5.0)
    receive(p, 1, now=0.0)
    p.poll(0.0)  # the isolated first one
    receive(p, 1, now=0.001)
    assert not receive(p, 3, now=0.002)  # 4 owed: not yet half of 10
    assert receive(p, 1, now=0.003)  # 5 owed: wake now
    assert p.poll(0.003) == SendAck(6)


def test_acks_ride_on_deliveries() -> None:
    p = protocol()
    p.outbound.append(b'{"type":"x"}', 0.0)
    receive(p, 2, now=0.0)
    step = p.poll(0.0)
    assert isinstance(step, Deliver)
    assert step.ack == 2
    assert step.kind == "msg"
    assert p.poll(0.0) == Idle(math.inf)


def test_deliveries_respect_the_window_and_the_frame_cap() -> None:
    p = LinkProtocol(
        OutboundLog(capacity=100),
        InboundTracker(),
        window=3,
        max_frame=JSON.overhead(1, None, 2) + 2 * 10,  # exactly two 10-byte bodies per frame
        encode=bytes,
    )
    for _ in range(5):
        p.outbound.append(b"0123456789", 0.0)
    first = p.poll(0.0)
    assert isinstance(first, Deliver)
    assert (first.seq, len(first.bodies)) == (1, 2)
    second = p.poll(0.0)
    assert isinstance(second, Deliver)
    assert (second.seq, len(second.bodies)) == (3, 1)  # the window is full: 3 in flight
    assert isinstance(p.poll(0.0), Idle)
    p.outbound.ack(3)
    third = p.poll(0.0)
    assert isinstance(third, Deliver)
    assert (third.seq, len(third.bodies)) == (4, 2)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    codec=st.sampled_from([JSON, MSGPACK]),
    seq=st.integers(1, 2**63),
    ack=st.none() | st.integers(0, 2**63),
    sizes=st.lists(st.integers(0, 70_000), min_size=1, max_size=20),
)
def test_frame_overhead_is_exact(codec: Codec, seq: int, ack: int | None, sizes: list[int]) -> None:
    """A client's max_size is the frame size, exactly (there used to be a ~64-byte margin)."""
    bodies = [b"x" * n for n in sizes]
    kind = "msg" if len(bodies) == 1 else "batch"
    frame = codec.frame(kind, seq, bodies, ack)
    assert len(frame) == codec.overhead(seq, ack, len(bodies)) + sum(sizes)


def test_a_message_that_exactly_fits_max_size_is_delivered() -> None:
    p = LinkProtocol(
        OutboundLog(capacity=10), InboundTracker(), window=10, max_frame=1024, encode=bytes
    )
    body = b"y" * (1024 - JSON.overhead(1, None, 1))
    p.outbound.append(body, 0.0)
    p.outbound.append(b"z", 0.0)
    step = p.poll(0.0)
    assert isinstance(step, Deliver)
    assert not step.oversized
    assert step.first_size == 1024
    assert len(JSON.frame(step.kind, step.seq, step.bodies, step.ack)) == 1024
    p.outbound.append(body + b"!", 0.0)
    second = p.poll(0.0)
    assert isinstance(second, Deliver)
    assert (second.seq, len(second.bodies), second.oversized) == (2, 1, False)
    third = p.poll(0.0)
    assert isinstance(third, Deliver)
    assert third.oversized
    assert third.first_size == 1025


async def test_the_client_acknowledges_at_half_a_window(autojump_clock: object) -> None:
    """The client used to wait for ack_delay however much was owed (the hub did not)."""
    async with trio.open_nursery() as nursery:
        memory = await start_memory_hub(nursery, window=10, ack_delay=1.0)
        async with memory.client("sink", ack_delay=1.0) as sink:
            started = trio.current_time()
            for n in range(50):
                await memory.hub.send("sink", "n", n)
            got = [(await sink.receive()).data for _ in range(50)]
            assert got == list(range(50))
            # Five windows went through without one 1 s delayed acknowledgement.
            assert trio.current_time() - started < 1.0
        nursery.cancel_scope.cancel()


async def test_a_hub_writer_blocked_on_a_silent_peer_still_ends(autojump_clock: object) -> None:
    """Hypercorn shields sends: a writer blocked on a peer that stopped cannot be cancelled.

    The dead-peer clock lives in the reader, and the watchdog drops the socket,
    so the link ends anyway (4003) within interval + grace + close_timeout.
    """
    async with trio.open_nursery() as nursery:
        memory = await start_memory_hub(
            nursery, heartbeat_interval=5.0, heartbeat_floor=2.0, close_timeout=2.0
        )
        hub = memory.hub
        faults = LinkFaults()
        client = memory.client("mute", faults=faults, lockstep=True, reconnect=False)
        await client.connect()
        faults.stall()  # the peer neither reads nor writes any more
        for _ in range(20):  # more than a lock-step link can hold: the hub's send blocks
            await hub.send("mute", "n", "x" * 1000)
        assert hub.statistics().active_connections == 1
        await trio.sleep(5.0 + 5.0 + 2.0 + 1.0)  # interval + grace + close_timeout (virtual)
        stats = hub.statistics()
        assert stats.active_connections == 0
        assert stats.heartbeat_timeouts == 1
        assert stats.close_codes == {CloseCode.HEARTBEAT_TIMEOUT: 1}
        faults.unstall()
        await client.aclose()
        nursery.cancel_scope.cancel()


def test_a_hub_with_a_store_can_be_built_outside_trio(tmp_path: object) -> None:
    """The README builds hubs at module level; with a store that used to need trio.run."""
    import pathlib

    assert isinstance(tmp_path, pathlib.Path)
    hub = TranscendentalExternalWebSocket(store=SQLiteStore(tmp_path / "outside.sqlite3"))

    async def main() -> str:
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            name = hub.statistics().store
            nursery.cancel_scope.cancel()
        return name

    assert trio.run(main).startswith("sqlite:")
