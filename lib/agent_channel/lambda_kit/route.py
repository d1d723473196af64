"""What every WebSocket route function shares: parsing, ids in the logs, metrics,
and the promise that no traceback reaches a client."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from agent_channel.lambda_kit.events import SocketEvent, parse_socket_event, response
from agent_channel.lambda_kit.invocation import lambda_handler
from agent_channel.observability import bind_ids, clear_ids, logger

RouteFunction = Callable[[SocketEvent], dict[str, Any]]
LambdaHandler = Callable[[Any, Any], dict[str, Any]]


def socket_route(route: RouteFunction) -> LambdaHandler:
    """Wrap a route function as a Lambda handler."""

    @functools.wraps(route)
    @lambda_handler
    def handler(event: Any, context: Any) -> dict[str, Any]:
        clear_ids()
        parsed = parse_socket_event(event)
        if parsed is None:
            logger.warning("malformed API Gateway event")
            return response(400, "malformed event")
        bind_ids(
            connection_id=parsed.connection_id,
            agent_id=parsed.caller.agent_id if parsed.caller else None,
            request_id=parsed.request_id or getattr(context, "aws_request_id", None),
        )
        try:
            return route(parsed)
        except Exception:
            logger.exception("route failed")
            return response(500, "internal error")

    return handler
