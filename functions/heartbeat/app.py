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

import json
from typing import Any

from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.events import SocketEvent, response
from agent_channel.lambda_kit.route import socket_route
from agent_channel.observability import logger
from agent_channel.presence import rules

store = wiring.presence_store()
scheduler = wiring.grace_scheduler()

# The answer is the route's response (a two-way route): no @connections post.
RESTORED = json.dumps({"type": "restored"})
REFUSED = json.dumps(
    {
        "type": "error",
        "error": "restore_refused",
        "message": "this socket cannot hold a lease any more",
    }
)


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
        return response(200, REFUSED)
    return response(200, RESTORED)


cold_start.ready()
