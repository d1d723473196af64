"""heartbeat: refresh the lease, or restore a reaped one while the socket is open."""

from __future__ import annotations

from typing import Any

from agent_channel import presence, runtime
from agent_channel.handler_kit import socket_route
from agent_channel.observability import logger
from agent_channel.socket_events import SocketEvent, response

store = runtime.presence_store()
scheduler = runtime.grace_scheduler()


@socket_route
def handler(event: SocketEvent) -> dict[str, Any]:
    caller = event.caller
    subscription = caller.subscription(event.connection_id) if caller else None
    if subscription is None:
        # Topic and non-channel sockets have no lease; the frame still kept the
        # socket under API Gateway's idle timeout.
        return response(200)
    outcome = presence.heartbeat(store, scheduler, subscription)
    if outcome is not presence.Heartbeat.REFRESHED:
        logger.info("heartbeat", extra={"outcome": outcome.value})
    return response(200)
