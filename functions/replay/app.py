"""replay_permissions: re-send the recorded decisions the plugin still waits for.

After every (re)subscribe the plugin sends the ids it holds pending; a decision
pushed while its socket was down is delivered now. Every answer, errors
included, goes back through post_to_connection (no route responses exist).
"""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel.config import settings
from agent_channel.delivery import decisions
from agent_channel.delivery.fanout import error_message, send_to_connection
from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.events import SocketEvent, response
from agent_channel.lambda_kit.route import socket_route
from agent_channel.observability import logger

management = wiring.management_api()
decision_store = wiring.decision_store()
on_gone = wiring.gone_handler()


@socket_route
def handler(event: SocketEvent) -> dict[str, Any]:
    try:
        request_ids = decisions.parse_replay_body(event.body, settings().max_replay_ids)
        replayed = decisions.replay(
            decision_store,
            event.connection_id,
            event.caller,
            request_ids,
            client=management,
            on_gone=on_gone,
        )
    except decisions.DecisionError as refused:
        logger.info("replay refused", extra={"code": refused.code})
        send_to_connection(
            event.connection_id, error_message(refused.code, refused.message), client=management
        )
        return response(200)
    logger.info("replay", extra={"requested": replayed.requested, "sent": len(replayed.sent)})
    return response(200)


cold_start.ready()
