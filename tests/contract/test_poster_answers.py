"""The poster reads HTTP/1.1 answers as ``http.client`` would: the status, the
error type header, a body framed by Content-Length, chunked encoding or the
connection's close, and whether the connection may be kept alive. Each answer is
also parsed by ``http.client`` itself, and the two must agree."""

from __future__ import annotations

import http.client
import io
import socket
from typing import Any

import pytest

from agent_channel.delivery.poster import _read_answer

ANSWERS = {
    "ok, empty": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "gone": (
        b"HTTP/1.1 410 Gone\r\nContent-Type: application/json\r\n"
        b"x-amzn-ErrorType: GoneException\r\nContent-Length: 27\r\n\r\n"
        b'{"message":"GoneException"}'
    ),
    "throttled, chunked": (
        b"HTTP/1.1 429 Too Many Requests\r\nx-amzn-ErrorType: LimitExceededException:x\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\n{"mes\r\n7\r\nsage":1\r\n1\r\n}\r\n'
        b"0\r\nTrailer: t\r\n\r\n"
    ),
    "too large, closing": (
        b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    ),
    "no length: read to close": b'HTTP/1.1 500 Internal Server Error\r\n\r\n{"message":"boom"}',
    "HTTP/1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.0 keep-alive": (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    ),
    "no content": b"HTTP/1.1 204 No Content\r\n\r\n",
    "interim then final": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    ),
}


class _FakeSocket:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, *_: Any, **__: Any) -> io.BytesIO:
        return io.BytesIO(self.data)


def _http_client(data: bytes) -> tuple[int, str | None, bytes, bool]:
    response = http.client.HTTPResponse(_FakeSocket(data), method="POST")  # type: ignore[arg-type]
    response.begin()
    return (
        response.status,
        response.getheader("x-amzn-ErrorType"),
        response.read(),
        response.will_close,
    )


@pytest.mark.parametrize("name", list(ANSWERS))
def test_answers_read_as_http_client_reads_them(name: str) -> None:
    data = ANSWERS[name]
    answer = _read_answer(io.BytesIO(data))
    assert (
        answer.status,
        answer.getheader("x-amzn-ErrorType"),
        answer.body,
        answer.will_close,
    ) == _http_client(data)


def test_two_answers_in_a_row_on_one_connection() -> None:
    reader = io.BytesIO(ANSWERS["gone"] + ANSWERS["ok, empty"])
    assert _read_answer(reader).status == 410
    assert _read_answer(reader).status == 200
    assert reader.read() == b""


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", http.client.RemoteDisconnected),
        (b"garbage\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/1.1 abc OK\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", http.client.IncompleteRead),
        (b"HTTP/1.1 200 OK\r\n" + b"a: b\r\n" * 101 + b"\r\n", http.client.HTTPException),
    ],
)
def test_a_broken_answer_raises_what_http_client_raises(
    data: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        _read_answer(io.BytesIO(data))


def test_a_reader_on_a_real_socket() -> None:
    left, right = socket.socketpair()
    with left, right:
        right.sendall(ANSWERS["gone"])
        reader = left.makefile("rb")
        assert _read_answer(reader).getheader("X-Amzn-ErrorType") == "GoneException"
