"""$connect: attach the socket to its stream; a channel agent also gets a lease and
routing, in one transaction. A 200 is the client's confirmation."""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel import clock
from agent_channel.config import settings
from agent_channel.identity.authorizer import BadConnectRequest, parse_connect_query
from agent_channel.identity.caller import Target
from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.events import SocketEvent, response
from agent_channel.lambda_kit.route import socket_route
from agent_channel.observability import logger
from agent_channel.presence import rules
from agent_channel.presence.model import Attachment
from agent_channel.presence.store import AccessDenied

store = wiring.presence_store()
scheduler = wiring.grace_scheduler()


@socket_route
def handler(event: SocketEvent) -> dict[str, Any]:
    caller = event.caller
    if caller is None:
        return response(401, "unauthorized")
    try:
        parse_connect_query(event.query)
    except BadConnectRequest as error:
        return response(400, str(error))
    if caller.target is Target.NONE or caller.stream is None:
        return response(400, "agent_id or topic_id is required")
    try:
        subscription = caller.subscription(event.connection_id)
        if subscription is not None:
            rules.subscribe(store, scheduler, subscription, grace_scheduled=caller.grace_scheduled)
            if caller.siblings:
                # Only when the authorizer saw routing on: with no sibling there is
                # nothing to reap, and the first session's $connect keeps its two
                # requests (docs/ARCHITECTURE.md, "Reaping on subscribe").
                rules.reap_on_subscribe(store, scheduler, settings(), subscription)
        else:
            attachment = Attachment(
                event.connection_id,
                caller.user_id,
                caller.stream,
                caller.agent_id,
                caller.topic_id,
                caller.token_digest,
            )
            store.attach(attachment, clock.now())
    except AccessDenied:
        return response(403, "forbidden")
    logger.info("connected", extra={"stream": caller.stream, "lease": caller.holds_lease})
    return response(200)


cold_start.ready()
