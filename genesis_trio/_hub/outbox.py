"""The hub's own messages: sends, publishes and requests from ``$hub``.

:class:`Outbox` is a part of the hub's facade (mixed into
:class:`~.hub.TranscendentalExternalWebSocket`): each message is validated
like a client's, appended to its targets' sessions through the router
(waiting, bounded, while a target's buffer is full) and, with a session
store, returned once stored. Replies to the hub's requests come back as
messages to ``$hub`` and are matched by :class:`~.requests.HubRequests`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from .._core.codec import JSON, MSGPACK, EncodedBody
from .._core.errors import RemoteProtocolError, RequestTimeout, UnknownComponent
from .._core.frames import HUB_ID, check_body, valid_component_id, valid_topic
from .._core.message import Message
from .journal import Journal, NullJournal
from .requests import HubRequests
from .router import Router
from .sessions import SessionTable

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds :meth:`Outbox.request` waits for a reply unless told otherwise."""


def checked(body: dict[str, Any]) -> EncodedBody:
    """Validate and encode a body the hub's own API builds: a bad one is a ValueError.

    Data that one of the codecs cannot carry (integers beyond 64 bits, nesting
    deeper than JSON encoders go) is refused here, not found by a receiver.
    """
    try:
        check_body(body, from_client=False)
    except RemoteProtocolError as exc:
        raise ValueError(str(exc)) from None
    out = EncodedBody(body)
    try:  # encode for both codecs now: fail here (the caller's error), not at a receiver
        out.encoded(MSGPACK)
        out.encoded(JSON)
    except (TypeError, OverflowError, ValueError) as exc:
        raise ValueError(f"data that cannot be encoded: {exc}") from None
    return out


class Outbox:
    """Sends, publishes and requests from the hub itself (see the module docstring)."""

    router: Router
    sessions: SessionTable
    journal: Journal | NullJournal
    requests: HubRequests

    async def send(self, to: str, type: str, data: Any = None) -> int:
        """Send ``type``/``data`` from the hub (``$hub``) to component ``to``.

        Returns the message's sequence number in that component's session
        once it is stored there (delivered exactly once, now or after it
        resumes; 0 when it is held by another node of a cluster); waits
        (bounded) while its buffer is full. Raises :class:`UnknownComponent`
        when no session for ``to`` exists (in a cluster: on any node), and
        :class:`~genesis_trio.RemoteError` (``limit``) when its inbox on
        another node is full.
        """
        body: dict[str, Any] = {"type": type, "to": to}
        if data is not None:
            body["data"] = data
        return await self._send_body(to, body)

    async def publish(self, topic: str, type: str, data: Any = None) -> int:
        """Publish ``type``/``data`` from the hub to ``topic``; return the subscribers reached."""
        if not valid_topic(topic):
            raise ValueError(f"invalid topic name {topic!r}")
        body: dict[str, Any] = {"type": type, "topic": topic, "from": HUB_ID}
        if data is not None:
            body["data"] = data
        checked(body)
        count = await self.router.deliver_anywhere(body)
        await self.journal.wait_committed()
        return count

    async def request(
        self,
        to: str,
        type: str,
        data: Any = None,
        *,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,  # noqa: ASYNC109 - a per-request deadline
    ) -> Any:
        """Send a request from the hub to ``to`` and return the reply's data.

        Raises :class:`UnknownComponent` (no such session),
        :class:`~genesis_trio.RemoteError` (the component answered with an
        error) or :class:`~genesis_trio.RequestTimeout` after ``timeout`` s.
        """
        rid, pending = self.requests.open()
        body: dict[str, Any] = {"type": type, "to": to, "id": rid}
        if data is not None:
            body["data"] = data
        try:
            with trio.fail_after(timeout):
                await self._send_body(to, body)
                await pending.event.wait()
        except trio.TooSlowError:
            raise RequestTimeout(f"no reply to {type!r} from {to!r} within {timeout} s") from None
        finally:
            self.requests.close(rid)
        if pending.error is not None:
            raise pending.error
        return pending.value

    async def send_message_transcendentally(
        self, component_id: str, message: Message | Mapping[str, Any]
    ) -> bool:
        """Deliver ``message`` from the hub to ``component_id`` (the seed's name for :meth:`send`).

        Returns True once accepted into the component's session (delivered
        exactly once, now or after it resumes), False when no session exists
        for that id. Waits (bounded) while the component's buffer is full.
        """
        body = Message.coerce(message).body()
        body["to"] = component_id
        body.pop("topic", None)
        try:
            await self._send_body(component_id, body)
        except UnknownComponent:
            return False
        return True

    async def _send_body(self, to: str, body: dict[str, Any]) -> int:
        if not valid_component_id(to):
            raise ValueError(f"invalid component id {to!r}")
        body["from"] = HUB_ID
        checked(body)
        return await self.router.send_to(to, body, self.journal.wait_committed)
