"""permessage-deflate with a hard limit on the decompressed size.

wsproto inflates without a bound, and Hypercorn checks its maximum message
size only after a message was inflated: a few kilobytes of compressed zeros
can become gigabytes in memory. :class:`BoundedPerMessageDeflate` inflates at
most ``max_message_size + 1`` bytes per message; past that it stops
inflating and hands on just enough to trip the size check of whoever buffers
the message (Hypercorn's buffer, or the client transport), which closes the
link with 1009 (message too big). :func:`guard_hypercorn` makes Hypercorn's
WebSocket handshake use it, and makes Hypercorn's message buffer report every
oversized message to the hub (so it is counted).
"""

from __future__ import annotations

import contextvars
import zlib
from collections.abc import Callable
from typing import Any

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason

DEFAULT_LIMIT = 1 << 20

inflate_limit: contextvars.ContextVar[int] = contextvars.ContextVar(
    "genesis_trio_inflate_limit", default=DEFAULT_LIMIT
)
"""The limit used by Hypercorn connections started in this context."""


class BoundedPerMessageDeflate(PerMessageDeflate):
    """wsproto's PerMessageDeflate, refusing messages that inflate past a limit."""

    def __init__(self, *args: Any, max_message_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_message_size = (
            max_message_size if max_message_size is not None else inflate_limit.get()
        )
        self._inflated = 0
        self._overflow = False

    def frame_inbound_header(self, proto: Any, opcode: Any, rsv: Any, payload_length: int) -> Any:
        """Reset the per-message count at the first frame of a message."""
        if self._inbound_compressed is None:
            self._inflated = 0
            self._overflow = False
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        if self._overflow:
            return b""
        assert self._decompressor is not None
        room = self.max_message_size - self._inflated + 1
        try:
            out: bytes = self._decompressor.decompress(data, room)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self.max_message_size or self._decompressor.unconsumed_tail:
            # Stop inflating; what we return already exceeds the limit, so the
            # buffering layer closes with 1009. The rest of the message is dropped.
            self._overflow = True
            self._decompressor = None
        return out

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        """Inflate at most up to the limit (plus one byte)."""
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return bytes(data)
        return self._inflate(bytes(data))

    def frame_inbound_complete(self, proto: Any, fin: bool) -> bytes | CloseReason | None:
        """Flush the message's tail, still within the limit."""
        if not fin or not self._inbound_compressed or not self._inbound_is_compressible:
            return super().frame_inbound_complete(proto, fin)
        data = self._inflate(b"\x00\x00\xff\xff")
        if isinstance(data, CloseReason):
            return data
        no_takeover = (
            self.server_no_context_takeover if proto.client else self.client_no_context_takeover
        )
        if no_takeover or self._overflow:
            self._decompressor = None
        self._inbound_compressed = None
        return data


oversize_hook: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "genesis_trio_oversize_hook", default=None
)
"""Called (in Hypercorn connections started in this context) for every oversized message."""


def _counting_buffer_class() -> type:
    from hypercorn.protocol.ws_stream import FrameTooLargeError, WebsocketBuffer

    class CountingWebsocketBuffer(WebsocketBuffer):
        """Hypercorn's message buffer, reporting oversized messages to the hub."""

        def __init__(self, max_length: int) -> None:
            super().__init__(max_length)
            self._hook = oversize_hook.get()

        def extend(self, event: Any) -> None:
            try:
                super().extend(event)
            except FrameTooLargeError:
                if self._hook is not None:
                    self._hook()
                raise

    return CountingWebsocketBuffer


def guard_hypercorn() -> None:
    """Make Hypercorn's WebSocket handshakes negotiate the bounded extension.

    Idempotent. The limit comes from :data:`inflate_limit` in the context of
    the task that started serving (``serve_hub`` sets it).
    """
    from hypercorn.protocol import ws_stream

    if getattr(ws_stream, "_genesis_guarded", False):
        return
    setattr(ws_stream, "PerMessageDeflate", BoundedPerMessageDeflate)  # noqa: B010
    setattr(ws_stream, "WebsocketBuffer", _counting_buffer_class())  # noqa: B010
    setattr(ws_stream, "_genesis_guarded", True)  # noqa: B010
