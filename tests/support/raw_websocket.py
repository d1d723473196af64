"""A WebSocket client that sees and sends single frames.

Client libraries assemble fragmented messages and never send an oversized
frame on purpose; the gateway's frame rules need both. This one runs the
``websockets`` sans-I/O protocol over a plain socket: every frame that arrives
is kept as it came, and frames are sent exactly as asked.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri


@dataclass
class RawSocket:
    protocol: ClientProtocol
    sock: socket.socket
    frames: list[Frame] = field(default_factory=list)
    status: int = 0

    @classmethod
    def connect(cls, url: str, timeout: float = 10.0) -> RawSocket:
        parts = urlsplit(url)
        sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        protocol = ClientProtocol(parse_uri(url), max_size=None)
        raw = cls(protocol, sock)
        protocol.send_request(protocol.connect())
        raw._flush()
        deadline = time.monotonic() + timeout
        while protocol.state is State.CONNECTING and not raw.status:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to the upgrade of {url} in {timeout}s")
            raw._pump(deadline)
        return raw

    @property
    def open(self) -> bool:
        return self.status == 101 and self.protocol.state is State.OPEN

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def _pump(self, deadline: float) -> bool:
        """Read once; False when the socket ended or the deadline passed."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, OSError):
            return False
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self.status = event.status_code
            elif isinstance(event, Frame):
                self.frames.append(event)
        self._flush()
        return bool(data)

    def send_frame(self, opcode: Opcode, payload: bytes, *, fin: bool = True) -> None:
        if opcode is Opcode.TEXT:
            self.protocol.send_text(payload, fin=fin)
        elif opcode is Opcode.BINARY:
            self.protocol.send_binary(payload, fin=fin)
        else:
            self.protocol.send_continuation(payload, fin=fin)
        self._flush()

    def send_text(self, text: str, *, frame_size: int = 32 * 1024) -> None:
        """One message, split into frames of at most ``frame_size`` bytes."""
        data = text.encode()
        chunks = [data[i : i + frame_size] for i in range(0, len(data), frame_size)] or [b""]
        for index, chunk in enumerate(chunks):
            opcode = Opcode.TEXT if index == 0 else Opcode.CONT
            self.send_frame(opcode, chunk, fin=index == len(chunks) - 1)

    def close_without_status(self) -> None:
        self.protocol.send_close()
        self._flush()

    def wait(self, until: float = 5.0, *, count: int | None = None) -> list[Frame]:
        """Read until ``count`` data frames came, the socket closed, or ``until`` s."""
        deadline = time.monotonic() + until
        while time.monotonic() < deadline:
            if count is not None and len(self.data_frames()) >= count:
                break
            if self.protocol.state is State.CLOSED:
                break
            if not self._pump(deadline) and self.protocol.state is not State.OPEN:
                break
        return self.frames

    def data_frames(self) -> list[Frame]:
        return [f for f in self.frames if f.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)]

    @property
    def close_code(self) -> int | None:
        """The code of the server's close frame (what a client's ``onclose`` reports),
        even when the TCP connection ended before the closing handshake did."""
        for received in self.frames:
            if received.opcode is Opcode.CLOSE:
                return Close.parse(bytes(received.data)).code
        return self.protocol.close_code

    def shut(self) -> None:
        self.sock.close()
