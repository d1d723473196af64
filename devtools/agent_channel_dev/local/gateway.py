"""A real WebSocket gateway that behaves as API Gateway does, for any SAM
WebSocket app (its routes, authorizer and stage come from the app's template).

For each upgrade: only a real WebSocket upgrade is served (anything else is
answered 426 and runs nothing); the identity sources are checked, then the
``$connect`` REQUEST authorizer runs (``Unauthorized`` -> 401, a Deny -> 403,
any other failure -> 500), then ``$connect`` (any 2xx accepts; anything else
refuses the upgrade with that status, a failure with 500). Each text message is
routed with the route selection expression (``$default`` when nothing matches;
without ``$default`` the client is told ``Forbidden``), as its own invocation (a
route with an AWS service integration calls the service itself, see
``service_integration``; a two-way route sends the integration's answer back):
frames of one socket are not ordered unless ``ordered_frames`` asks for it. A
failed or timed out invocation sends the client API Gateway's error message.
Frames are counted as API Gateway counts them (``frames.FrameGuard``): over
32 KB, a message over 128 KB, or a binary frame closes the socket (1009, 1009,
1003). Nothing pings clients; idle sockets close after ``idle_timeout`` and any
socket after ``max_connection``. ``$disconnect`` runs once when the socket ends,
however it ends, with the close status and reason.

It is also the ConnectionSink behind the local ``@connections`` API: a post over
32 KB reaches the client as several frames, as on AWS.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from agent_channel import client_json
from agent_channel_dev.local import apigw_events, frames, service_integration
from agent_channel_dev.local.apigw_events import Upgrade
from agent_channel_dev.local.faults import Faults
from agent_channel_dev.local.intrinsics import ACCOUNT, PARTITION, REGION
from agent_channel_dev.local.sam_app import WebSocketApi

CONNECT = "$connect"
DISCONNECT = "$disconnect"
DEFAULT = "$default"
UNAUTHORIZED = "Unauthorized"
"""API Gateway answers 401 when an authorizer fails with exactly this message."""

INTEGRATION_TIMEOUT_SECONDS = 29.0
"""API Gateway stops waiting for an integration after 29 s (quotas page)."""
IDLE_TIMEOUT_SECONDS = 600.0
MAX_CONNECTION_SECONDS = 7200.0
GOING_AWAY = int(WSCloseCode.GOING_AWAY)
ABNORMAL = int(WSCloseCode.ABNORMAL_CLOSURE)
SHUTDOWN_GRACE_SECONDS = 5.0

_ID_ALPHABET = string.ascii_letters + string.digits


class Invoker(Protocol):
    async def invoke(self, logical_id: str, event: Any) -> Any:
        """Run the function; raise (FunctionError) as Lambda reports a failure."""


@dataclass(frozen=True)
class GatewayOptions:
    idle_timeout_seconds: float = IDLE_TIMEOUT_SECONDS
    max_connection_seconds: float = MAX_CONNECTION_SECONDS
    ordered_frames: bool = False
    """AWS documents no per-connection order; the stricter default is none."""
    delete_close_code: int = GOING_AWAY
    """The close code a ``DELETE @connections`` sends (undocumented by AWS)."""
    integration_timeout_seconds: float = INTEGRATION_TIMEOUT_SECONDS


def new_connection_id() -> str:
    """Shaped like API Gateway's (``L0SM9cOFvHcCIhw=``): safe in a URL path as is."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(15)) + "="


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="milliseconds")


def select_route(
    body: str, routes: Container[str], expression: str = "$request.body.action"
) -> str:
    """Route selection on ``$request.body.PATH``; no match (or no JSON) -> $default."""
    path = expression.removeprefix("$request.body.").split(".")
    try:
        value: Any = client_json.loads(body)
        for part in path:
            value = value.get(part)
    except (ValueError, AttributeError):
        return DEFAULT
    if isinstance(value, str) and not value.startswith("$") and value in routes:
        return value
    return DEFAULT


def _table_arn(name: str) -> str:
    return f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{name}"


def _is_allowed(policy: Any) -> bool:
    if not isinstance(policy, dict):
        return False
    statements = (policy.get("policyDocument") or {}).get("Statement") or []
    return bool(statements) and all(s.get("Effect") == "Allow" for s in statements)


def _refusal(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


@dataclass
class LiveSocket:
    connection_id: str
    ws: web.WebSocketResponse
    transport: asyncio.Transport
    authorizer: dict[str, Any] | None
    upgrade: Upgrade
    connected_at: float
    last_active_at: float = field(default_factory=time.time)
    close_code: int | None = None
    close_reason: str = ""
    guard: frames.FrameGuard | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Gateway:
    """The WebSocket side of the local stack; implements ConnectionSink."""

    def __init__(
        self,
        api: WebSocketApi,
        functions: Invoker,
        options: GatewayOptions,
        faults: Faults | None = None,
        services: Any | None = None,
    ) -> None:
        self._api = api
        self._functions = functions
        self._services = services
        """The DynamoDB client AWS service integrations call (the stack's moto)."""
        self._options = options
        self._sockets: dict[str, LiveSocket] = {}
        self._faults = faults
        self._chaos: asyncio.Task[None] | None = None
        self.before_route: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
        """A hook run before each route invocation (fault injection plugs in here)."""

    @property
    def stage(self) -> str:
        return self._api.stage

    def mount(self, app: web.Application) -> None:
        app.router.add_get(f"/{self._api.stage}", self.handle_socket)
        app.on_shutdown.append(self._close_all)
        if self._faults is not None and (self._faults.crash or self._faults.close):
            app.on_startup.append(self._start_chaos)

    # -- ConnectionSink -------------------------------------------------------

    async def send(self, connection_id: str, data: bytes) -> bool:
        live = self._sockets.get(connection_id)
        if live is None or live.ws.closed or live.transport.is_closing():
            return False
        if self._faults is not None and self._faults.drop_post():
            return True  # a half-open socket: 200, and nothing arrives
        try:
            data.decode("utf-8")
            opcode = frames.OP_TEXT
        except UnicodeDecodeError:
            opcode = frames.OP_BINARY
        # One write per message: frames of two posts never interleave.
        live.transport.write(frames.fragments(data, opcode))
        return True

    async def close(self, connection_id: str) -> bool:
        live = self._sockets.get(connection_id)
        if live is None or live.ws.closed:
            return False
        # The socket's own task notices the close and runs $disconnect, as API
        # Gateway does after a DELETE on @connections.
        await self._close(live, self._options.delete_close_code, "Going away")
        return True

    def describe(self, connection_id: str) -> dict[str, Any] | None:
        live = self._sockets.get(connection_id)
        if live is None or live.ws.closed:
            return None
        return {
            "connectedAt": _iso(live.connected_at),
            "lastActiveAt": _iso(live.last_active_at),
            "identity": {
                "sourceIp": live.upgrade.source_ip,
                "userAgent": live.upgrade.user_agent(),
            },
        }

    # -- the upgrade ----------------------------------------------------------

    async def handle_socket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            heartbeat=None, autoping=True, compress=False, max_msg_size=0, timeout=5.0
        )
        if not ws.can_prepare(request).ok:
            # Not a WebSocket upgrade: no authorizer, no $connect, no $disconnect.
            return _refusal(426, "Upgrade Required")
        connection_id = new_connection_id()
        connected_at = time.time()
        upgrade = Upgrade(
            headers=list(request.headers.items()),
            query=list(request.query.items()),
            source_ip=request.remote or "127.0.0.1",
            domain_name=self._api.domain_name,
        )
        context: dict[str, Any] | None = None
        if self._api.authorizer is not None:
            refused, context = await self._authorize(connection_id, upgrade, connected_at)
            if refused is not None:
                return refused
        connect = self._event(CONNECT, connection_id, context, connected_at, upgrade=upgrade)
        try:
            result = await self._invoke(CONNECT, connect)
            status = int(result["statusCode"])
        except Exception:
            return _refusal(500, "Internal server error")
        if not 200 <= status <= 599:
            # Not an HTTP answer a proxy integration may give: a malformed response.
            return _refusal(500, "Internal server error")
        if not 200 <= status < 300:
            body = result.get("body") if isinstance(result, dict) else None
            return _refusal(status, str(body or "Forbidden"))

        transport = request.transport
        if transport is None:
            # The client went away while $connect ran: the connection was accepted,
            # so, as API Gateway does, it ends with a $disconnect (abnormal closure)
            # that releases what $connect wrote.
            await self._send_disconnect(
                connection_id, context, connected_at, ABNORMAL, "", upgrade.source_ip
            )
            return _refusal(400, "the client closed the connection during the handshake")
        live = LiveSocket(connection_id, ws, transport, context, upgrade, connected_at)
        if self._faults is not None and self._faults.handshake:
            # A slow handshake: posts until now answer 410, as on AWS before the 101.
            await asyncio.sleep(self._faults.handshake)
        # Registered before the upgrade completes, so a post in the same instant as
        # the 101 finds the socket (API Gateway accepts posts right after $connect).
        self._sockets[connection_id] = live
        try:
            await ws.prepare(request)
            self._guard(live, request)
            await self._serve(live)
        finally:
            self._sockets.pop(connection_id, None)
            await self._disconnect(live)
        return ws

    def _guard(self, live: LiveSocket, request: web.Request) -> None:
        protocol: Any = request.protocol

        def violated(code: int, reason: str) -> None:
            task = asyncio.get_running_loop().create_task(self._close(live, code, reason))
            live.tasks.add(task)
            task.add_done_callback(live.tasks.discard)

        live.guard = frames.FrameGuard(protocol._payload_parser, violated)
        protocol._payload_parser = live.guard

    async def _authorize(
        self, connection_id: str, upgrade: Upgrade, connected_at: float
    ) -> tuple[web.Response | None, dict[str, Any]]:
        assert self._api.authorizer is not None
        if not self._has_identity(upgrade, self._api.authorizer.identity_sources):
            return _refusal(401, UNAUTHORIZED), {}
        event = apigw_events.authorizer_event(
            connection_id,
            domain_name=self._api.domain_name,
            stage=self._api.stage,
            api_id=self._api.api_id,
            upgrade=upgrade,
            connected_at=connected_at,
        )
        started = time.monotonic()
        try:
            policy = await self._functions.invoke(self._api.authorizer.function, event)
        except Exception as error:
            if str(error) == UNAUTHORIZED:
                return _refusal(401, UNAUTHORIZED), {}
            return _refusal(500, "AuthorizerConfigurationException"), {}
        if not _is_allowed(policy):
            return _refusal(403, "Forbidden"), {}
        latency = int((time.monotonic() - started) * 1000)
        return None, apigw_events.authorizer_context_for_routes(policy, latency)

    @staticmethod
    def _has_identity(upgrade: Upgrade, sources: tuple[str, ...]) -> bool:
        present = {f"route.request.header.{name.lower()}" for name, _ in upgrade.headers}
        present |= {f"route.request.querystring.{name}" for name, _ in upgrade.query}
        # Header names are case-insensitive, query parameter names are not.
        return all(
            (s.lower() if s.startswith("route.request.header.") else s) in present
            for s in sources
            if s.startswith(("route.request.header.", "route.request.querystring."))
        )

    # -- the connection -------------------------------------------------------

    async def _serve(self, live: LiveSocket) -> None:
        watchdog = asyncio.create_task(self._watch(live))
        client_close: tuple[int, str] | None = None
        try:
            while True:
                message = await live.ws.receive()
                if message.type == WSMsgType.TEXT:
                    live.last_active_at = time.time()
                    self._route(live, str(message.data))
                elif message.type == WSMsgType.BINARY:
                    # Also stopped by the guard; never routed.
                    await self._close(live, frames.CLOSE_UNSUPPORTED_DATA, "Binary not supported")
                    break
                elif message.type == WSMsgType.CLOSE:
                    client_close = (int(message.data or 0), str(message.extra or ""))
                    break
                elif message.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
        finally:
            watchdog.cancel()
        if live.close_code is None:
            if live.guard is not None and live.guard.closed_without_status:
                live.close_code, live.close_reason = (
                    apigw_events.NO_STATUS,
                    apigw_events.NO_STATUS_REASON,
                )
            elif client_close is not None and client_close[0]:
                live.close_code, live.close_reason = client_close
            else:
                live.close_code, live.close_reason = ABNORMAL, "Connection closed abnormally"
        # Invocations still running finish before $disconnect, as their frames
        # arrived before the close.
        if live.tasks:
            await asyncio.gather(*list(live.tasks), return_exceptions=True)

    async def _watch(self, live: LiveSocket) -> None:
        idle = self._options.idle_timeout_seconds
        deadline = live.connected_at + self._options.max_connection_seconds
        while not live.ws.closed:
            now = time.time()
            if now >= deadline:
                await self._close(live, GOING_AWAY, "Going away")
                return
            if now - live.last_active_at >= idle:
                await self._close(live, GOING_AWAY, "Going away")
                return
            await asyncio.sleep(min(deadline - now, live.last_active_at + idle - now, 1.0))

    async def _close(self, live: LiveSocket, code: int, reason: str) -> None:
        if live.close_code is None:
            live.close_code, live.close_reason = code, reason
        with contextlib.suppress(Exception):
            await live.ws.close(code=code, message=reason.encode())

    def _route(self, live: LiveSocket, body: str) -> None:
        route = select_route(body, self._api.route_keys, self._api.route_selection_expression)
        # Ordered: this frame's invocation waits for the ones before it.
        previous = list(live.tasks) if self._options.ordered_frames else []
        task = asyncio.get_running_loop().create_task(self._message(live, route, body, previous))
        live.tasks.add(task)
        task.add_done_callback(live.tasks.discard)

    async def _message(
        self, live: LiveSocket, route: str, body: str, previous: list[asyncio.Task[None]]
    ) -> None:
        if previous:
            await asyncio.gather(*previous, return_exceptions=True)
        event = self._event(
            route,
            live.connection_id,
            live.authorizer,
            live.connected_at,
            body=body,
            source_ip=live.upgrade.source_ip,
        )
        request_id = event["requestContext"]["requestId"]
        if route in self._api.services:
            await self._service_message(live, route, event, body)
            return
        if route not in self._api.routes:
            self._tell(live, "Forbidden", request_id)
            return
        invocation = asyncio.ensure_future(self._invoke(route, event))
        try:
            result = await asyncio.wait_for(
                asyncio.shield(invocation), self._options.integration_timeout_seconds
            )
        except TimeoutError:
            self._tell(live, "Endpoint request timed out", request_id)
            return
        except Exception:
            self._tell(live, "Internal server error", request_id)
            return
        # A one-way route's answer goes nowhere; a two-way proxy route sends the
        # function's body (nothing when it has none).
        answer = result.get("body") if isinstance(result, dict) else None
        if route in self._api.two_way and isinstance(answer, str) and answer:
            self._reply(live, answer)

    def _reply(self, live: LiveSocket, text: str) -> None:
        """A route response: written to the socket unless it has closed meanwhile."""
        if not live.ws.closed and not live.transport.is_closing():
            live.transport.write(frames.fragments(text.encode()))

    async def _service_message(
        self, live: LiveSocket, route: str, event: dict[str, Any], body: str
    ) -> None:
        """A frame through an AWS service integration: no function runs."""
        integration = self._api.services[route]
        request = event["requestContext"]
        context = service_integration.context_variables(
            route_key=route,
            connection_id=live.connection_id,
            connected_at_ms=int(request["connectedAt"]),
            request_time_ms=int(request["requestTimeEpoch"]),
            request_id=request["requestId"],
            message_id=str(request.get("messageId", "")),
            domain_name=self._api.domain_name,
            stage=self._api.stage,
            api_id=self._api.api_id,
            source_ip=live.upgrade.source_ip,
            authorizer=live.authorizer,
        )
        if self.before_route is not None:
            await self.before_route(route, event)
        if self._services is None:
            self._tell(live, "Internal server error", request["requestId"])
            return
        try:
            outcome = await asyncio.wait_for(
                asyncio.to_thread(
                    service_integration.run,
                    integration,
                    context,
                    body,
                    client=self._services,
                    table_arn_of=_table_arn,
                ),
                self._options.integration_timeout_seconds,
            )
        except TimeoutError:
            self._tell(live, "Endpoint request timed out", request["requestId"])
            return
        except Exception:
            self._tell(live, "Internal server error", request["requestId"])
            return
        if outcome.reply is not None:
            self._reply(live, outcome.reply)

    def _tell(self, live: LiveSocket, message: str, request_id: str) -> None:
        if not live.ws.closed and not live.transport.is_closing():
            frame = apigw_events.error_frame(message, live.connection_id, request_id)
            live.transport.write(frames.fragments(frame.encode()))

    async def _disconnect(self, live: LiveSocket) -> None:
        await self._send_disconnect(
            live.connection_id,
            live.authorizer,
            live.connected_at,
            live.close_code or ABNORMAL,
            live.close_reason,
            live.upgrade.source_ip,
        )

    async def _send_disconnect(
        self,
        connection_id: str,
        authorizer: dict[str, Any] | None,
        connected_at: float,
        status_code: int,
        reason: str,
        source_ip: str,
    ) -> None:
        event = self._event(
            DISCONNECT,
            connection_id,
            authorizer,
            connected_at,
            status_code=status_code,
            reason=reason,
            source_ip=source_ip,
        )
        # Shielded: a server shutting down still reports every socket it drops.
        with contextlib.suppress(Exception):
            await asyncio.shield(self._invoke(DISCONNECT, event))

    def _event(
        self,
        route: str,
        connection_id: str,
        authorizer: dict[str, Any] | None,
        connected_at: float,
        **kwargs: Any,
    ) -> dict[str, Any]:
        return apigw_events.route_event(
            route,
            connection_id,
            domain_name=self._api.domain_name,
            stage=self._api.stage,
            api_id=self._api.api_id,
            authorizer=authorizer,
            connected_at=connected_at,
            **kwargs,
        )

    async def _invoke(self, route: str, event: dict[str, Any]) -> Any:
        function = self._api.routes.get(route)
        if function is None:
            return {"statusCode": 200} if route in (CONNECT, DISCONNECT) else None
        if self.before_route is not None:
            await self.before_route(route, event)
        return await self._functions.invoke(function, event)

    async def _start_chaos(self, app: web.Application) -> None:
        self._chaos = asyncio.create_task(self._chaos_loop())

    async def _chaos_loop(self) -> None:
        """Fault switches ``crash`` and ``close``: once a second, maybe end a socket."""
        assert self._faults is not None
        while True:
            await asyncio.sleep(1.0)
            chosen = self._faults.victim(list(self._sockets))
            live = self._sockets.get(chosen[0]) if chosen else None
            if chosen is None or live is None:
                continue
            with contextlib.suppress(Exception):
                if chosen[1]:
                    live.transport.abort()  # a crash: cut, no close frame
                else:
                    await self._close(live, GOING_AWAY, "Going away")

    async def _close_all(self, app: web.Application) -> None:
        if self._chaos is not None:
            self._chaos.cancel()
        for live in list(self._sockets.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._close(live, GOING_AWAY, "Going away"), SHUTDOWN_GRACE_SECONDS
                )
