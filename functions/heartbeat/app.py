"""restore: renew the lease, or restore a reaped one while the socket is open.

The ``heartbeat`` route renews leases without Lambda (an API Gateway DynamoDB
integration, template.yaml) and never recreates a reaped one. The client sends
``{"action": "restore"}`` instead of a heartbeat when its heartbeats ran late (a
sweep may have reaped the lease) and every tenth beat; that lands here. The folder
keeps its name: it is the Lambda heartbeat of earlier deployments, and the same
rule (touch, else restore) serves a restore. No answer is sent: one would be a
billed message for every safety-net restore, and a refused restore means the
socket is closing ($disconnect, a revoked token) anyway.
"""

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
        # Topic and non-channel sockets have no lease to restore.
        return response(200)
    # Touch first: most restores (the safety net, a beat only a little late) find
    # the lease still there, and renewing it must not bump the presence version.
    outcome = rules.heartbeat(store, scheduler, subscription)
    if outcome is not rules.Heartbeat.REFRESHED:
        logger.info("restore", extra={"outcome": outcome.value})
    return response(200)


cold_start.ready()
