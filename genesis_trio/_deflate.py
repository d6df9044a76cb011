"""permessage-deflate with a hard limit on the decompressed size.

wsproto inflates without a bound, and Hypercorn checks its maximum message
size only after a message was inflated: a few kilobytes of compressed zeros
can become gigabytes in memory. :class:`BoundedPerMessageDeflate` inflates at
most ``max_message_size + 1`` bytes per message and fails the connection with
1009 (message too big) beyond that. The client transport uses it directly;
:func:`guard_hypercorn` makes Hypercorn's WebSocket handshake use it.
"""

from __future__ import annotations

import contextvars
import zlib
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

    def frame_inbound_header(self, proto: Any, opcode: Any, rsv: Any, payload_length: int) -> Any:
        """Reset the per-message count at the first frame of a message."""
        if self._inbound_compressed is None:
            self._inflated = 0
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        """Inflate at most up to the limit; beyond it, fail with 1009."""
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return bytes(data)
        assert self._decompressor is not None
        room = self.max_message_size - self._inflated + 1
        try:
            out: bytes = self._decompressor.decompress(bytes(data), room)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self.max_message_size or self._decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(self, proto: Any, fin: bool) -> bytes | CloseReason | None:
        """Flush the message's tail, still within the limit."""
        if not fin or not self._inbound_compressed or not self._inbound_is_compressible:
            return super().frame_inbound_complete(proto, fin)
        assert self._decompressor is not None
        room = self.max_message_size - self._inflated + 1
        try:
            data = self._decompressor.decompress(b"\x00\x00\xff\xff", room)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(data)
        if self._inflated > self.max_message_size or self._decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        no_takeover = (
            self.server_no_context_takeover if proto.client else self.client_no_context_takeover
        )
        if no_takeover:
            self._decompressor = None
        self._inbound_compressed = None
        return data


def guard_hypercorn() -> None:
    """Make Hypercorn's WebSocket handshakes negotiate the bounded extension.

    Idempotent. The limit comes from :data:`inflate_limit` in the context of
    the task that started serving (``serve_hub`` sets it).
    """
    from hypercorn.protocol import ws_stream

    setattr(ws_stream, "PerMessageDeflate", BoundedPerMessageDeflate)  # noqa: B010
