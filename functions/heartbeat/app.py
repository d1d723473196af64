"""heartbeat: refresh the lease, or restore a reaped one while the socket is open."""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.events import SocketEvent, response
from agent_channel.lambda_kit.route import socket_route
from agent_channel.observability import logger
from agent_channel.presence import rules

store = wiring.presence_store()
scheduler = wiring.grace_scheduler()


@socket_route
def handler(event: SocketEvent) -> dict[str, Any]:
    caller = event.caller
    subscription = caller.subscription(event.connection_id) if caller else None
    if subscription is None:
        # Topic and non-channel sockets have no lease; the frame still kept the
        # socket under API Gateway's idle timeout.
        return response(200)
    outcome = rules.heartbeat(store, scheduler, subscription)
    if outcome is not rules.Heartbeat.REFRESHED:
        logger.info("heartbeat", extra={"outcome": outcome.value})
    return response(200)


cold_start.ready()
