"""The reliable agent stream's routes: ``resume`` (send what a session missed since
the sequence it names), ``resync`` (send the agent's delegated tasks and the offset
to go on from) and ``ack`` (a dispatch was taken). Every answer, errors included,
goes back through post_to_connection."""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel.delivery import acks, history
from agent_channel.delivery.fanout import error_message, send_to_connection
from agent_channel.errors import Refusal
from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.events import SocketEvent, response
from agent_channel.lambda_kit.route import socket_route
from agent_channel.observability import logger

management = wiring.management_api()
stream_history = wiring.history()
tasks = wiring.task_store()
book = wiring.delivery_book()


def _resume(event: SocketEvent) -> dict[str, Any]:
    request = history.parse_resume(event.body)
    done = history.resume(
        stream_history, event.connection_id, event.caller, request, client=management
    )
    return {"after": request.after, "sent": len(done.missed), "gap": done.gap}


def _resync(event: SocketEvent) -> dict[str, Any]:
    history.parse_resync(event.body)
    done = history.resync(
        stream_history, tasks, event.connection_id, event.caller, client=management
    )
    return {"tasks": len(done.task_ids), "seq": done.seq}


def _ack(event: SocketEvent) -> dict[str, Any]:
    ack = acks.parse_ack(event.body)
    try:
        acks.acknowledge(book, event.connection_id, event.caller, ack, client=management)
    except acks.AckRefused as refused:
        frame = {**error_message(refused.code, refused.message), "task_id": ack.task_id}
        send_to_connection(event.connection_id, frame, client=management)
        return {"task_id": ack.task_id, "refused": refused.code}
    return {"task_id": ack.task_id, "generation": ack.generation}


ACTIONS = {"resume": _resume, "resync": _resync, "ack": _ack}


@socket_route
def handler(event: SocketEvent) -> dict[str, Any]:
    action = ACTIONS.get(event.route_key)
    if action is None:
        logger.warning("stream function called for another route")
        return response(400, "unknown route")
    try:
        summary = action(event)
    except Refusal as refused:
        logger.info("stream request refused", extra={"code": refused.code})
        send_to_connection(
            event.connection_id, error_message(refused.code, refused.message), client=management
        )
        return response(200)
    logger.info(event.route_key, extra=summary)
    return response(200)


cold_start.ready()
