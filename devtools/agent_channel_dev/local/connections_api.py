"""The API Gateway Management API (``@connections``) served locally, on aiohttp.

It answers exactly as boto3's ``apigatewaymanagementapi`` client expects when
built with ``endpoint_url=http://HOST:PORT/{stage}``: ``POST`` posts a message,
``GET`` describes a connection, ``DELETE`` closes it. A connection that is gone
gets a real ``410`` with ``x-amzn-ErrorType: GoneException`` (botocore reads the
error code of this restJson service from that header), so code under test sees
the same ``GoneException`` it would see on AWS. moto answers 200 for any id,
which is why delivery is tested against this server instead.

The sink behind the routes is pluggable: the local gateway plugs in its real
WebSocket connections, tests and the benchmark plug in ``MemorySink``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web

from agent_channel.config import API_GATEWAY_MESSAGE_LIMIT
from agent_channel_dev.local import sigv4

MESSAGE_LIMIT = API_GATEWAY_MESSAGE_LIMIT
"""API Gateway refuses to post a message over 128 KB (413 PayloadTooLargeException)."""


class ConnectionSink(Protocol):
    async def send(self, connection_id: str, data: bytes) -> bool:
        """Deliver ``data``; False if the connection is gone (answered 410)."""

    async def close(self, connection_id: str) -> bool:
        """Close the connection; False if it is gone (answered 410)."""

    def describe(self, connection_id: str) -> dict[str, Any] | None:
        """``{"connectedAt", "lastActiveAt", "identity": {"sourceIp", "userAgent"}}``
        with ISO 8601 times, or None if the connection is gone."""


class Throttled(Exception):
    """Raised by a sink to make the route answer 429 LimitExceededException, as
    API Gateway does when a client's buffer is full or calls come too fast."""


def _error(status: int, error_type: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"message": message}).encode("utf-8"),
        content_type="application/json",
        headers={"x-amzn-ErrorType": error_type},
    )


def _gone() -> web.Response:
    return _error(410, "GoneException", "GoneException")


@dataclass(frozen=True)
class Signing:
    """Who may call the API: requests must be SigV4-signed by one of ``principals``
    and allowed by its statements (see sigv4)."""

    principals: Mapping[str, sigv4.Principal]
    api_id: str
    region: str = "us-east-1"
    account: str = "000000000000"

    def resource(self, stage: str, method: str, connection_id: str) -> str:
        return (
            f"arn:aws:execute-api:{self.region}:{self.account}:{self.api_id}/{stage}/"
            f"{method}/@connections/{connection_id}"
        )


def add_connection_routes(
    app: web.Application,
    sink: ConnectionSink,
    *,
    stage: str,
    latency_seconds: float = 0.0,
    signing: Signing | None = None,
) -> None:
    """Mount ``POST|GET|DELETE /{stage}/@connections/{connection_id}`` on ``app``.

    ``latency_seconds`` is added to every request, to stand in for the round trip
    to API Gateway (the fan-out benchmark uses it). With ``signing``, a request
    that is unsigned, wrongly signed or not allowed is answered 403
    ``ForbiddenException`` and does nothing, as on AWS.
    """
    path = f"/{stage}/@connections/{{connection_id}}"

    async def pause() -> None:
        if latency_seconds > 0:
            await asyncio.sleep(latency_seconds)

    @web.middleware
    async def check_signature(request: web.Request, handler: Any) -> web.StreamResponse:
        marker = f"/{stage}/@connections/"
        if signing is None or not request.path.startswith(marker):
            response: web.StreamResponse = await handler(request)
            return response
        body = await request.read()
        host = request.headers.get("Host", request.host)
        try:
            sigv4.verify(
                method=request.method,
                url=f"{request.scheme}://{host}{request.raw_path}",
                headers=request.headers,
                body=body,
                principals=signing.principals,
                region=signing.region,
                resource=signing.resource(stage, request.method, request.path.removeprefix(marker)),
            )
        except sigv4.Refused as refused:
            return _error(403, "ForbiddenException", str(refused))
        signed: web.StreamResponse = await handler(request)
        return signed

    app.middlewares.append(check_signature)

    async def post(request: web.Request) -> web.Response:
        connection_id = request.match_info["connection_id"]
        data = await request.read()
        await pause()
        if len(data) > MESSAGE_LIMIT:
            return _error(413, "PayloadTooLargeException", "Message too long")
        try:
            delivered = await sink.send(connection_id, data)
        except Throttled:
            return _error(429, "LimitExceededException", "LimitExceededException")
        except Exception:
            return _error(500, "InternalServerErrorException", "Internal server error")
        return web.Response(status=200) if delivered else _gone()

    async def get(request: web.Request) -> web.Response:
        await pause()
        described = sink.describe(request.match_info["connection_id"])
        if described is None:
            return _gone()
        return web.json_response(described)

    async def delete(request: web.Request) -> web.Response:
        await pause()
        closed = await sink.close(request.match_info["connection_id"])
        return web.Response(status=204) if closed else _gone()

    app.router.add_post(path, post)
    app.router.add_get(path, get)
    app.router.add_delete(path, delete)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="milliseconds")


@dataclass
class _Socket:
    connected_at: float
    last_active_at: float
    source_ip: str
    user_agent: str
    throttle_next: int = 0
    broken: bool = False


@dataclass
class MemorySink:
    """An in-memory ConnectionSink: open and close connections by hand, and read
    back what each one received. Safe to drive from the test thread while the
    server's loop runs in another."""

    _sockets: dict[str, _Socket] = field(default_factory=dict)
    _received: dict[str, list[bytes]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # The test side.

    def open(
        self, connection_id: str, *, source_ip: str = "127.0.0.1", user_agent: str = "test"
    ) -> None:
        now = datetime.now(tz=UTC).timestamp()
        with self._lock:
            self._sockets[connection_id] = _Socket(now, now, source_ip, user_agent)
            self._received.setdefault(connection_id, [])

    def hang_up(self, connection_id: str) -> None:
        """The client went away: from now on the API answers 410 for it."""
        with self._lock:
            self._sockets.pop(connection_id, None)

    def throttle(self, connection_id: str, times: int) -> None:
        """Answer the next ``times`` posts to this connection with 429."""
        with self._lock:
            self._sockets[connection_id].throttle_next = times

    def break_connection(self, connection_id: str) -> None:
        """Answer every post to this connection with 500 (a failure that is not Gone)."""
        with self._lock:
            self._sockets[connection_id].broken = True

    def is_open(self, connection_id: str) -> bool:
        with self._lock:
            return connection_id in self._sockets

    def messages(self, connection_id: str) -> list[bytes]:
        with self._lock:
            return list(self._received.get(connection_id, []))

    def json_messages(self, connection_id: str) -> list[Any]:
        return [json.loads(data) for data in self.messages(connection_id)]

    def total_received(self) -> int:
        with self._lock:
            return sum(len(frames) for frames in self._received.values())

    # The ConnectionSink side.

    async def send(self, connection_id: str, data: bytes) -> bool:
        with self._lock:
            sock = self._sockets.get(connection_id)
            if sock is None:
                return False
            if sock.broken:
                raise RuntimeError("socket write failed")
            if sock.throttle_next > 0:
                sock.throttle_next -= 1
                raise Throttled
            sock.last_active_at = datetime.now(tz=UTC).timestamp()
            self._received[connection_id].append(data)
            return True

    async def close(self, connection_id: str) -> bool:
        with self._lock:
            return self._sockets.pop(connection_id, None) is not None

    def describe(self, connection_id: str) -> dict[str, Any] | None:
        with self._lock:
            sock = self._sockets.get(connection_id)
            if sock is None:
                return None
            return {
                "connectedAt": _iso(sock.connected_at),
                "lastActiveAt": _iso(sock.last_active_at),
                "identity": {"sourceIp": sock.source_ip, "userAgent": sock.user_agent},
            }


@dataclass(frozen=True)
class RunningServer:
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def endpoint_url(self, stage: str) -> str:
        """What to give boto3 as ``endpoint_url`` (API Gateway's callback URL)."""
        return f"{self.base_url}/{stage}"


@contextmanager
def serve_in_thread(app: web.Application, *, host: str = "127.0.0.1") -> Iterator[RunningServer]:
    """Run ``app`` on ``host`` and a free port, in a background thread, until the
    block exits. For tests and the benchmark."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()
    failure: list[BaseException] = []
    ports: list[int] = []

    async def start() -> None:
        await runner.setup()
        # Port 0: the OS picks a free one, with no window for another process to
        # take it between probing and binding. A backlog well above the fan-out's
        # worker count, so a burst of new keep-alive connections is not refused.
        await web.TCPSite(runner, host, 0, backlog=1024).start()
        ports.append(int(runner.addresses[0][1]))

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as error:
            failure.append(error)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="connections-api", daemon=True)
    thread.start()
    started.wait(timeout=10)
    if failure or not ports:
        cause = failure[0] if failure else None
        raise RuntimeError("the @connections server did not start") from cause
    try:
        yield RunningServer(host, ports[0])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@contextmanager
def memory_connections_api(
    *, stage: str = "local", latency_seconds: float = 0.0
) -> Iterator[tuple[MemorySink, RunningServer]]:
    """A MemorySink behind a running @connections server."""
    sink = MemorySink()
    app = web.Application()
    add_connection_routes(app, sink, stage=stage, latency_seconds=latency_seconds)
    with serve_in_thread(app) as server:
        yield sink, server
