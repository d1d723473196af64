"""A real WebSocket gateway that behaves as API Gateway does for this stack.

For each socket: the $connect authorizer runs first (a raised ``Unauthorized``
refuses the upgrade with 401, a Deny with 403), then the $connect function (any
status but 200 refuses the upgrade with that status). Each frame is routed on
``body.action`` to the function template.yaml maps it to (``$default`` when no
route matches), with the authorizer's context in ``requestContext.authorizer``.
$disconnect runs once when the socket ends, however it ends: a close frame, a
dropped TCP connection, or a peer that stopped answering pings.

It is also the ConnectionSink behind the local ``@connections`` API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from agent_channel.config import API_GATEWAY_MESSAGE_LIMIT
from agent_channel.observability import logger
from agent_channel_dev.local.apigw_events import (
    authorizer_context_for_routes,
    authorizer_event,
    route_event,
)
from agent_channel_dev.local.faults import Faults
from agent_channel_dev.local.functions import FunctionMissing, FunctionRunner
from agent_channel_dev.local.resources import StackLayout

CONNECT = "$connect"
DISCONNECT = "$disconnect"
DEFAULT = "$default"
UNAUTHORIZED = "Unauthorized"
"""API Gateway answers 401 when an authorizer fails with exactly this message."""

_ID_ALPHABET = string.ascii_letters + string.digits
SHUTDOWN_GRACE_SECONDS = 5.0


def new_connection_id() -> str:
    """Shaped like API Gateway's (``L0SM9cOFvHcCIhw=``): safe in a URL path as is."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(15)) + "="


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="milliseconds")


def select_route(body: str, routes: dict[str, str]) -> str:
    """Route selection on ``$request.body.action``; no match (or no JSON) -> $default."""
    try:
        action = json.loads(body).get("action")
    except (ValueError, AttributeError):
        return DEFAULT
    if isinstance(action, str) and not action.startswith("$") and action in routes:
        return action
    return DEFAULT


def _is_allowed(policy: Any) -> bool:
    if not isinstance(policy, dict):
        return False
    statements = (policy.get("policyDocument") or {}).get("Statement") or []
    return bool(statements) and all(s.get("Effect") == "Allow" for s in statements)


@dataclass
class LiveSocket:
    connection_id: str
    ws: web.WebSocketResponse
    authorizer: dict[str, Any]
    source_ip: str
    user_agent: str
    connected_at: float = field(default_factory=time.time)
    last_active_at: float = field(default_factory=time.time)


class Gateway:
    """The WebSocket side of the local stack; implements ConnectionSink."""

    def __init__(
        self,
        runner: FunctionRunner,
        layout: StackLayout,
        *,
        stage: str,
        ping_seconds: float,
        faults: Faults | None = None,
    ) -> None:
        self._runner = runner
        self._layout = layout
        self._stage = stage
        self._ping_seconds = ping_seconds
        self._sockets: dict[str, LiveSocket] = {}
        self._faults = faults
        self._chaos: asyncio.Task[None] | None = None

    @property
    def stage(self) -> str:
        return self._stage

    def mount(self, app: web.Application) -> None:
        app.router.add_get(f"/{self._stage}", self.handle_socket)
        app.on_shutdown.append(self._close_all)
        if self._faults is not None and (self._faults.crash or self._faults.close):
            app.on_startup.append(self._start_chaos)

    # -- ConnectionSink -------------------------------------------------------

    async def send(self, connection_id: str, data: bytes) -> bool:
        live = self._sockets.get(connection_id)
        if live is None or live.ws.closed:
            return False
        if self._faults is not None and self._faults.drop_post():
            return True  # a half-open socket: 200, and nothing arrives
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        try:
            if text is None:
                await live.ws.send_bytes(data)
            else:
                await live.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            # The socket died under us: for the caller that is Gone.
            return False
        return True

    async def close(self, connection_id: str) -> bool:
        live = self._sockets.get(connection_id)
        if live is None or live.ws.closed:
            return False
        # The socket's own task notices the close and runs $disconnect, as API
        # Gateway does after a DELETE on @connections.
        await live.ws.close(code=WSCloseCode.GOING_AWAY, message=b"closed by the backend")
        return True

    def describe(self, connection_id: str) -> dict[str, Any] | None:
        live = self._sockets.get(connection_id)
        if live is None or live.ws.closed:
            return None
        return {
            "connectedAt": _iso(live.connected_at),
            "lastActiveAt": _iso(live.last_active_at),
            "identity": {"sourceIp": live.source_ip, "userAgent": live.user_agent},
        }

    # -- sockets --------------------------------------------------------------

    async def handle_socket(self, request: web.Request) -> web.StreamResponse:
        connection_id = new_connection_id()
        headers = {k: v for k, v in request.headers.items()}
        query = {k: request.query[k] for k in request.query}
        domain = request.host
        source_ip = request.remote or "127.0.0.1"

        refused, context = await self._authorize(connection_id, domain, headers, query)
        if refused is not None:
            return refused
        connect = route_event(
            CONNECT,
            connection_id,
            domain_name=domain,
            stage=self._stage,
            authorizer=context,
            headers=headers,
            query=query,
        )
        result = await self._invoke(CONNECT, connect)
        status = int(result.get("statusCode", 500)) if isinstance(result, dict) else 500
        if status != 200:
            message = str(result.get("body", "")) if isinstance(result, dict) else ""
            return web.json_response({"message": message or "refused"}, status=status)

        ws = web.WebSocketResponse(
            heartbeat=self._ping_seconds, max_msg_size=API_GATEWAY_MESSAGE_LIMIT
        )
        live = LiveSocket(connection_id, ws, context, source_ip, headers.get("User-Agent", ""))
        if self._faults is not None and self._faults.handshake:
            # A slow handshake: posts until now answer 410, as on AWS before the 101.
            await asyncio.sleep(self._faults.handshake)
        # Registered before the upgrade completes, so a post in the same instant as
        # the 101 finds the socket (API Gateway accepts posts right after $connect).
        self._sockets[connection_id] = live
        try:
            await ws.prepare(request)
            await self._serve(live, domain)
        finally:
            self._sockets.pop(connection_id, None)
            await self._disconnect(live, domain)
        return ws

    async def _authorize(
        self, connection_id: str, domain: str, headers: dict[str, str], query: dict[str, str]
    ) -> tuple[web.Response | None, dict[str, Any]]:
        event = authorizer_event(
            connection_id, domain_name=domain, stage=self._stage, headers=headers, query=query
        )
        try:
            policy = await self._runner.invoke(self._layout.authorizer, event)
        except Exception as error:
            if str(error) == UNAUTHORIZED:
                return web.json_response({"message": UNAUTHORIZED}, status=401), {}
            logger.exception("authorizer failed")
            return web.json_response(
                {"message": "AuthorizerConfigurationException"}, status=500
            ), {}
        if not _is_allowed(policy):
            return web.json_response({"message": "Forbidden"}, status=403), {}
        return None, authorizer_context_for_routes(policy)

    async def _serve(self, live: LiveSocket, domain: str) -> None:
        async for message in live.ws:
            if message.type == WSMsgType.TEXT:
                body = str(message.data)
            elif message.type == WSMsgType.BINARY:
                body = bytes(message.data).decode("utf-8", errors="replace")
            else:
                # ERROR (a protocol violation, an oversized frame): the socket ends.
                break
            live.last_active_at = time.time()
            route = select_route(body, self._layout.routes)
            event = route_event(
                route,
                live.connection_id,
                domain_name=domain,
                stage=self._stage,
                authorizer=live.authorizer,
                body=body,
            )
            # No route responses are configured: the return value goes nowhere.
            await self._invoke(route, event)

    async def _disconnect(self, live: LiveSocket, domain: str) -> None:
        event = route_event(
            DISCONNECT,
            live.connection_id,
            domain_name=domain,
            stage=self._stage,
            authorizer=live.authorizer,
        )
        code = live.ws.close_code or WSCloseCode.ABNORMAL_CLOSURE
        event["requestContext"]["disconnectStatusCode"] = int(code)
        # Shielded: a server shutting down still reports every socket it drops.
        await asyncio.shield(self._invoke(DISCONNECT, event))

    async def _invoke(self, route: str, event: dict[str, Any]) -> Any:
        folder = self._layout.routes.get(route)
        if folder is None:
            logger.warning("no function for route", extra={"route": route})
            return None
        try:
            return await self._runner.invoke(folder, event)
        except FunctionMissing:
            logger.warning("route function not built yet", extra={"route": route})
        except Exception:
            # A Lambda that crashes answers 500 on $connect and nothing elsewhere.
            logger.exception("route function failed", extra={"route": route})
        return {"statusCode": 500}

    async def _start_chaos(self, app: web.Application) -> None:
        self._chaos = asyncio.create_task(self._chaos_loop())

    async def _chaos_loop(self) -> None:
        """Fault switches ``crash`` and ``close``: once a second, maybe end a socket."""
        assert self._faults is not None
        while True:
            await asyncio.sleep(1.0)
            chosen = self._faults.victim(list(self._sockets))
            if chosen is None:
                continue
            live = self._sockets.get(chosen[0])
            if live is None:
                continue
            with contextlib.suppress(Exception):
                if chosen[1]:
                    # A crash: the TCP connection is cut, no close frame is sent.
                    transport = live.ws._req.transport if live.ws._req else None
                    if transport is not None:
                        transport.abort()
                else:
                    await live.ws.close(code=WSCloseCode.GOING_AWAY, message=b"chaos")

    async def _close_all(self, app: web.Application) -> None:
        if self._chaos is not None:
            self._chaos.cancel()
        sockets = list(self._sockets.values())
        for live in sockets:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    live.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown"),
                    SHUTDOWN_GRACE_SECONDS,
                )
