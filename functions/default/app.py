"""$default: a frame whose action no route knows (or that is not JSON at all)
gets an error message back on the socket, never silence."""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel import client_json
from agent_channel.delivery.fanout import error_message, send_to_connection
from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.events import SocketEvent, response
from agent_channel.lambda_kit.route import socket_route
from agent_channel.observability import logger

management = wiring.management_api()

KNOWN_ACTIONS = ("heartbeat", "replay_permissions", "resume", "resync", "ack")
MAX_ECHOED_ACTION = 64


def _refusal(body: str | None) -> dict[str, str]:
    try:
        message = client_json.loads(body or "")
    except ValueError:
        return error_message("invalid_json", "the message must be a JSON object")
    if not isinstance(message, dict):
        return error_message("invalid_json", "the message must be a JSON object")
    action = message.get("action")
    if not isinstance(action, str) or not action:
        return error_message("missing_action", "the message has no 'action'")
    shown = action[:MAX_ECHOED_ACTION]
    return error_message(
        "unknown_action", f"unknown action {shown!r}; known: {', '.join(KNOWN_ACTIONS)}"
    )


@socket_route
def handler(event: SocketEvent) -> dict[str, Any]:
    refusal = _refusal(event.body)
    logger.info("unroutable frame", extra={"code": refusal["error"]})
    send_to_connection(event.connection_id, refusal, client=management)
    return response(200)


cold_start.ready()
