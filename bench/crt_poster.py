"""``post_to_connection`` over awscrt's HTTP client: a candidate measured beside
the stdlib poster in bench/fanout.py, not used by the functions.

The idea: awscrt, AWS's own C runtime, moves the socket, TLS and HTTP/1.1 work
onto its C event-loop thread, so a fan-out worker thread only signs (the
cached-key signer of ``delivery.poster``, byte-identical to botocore's) and
builds a request, then waits on a future with the interpreter lock released.
What measured: each post still takes the interpreter lock three times on the
event-loop thread (awscrt reads the request body through a Python stream, and
calls back with the status and headers, then the body), and that costs more CPU
per post than the stdlib poster's whole HTTP exchange (docs/BENCHMARKS.md,
"Fan-out"). Its import also costs about 60 ms of CPU and 12 MB.

The same semantics as the stdlib poster: a non-2xx answer raises botocore's
``ClientError`` with the code boto3 would report; a transport failure raises
(awscrt's ``AwsCrtError``, or ``TimeoutError``). awscrt is imported on the first
connection, not at import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from io import BytesIO
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent_channel.delivery.poster import (
    CONNECT_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    CredentialsProvider,
    SigV4Signer,
    _client_error,
    _host_header,
    amz_timestamp,
    connection_path,
    region_of,
)

if TYPE_CHECKING:
    from agent_channel.delivery.rate import RateBudget

EVENT_LOOP_THREADS = 1
"""One C event-loop thread serves every connection: it never holds the
interpreter lock but for the two short callbacks of each answer, and a second
would only compete for the lock with the workers (measured in bench/fanout.py)."""

_RETRY_ON_FRESH = frozenset(
    {
        # A kept-alive connection the server had closed before the request was
        # written: the request never reached it.
        "AWS_ERROR_HTTP_CONNECTION_CLOSED",
        "AWS_ERROR_HTTP_SERVER_CLOSED",
        "AWS_IO_SOCKET_CLOSED",
        "AWS_IO_BROKEN_PIPE",
    }
)


class _Runtime:
    """awscrt's event loop, resolver and TLS context: built once, on first use."""

    def __init__(self, host: str, port: int, https: bool) -> None:
        from awscrt import io

        self.io = io
        group = io.EventLoopGroup(EVENT_LOOP_THREADS)
        self.bootstrap = io.ClientBootstrap(group, io.DefaultHostResolver(group))
        self.socket_options = io.SocketOptions()
        self.socket_options.connect_timeout_ms = int(CONNECT_TIMEOUT_SECONDS * 1000)
        self.host = host
        self.port = port
        self.tls = io.ClientTlsContext(io.TlsContextOptions()) if https else None

    def connect(self) -> Any:
        from awscrt.http import HttpClientConnection

        tls_options = None
        if self.tls is not None:
            tls_options = self.tls.new_connection_options()
            tls_options.set_server_name(self.host)
        return HttpClientConnection.new(
            host_name=self.host,
            port=self.port,
            bootstrap=self.bootstrap,
            socket_options=self.socket_options,
            tls_connection_options=tls_options,
        ).result(CONNECT_TIMEOUT_SECONDS)


class _Answer:
    """What the event-loop thread hands back: status, error type, body."""

    __slots__ = ("body", "error_type", "status")

    def __init__(self) -> None:
        self.status = 0
        self.error_type: str | None = None
        self.body = b""

    def on_response(self, status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
        self.status = status_code
        if status_code >= 300:
            for name, value in headers:
                if name.lower() == "x-amzn-errortype":
                    self.error_type = value
                    break

    def on_body(self, chunk: bytes, **_: Any) -> None:
        self.body += chunk


class CrtConnectionsPoster:
    """``post_to_connection`` over a pool of awscrt keep-alive connections,
    thread-safe; a drop-in for ``delivery.poster.ConnectionsPoster``."""

    def __init__(
        self,
        endpoint_url: str,
        *,
        region: str,
        credentials: CredentialsProvider,
        max_idle: int = 64,
        budget: RateBudget | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        url = urlsplit(endpoint_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint_url!r}")
        self._https = url.scheme == "https"
        self._hostname = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._stage_path = url.path.rstrip("/")
        self._signer = SigV4Signer(
            _host_header(url.hostname, url.port, url.scheme), region_of(url.hostname, region)
        )
        self._credentials = credentials
        self._max_idle = max_idle
        self._budget = budget
        self._clock = clock
        self._idle: list[Any] = []
        self._runtime: _Runtime | None = None
        self._runtime_lock = threading.Lock()

    def post_to_connection(self, *, ConnectionId: str, Data: bytes) -> dict[str, Any]:
        path = connection_path(self._stage_path, ConnectionId)
        headers = self._signer.sign(
            "POST", path, Data, self._credentials(), amz_timestamp(self._clock())
        )
        headers["content-length"] = str(len(Data))
        if self._budget is not None:
            # Every thread of the process draws on the one budget (retries included).
            self._budget.acquire()
        answer = self._exchange(path, list(headers.items()), Data)
        if 200 <= answer.status < 300:
            return {"ResponseMetadata": {"HTTPStatusCode": answer.status}}
        raise _client_error(answer.status, "", answer.error_type, answer.body)

    def _exchange(self, path: str, headers: list[tuple[str, str]], body: bytes) -> _Answer:
        connection, reused = self._checkout()
        try:
            return self._send(connection, path, headers, body)
        except Exception as error:
            connection.close()
            if not (reused and getattr(error, "name", None) in _RETRY_ON_FRESH):
                raise
        # Sent once more on a fresh connection (see _RETRY_ON_FRESH).
        connection = self._connect()
        try:
            return self._send(connection, path, headers, body)
        except BaseException:
            connection.close()
            raise

    def _send(
        self, connection: Any, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> _Answer:
        from awscrt.http import HttpHeaders, HttpRequest

        runtime = self._runtime
        assert runtime is not None
        answer = _Answer()
        request = HttpRequest("POST", path, HttpHeaders(headers), BytesIO(body))
        stream = connection.request(request, answer.on_response, answer.on_body)
        stream.activate()
        try:
            stream.completion_future.result(READ_TIMEOUT_SECONDS)
        except FutureTimeout:
            raise TimeoutError("no answer from @connections") from None
        if connection.is_open():
            self._checkin(connection)
        return answer

    def _checkout(self) -> tuple[Any, bool]:
        while True:
            try:
                # list.pop is atomic under the interpreter lock: no two threads get one connection.
                connection = self._idle.pop()
            except IndexError:
                return self._connect(), False
            if connection.is_open():
                return connection, True

    def _checkin(self, connection: Any) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()

    def _connect(self) -> Any:
        if self._runtime is None:
            with self._runtime_lock:
                if self._runtime is None:
                    self._runtime = _Runtime(self._hostname, self._port, self._https)
        return self._runtime.connect()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
