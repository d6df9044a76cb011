"""The per-frame pipeline of a link: decode, validate, contain errors, act.

:class:`Pipeline` is what a link's reader calls for every frame it
receives. It never waits (the reader must keep reading: a message that must
wait for room is held in the link's backlog by the router), so it is a plain
function call per frame. Every failure is contained here: the sender gets an
error frame, and a close code when the link cannot continue; no other link
is harmed (docs/protocol.md §5).
"""

from __future__ import annotations

import logging

import trio

from .._core.errors import CloseCode, ErrorCode, RemoteProtocolError
from .._core.frames import (
    Ack,
    Bye,
    Error,
    Hello,
    MessageFrame,
    Ping,
    Pong,
    Subscribe,
    parse_frame,
)
from .link import HubLink
from .router import Router
from .sessions import SessionTable
from .stats import HubCounters

log = logging.getLogger("genesis_trio.hub")


class Pipeline:
    """Turns each received frame into the router's and the session table's actions."""

    def __init__(self, router: Router, sessions: SessionTable, counters: HubCounters) -> None:
        self.router = router
        self.sessions = sessions
        self.counters = counters

    def process(self, data: str | bytes, link: HubLink) -> None:
        """Decode, validate, route and record one WebSocket message of ``link``."""
        c = self.counters
        router = self.router
        try:
            frame = parse_frame(link.codec.decode(data), sender="client")
            kind = type(frame)
            if kind is MessageFrame:
                assert isinstance(frame, MessageFrame)
                router.admit(link, frame, len(data))
            elif kind is Ack:
                assert isinstance(frame, Ack)
                router.apply_ack(link.session, frame.seq)
            elif kind is Ping:
                assert isinstance(frame, Ping)
                link.queue_control(link.codec.encode(Pong(frame.id).wire()))
            elif kind is Pong:
                assert isinstance(frame, Pong)
                rtt = link.heartbeat.pong(frame.id, trio.current_time())
                if rtt is not None:
                    c.rtt.add(rtt)
                    c.rtt_seconds.observe(rtt)
            elif kind is Subscribe:
                assert isinstance(frame, Subscribe)
                if frame.remove:
                    self.sessions.unsubscribe(link.session, frame.topics)
                else:
                    allowed = router.may_subscribe(link, frame.topics)
                    refused = self.sessions.subscribe(link.session, allowed)
                    if refused:
                        text = ", ".join(refused)
                        link.report(
                            Error(
                                ErrorCode.LIMIT,
                                f"subscription limit reached: not subscribed to {text}"[:200],
                            )
                        )
            elif kind is Bye:
                if link.backlog:  # after the messages sent before it
                    link.hold(None, 0, 0)
                else:
                    router.say_bye(link)
            elif kind is Hello:
                raise RemoteProtocolError("hello was already received on this link")
            elif kind is Error:
                assert isinstance(frame, Error)
                log.debug(  # the client's words: shortened and quoted (no forged lines)
                    "client %s reported error %r: %r",
                    link.session.component_id,
                    frame.code[:64],
                    frame.msg[:200],
                )
        except RemoteProtocolError as exc:
            c.errors_contained += 1
            link.report(Error(exc.code, str(exc), exc.seq))
            if exc.close_code is not None:
                link.close_soon(exc.close_code, str(exc)[:120])
            elif link.count_bad_frame(trio.current_time()):
                link.close_soon(CloseCode.TOO_MANY_ERRORS, "too many malformed frames")
        except Exception as exc:
            c.errors_contained += 1
            log.exception(
                "contained error while processing a frame from %s", link.session.component_id
            )
            link.report(
                Error(ErrorCode.INTERNAL, f"internal error (contained): {type(exc).__name__}")
            )
