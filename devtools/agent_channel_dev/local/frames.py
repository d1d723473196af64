"""WebSocket frames as API Gateway counts them (RFC 6455, section 5.2).

API Gateway limits each frame to 32 KB and each message (a frame and its
continuations) to 128 KB, closing the socket with 1009 when either is exceeded,
and it splits what ``@connections`` posts over 32 KB into several frames
(quotas page, footnote **). WebSocket libraries only count messages, so the
gateway reads every frame header itself before the library does:
``FrameGuard`` sits in front of the library's parser, and ``fragments`` writes
a message as API Gateway does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent_channel.config import API_GATEWAY_FRAME_LIMIT, API_GATEWAY_MESSAGE_LIMIT

FRAME_LIMIT = API_GATEWAY_FRAME_LIMIT
MESSAGE_LIMIT = API_GATEWAY_MESSAGE_LIMIT

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_MESSAGE_TOO_BIG = 1009


class Parser(Protocol):
    def feed_data(self, data: bytes) -> Any: ...

    def feed_eof(self) -> Any: ...


@dataclass
class FrameGuard:
    """Reads frame headers on their way to ``inner`` (the library's parser).

    The first violation calls ``on_violation(code, reason)`` once; from then on
    only control frames reach ``inner``, so the closing handshake still completes
    while nothing more is routed.
    """

    inner: Parser
    on_violation: Callable[[int, str], None]
    frame_limit: int = FRAME_LIMIT
    message_limit: int = MESSAGE_LIMIT
    closed_without_status: bool = False
    """The client's close frame carried no status code (API Gateway reports 1005)."""
    _header: bytearray = field(default_factory=bytearray)
    _remaining: int = 0
    _forwarding: bool = True
    _message_size: int = 0
    _violated: bool = False

    def feed_data(self, data: bytes) -> Any:
        forwarded = bytearray()
        view = memoryview(data)
        while view:
            if self._remaining:
                take = min(self._remaining, len(view))
                if self._forwarding:
                    forwarded += view[:take]
                self._remaining -= take
                view = view[take:]
                continue
            self._header.append(view[0])
            view = view[1:]
            length = self._header_length()
            if length is None or len(self._header) < length:
                continue
            header = bytes(self._header)
            self._header.clear()
            self._remaining = self._start_frame(header)
            if self._forwarding:
                forwarded += header
        return self.inner.feed_data(bytes(forwarded))

    def feed_eof(self) -> Any:
        return self.inner.feed_eof()

    def __getattr__(self, name: str) -> Any:
        # Anything else the library asks of its parser goes to the parser.
        return getattr(self.inner, name)

    def _header_length(self) -> int | None:
        if len(self._header) < 2:
            return None
        masked = 4 if self._header[1] & 0x80 else 0
        size = self._header[1] & 0x7F
        return 2 + masked + {126: 2, 127: 8}.get(size, 0)

    def _start_frame(self, header: bytes) -> int:
        """Judge a frame by its header; the payload length follows it."""
        fin, opcode = header[0] & 0x80, header[0] & 0x0F
        size = header[1] & 0x7F
        if size == 126:
            size = struct.unpack("!H", header[2:4])[0]
        elif size == 127:
            size = struct.unpack("!Q", header[2:10])[0]
        control = opcode >= OP_CLOSE
        if control:
            if opcode == OP_CLOSE and size == 0:
                self.closed_without_status = True
            self._forwarding = True
            return int(size)
        if self._violated:
            self._forwarding = False
            return int(size)
        if opcode == OP_BINARY:
            self._violate(CLOSE_UNSUPPORTED_DATA, "Binary frames are not supported")
        elif size > self.frame_limit:
            self._violate(CLOSE_MESSAGE_TOO_BIG, "Frame too big")
        else:
            self._message_size = size if opcode != OP_CONTINUATION else self._message_size + size
            if self._message_size > self.message_limit:
                self._violate(CLOSE_MESSAGE_TOO_BIG, "Message too big")
        if fin:
            self._message_size = 0
        self._forwarding = not self._violated
        return int(size)

    def _violate(self, code: int, reason: str) -> None:
        self._violated = True
        self.on_violation(code, reason)


def frame(payload: bytes, opcode: int, *, fin: bool) -> bytes:
    """One unmasked (server-to-client) frame."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


def fragments(payload: bytes, opcode: int = OP_TEXT, limit: int = FRAME_LIMIT) -> bytes:
    """``payload`` as a message of frames of at most ``limit`` bytes each."""
    chunks = [payload[i : i + limit] for i in range(0, len(payload), limit)] or [b""]
    return b"".join(
        frame(chunk, opcode if i == 0 else OP_CONTINUATION, fin=i == len(chunks) - 1)
        for i, chunk in enumerate(chunks)
    )
