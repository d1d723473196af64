"""A lean ``@connections`` client: ``post_to_connection`` at a fraction of boto3's CPU.

Fan-out on Lambda is bound by client CPU, not by latency: through boto3 a post
costs 0.7-1.1 ms of CPU (botocore's request and session wrappers, event hooks,
urllib3), and a 256 MB function has about a sixth of a vCPU. This client sends
the same request with the standard library only:

- SigV4 by hand, byte-identical to botocore's ``SigV4Auth`` for this request
  (the same canonical request, signed headers ``host;x-amz-date`` plus
  ``x-amz-security-token`` with session credentials; proven in
  tests/contract/test_poster_signing.py), with the day's signing key derived once
  per (credentials, day) instead of four HMACs per post;
- HTTP/1.1 keep-alive sockets kept in a pool shared by the fan-out threads (a
  TLS handshake per post would cost more than the post), each request written
  in one send with TCP_NODELAY (as urllib3 sets it), each answer parsed by
  ``http.client``.

It answers like boto3's client, so fan-out's semantics do not change: a non-2xx
answer raises botocore's ``ClientError`` with the error code (``GoneException``
for 410, ``TooManyRequestsException``/``LimitExceededException`` for 429,
``PayloadTooLargeException`` for 413, ...), and a transport failure raises the
transport's exception. Credentials are read per post from a provider (botocore's
credential chain in production), so rotated session credentials are picked up.

Why not a library: awscrt (AWS's C runtime) posts for less CPU still, but its
import costs about 60 ms of CPU and 12 MB, paid at the first post of every cold
replay or $default invocation, at a sixth of a vCPU; urllib3 with a cached key
measured 0.37 ms per post, about twice this. Both are measured beside this one in
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, urlsplit

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from agent_channel.delivery.rate import RateBudget

SERVICE = "execute-api"
OPERATION = "PostToConnection"
ALGORITHM = "AWS4-HMAC-SHA256"
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 10.0
"""Below the shortest fan-out function timeout (15 s): a hung post must fail as a
post, not time the invocation out."""

ERROR_CODES_BY_STATUS = {
    400: "BadRequestException",
    403: "ForbiddenException",
    410: "GoneException",
    413: "PayloadTooLargeException",
    429: "TooManyRequestsException",
}
"""When an answer carries no ``x-amzn-ErrorType``: the code boto3 would report."""


class Credentials(NamedTuple):
    access_key: str
    secret_key: str
    token: str | None


CredentialsProvider = Callable[[], Credentials]


def default_credentials() -> CredentialsProvider:
    """botocore's default credential chain, read afresh on every call.

    The chain's first provider is the environment, and on Lambda the function
    role's session credentials are always there: they are read directly, which
    costs nothing at init. Only without them (a developer's profile, say) is the
    rest of the chain resolved, once, on the first post, and its refreshable
    credentials are asked for their current set on every post.
    """
    chain: list[Any] = []

    def provide() -> Credentials:
        access_key = os.environ.get("AWS_ACCESS_KEY_ID")
        secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if access_key and secret_key:
            return Credentials(access_key, secret_key, os.environ.get("AWS_SESSION_TOKEN") or None)
        if not chain:
            import botocore.session

            found = botocore.session.get_session().get_credentials()
            if found is None:
                raise RuntimeError("no AWS credentials found for the @connections client")
            chain.append(found)
        frozen = chain[0].get_frozen_credentials()
        return Credentials(frozen.access_key or "", frozen.secret_key or "", frozen.token)

    return provide


class SigV4Signer:
    """SigV4 for one host, region and service, with the signing key cached."""

    def __init__(self, host: str, region: str, service: str = SERVICE) -> None:
        self.host = host
        self.region = region
        self.service = service
        self._key: tuple[tuple[str, str], bytes] | None = None

    def signing_key(self, secret_key: str, day: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == (secret_key, day):
            return cached[1]
        key = _hmac(f"AWS4{secret_key}".encode(), day)
        for part in (self.region, self.service, "aws4_request"):
            key = _hmac(key, part)
        # One tuple assignment: a thread reading it sees an old or a new pair, never a mix.
        self._key = ((secret_key, day), key)
        return key

    def sign(
        self, method: str, path: str, body: bytes, credentials: Credentials, timestamp: str
    ) -> dict[str, str]:
        """The headers to send (host, x-amz-date, the token, Authorization) for a
        request with no query string; ``path`` as sent on the wire."""
        headers = {"host": self.host, "x-amz-date": timestamp}
        if credentials.token:
            headers["x-amz-security-token"] = credentials.token
        # Already in sorted order: host < x-amz-date < x-amz-security-token.
        names = ";".join(headers)
        canonical = "\n".join(
            (
                method,
                # Non-S3 services sign the path encoded once more (botocore's
                # SigV4Auth._normalize_url_path), so "%3D" is signed as "%253D".
                quote(path, safe="/~"),
                "",
                "".join(f"{name}:{value}\n" for name, value in headers.items()),
                names,
                hashlib.sha256(body).hexdigest(),
            )
        )
        day = timestamp[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        string_to_sign = "\n".join(
            (ALGORITHM, timestamp, scope, hashlib.sha256(canonical.encode()).hexdigest())
        )
        signature = hmac.new(
            self.signing_key(credentials.secret_key, day), string_to_sign.encode(), "sha256"
        ).hexdigest()
        headers["authorization"] = (
            f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={names}, Signature={signature}"
        )
        return headers


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), "sha256").digest()


def amz_timestamp(now: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def connection_path(stage_path: str, connection_id: str) -> str:
    """The request path, encoded as botocore's serializer encodes it."""
    return f"{stage_path}/@connections/{quote(connection_id, safe='-_.~')}"


def _host_header(hostname: str, port: int | None, scheme: str) -> str:
    """The Host header botocore signs: the port only when it is not the scheme's default."""
    if port is None or (scheme, port) in (("https", 443), ("http", 80)):
        return hostname
    return f"{hostname}:{port}"


def region_of(host: str, fallback: str) -> str:
    """``<api>.execute-api.<region>.amazonaws.com`` names its region; any other
    host (a custom domain, a local server) signs with the configured one."""
    parts = host.split(".")
    if len(parts) >= 4 and parts[1] == SERVICE:
        return parts[2]
    return fallback


class ConnectionsPoster:
    """``post_to_connection`` over a pool of keep-alive connections, thread-safe."""

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
        self._address = (url.hostname, url.port)
        self._stage_path = url.path.rstrip("/")
        host = _host_header(url.hostname, url.port, url.scheme)
        self._signer = SigV4Signer(host, region_of(url.hostname, region))
        self._credentials = credentials
        self._max_idle = max_idle
        self._budget = budget
        self._clock = clock
        self._idle: list[_Connection] = []
        self._tls: ssl.SSLContext | None = None

    def post_to_connection(self, *, ConnectionId: str, Data: bytes) -> dict[str, Any]:
        path = connection_path(self._stage_path, ConnectionId)
        headers = self._signer.sign(
            "POST", path, Data, self._credentials(), amz_timestamp(self._clock())
        )
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        # Request line, headers and body in one send: one system call, and no
        # small second segment for Nagle's algorithm to hold back.
        request = f"POST {path} HTTP/1.1\r\n{head}content-length: {len(Data)}\r\n\r\n"
        if self._budget is not None:
            # Every thread of the process draws on the one budget (retries included).
            self._budget.acquire()
        status, reason, error_type, body = self._exchange(request.encode() + Data)
        if 200 <= status < 300:
            return {"ResponseMetadata": {"HTTPStatusCode": status}}
        raise _client_error(status, reason, error_type, body)

    def _exchange(self, request: bytes) -> tuple[int, str, str | None, bytes]:
        connection, reused = self._checkout()
        try:
            response = connection.exchange(request)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            connection.close()
            if not reused:
                raise
            # A kept-alive connection the server had already closed: the request
            # never reached it, so it is sent once more on a fresh connection.
            connection = self._fresh()
            try:
                response = connection.exchange(request)
            except BaseException:
                connection.close()
                raise
        except BaseException:
            connection.close()
            raise
        try:
            answer = response.read()
        except BaseException:
            connection.close()
            raise
        error_type = response.getheader("x-amzn-ErrorType")
        if response.will_close:
            connection.close()
        else:
            self._checkin(connection)
        return response.status, response.reason, error_type, answer

    def _checkout(self) -> tuple[_Connection, bool]:
        try:
            # list.pop is atomic under the interpreter lock: no two threads get one connection.
            return self._idle.pop(), True
        except IndexError:
            return self._fresh(), False

    def _checkin(self, connection: _Connection) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()

    def _fresh(self) -> _Connection:
        host, port = self._address
        if not self._https:
            return _Connection(host, port or 80, None)
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return _Connection(host, port or 443, self._tls)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class _Connection:
    """One keep-alive socket: a request goes out in one send, http.client parses
    the answer."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)
            sock.settimeout(READ_TIMEOUT_SECONDS)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def exchange(self, request: bytes) -> http.client.HTTPResponse:
        self.sock.sendall(request)
        response = http.client.HTTPResponse(self.sock, method="POST")
        response.begin()
        return response

    def close(self) -> None:
        self.sock.close()


def _client_error(status: int, reason: str, error_type: str | None, body: bytes) -> ClientError:
    """The ClientError boto3 would raise for this answer."""
    code = (error_type or "").split(":", 1)[0] or ERROR_CODES_BY_STATUS.get(status, str(status))
    message = reason
    try:
        parsed = json.loads(body) if body else {}
        if isinstance(parsed, dict):
            message = str(parsed.get("message") or parsed.get("Message") or reason)
    except ValueError:
        pass
    answer: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(answer, OPERATION)
