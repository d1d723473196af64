"""restore: renew the lease, or restore a reaped one while the socket is open.

The ``heartbeat`` route renews leases without Lambda (an API Gateway DynamoDB
integration, template.yaml); it answers ``restore_required`` when the lease is
gone, and the client then sends ``{"action": "restore"}``, which lands here. The
folder keeps its name: it is the Lambda heartbeat of earlier deployments, and the
same rule (touch, else restore) serves a restore.
"""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel.delivery.fanout import error_message, send_to_connection
from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.events import SocketEvent, response
from agent_channel.lambda_kit.route import socket_route
from agent_channel.observability import logger
from agent_channel.presence import rules

store = wiring.presence_store()
scheduler = wiring.grace_scheduler()
management = wiring.management_api()

RESTORED = {"type": "restored"}


@socket_route
def handler(event: SocketEvent) -> dict[str, Any]:
    caller = event.caller
    subscription = caller.subscription(event.connection_id) if caller else None
    if subscription is None:
        # Topic and non-channel sockets have no lease to restore.
        return response(200)
    # Touch first: a restore_required answered to an earlier heartbeat may be
    # stale by now (a restore since, or a second restore frame), and renewing a
    # lease that exists must not bump the presence version for nothing.
    outcome = rules.heartbeat(store, scheduler, subscription)
    if outcome is not rules.Heartbeat.REFRESHED:
        logger.info("restore", extra={"outcome": outcome.value})
    if outcome is rules.Heartbeat.GONE:
        # The connection is being removed ($disconnect), its token was revoked, or
        # the agent is no longer the caller's: nothing comes back on this socket.
        reply = error_message("restore_refused", "this socket cannot hold a lease any more")
    else:
        reply = RESTORED
    send_to_connection(event.connection_id, reply, client=management)
    return response(200)


cold_start.ready()
