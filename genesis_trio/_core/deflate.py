"""permessage-deflate with a hard limit on the decompressed size.

wsproto inflates without a bound, and Hypercorn checks its maximum message
size only after a message was inflated: a few kilobytes of compressed zeros
can become gigabytes in memory. :class:`BoundedPerMessageDeflate` inflates at
most ``max_message_size + 1`` bytes per message; past that it stops
inflating and hands on just enough to trip the size check of whoever buffers
the message (Hypercorn's buffer, or the client transport), which closes the
link with 1009 (message too big). The hub's Hypercorn negotiates it
(``_hypercorn.guard_hypercorn``); the client's transport uses it directly.
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

    def release(self) -> None:
        """Free the zlib state now (the link has ended)."""
        self._compressor = None
        self._decompressor = None
        self._overflow = True


def release_extensions(extensions: list[BoundedPerMessageDeflate]) -> None:
    """Drop the zlib state of ended links' extensions (hundreds of KiB each).

    A closed link's objects form reference cycles; with the cyclic collector
    tuned to run rarely they would keep their zlib buffers alive for long.
    """
    for extension in extensions:
        extension.release()
