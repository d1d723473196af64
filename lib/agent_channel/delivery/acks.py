"""Acknowledgement: the plugin says it took a dispatch.

``{"action": "ack", "task_id": 7, "generation": 1}``: one conditional write on the
task (``delivery_store``). From then on the sweeper does not redeliver that
generation. The answer is ``{"type": "acked", ...}`` on the acking socket, or an
error frame that names the task and changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from agent_channel import clock
from agent_channel.delivery.delivery_store import AckOutcome
from agent_channel.delivery.fanout import send_to_connection
from agent_channel.delivery.history import MAX_SEQ, StreamError, channel_agent, parse_object
from agent_channel.errors import Refusal
from agent_channel.observability import count

if TYPE_CHECKING:
    from agent_channel.delivery.fanout import ConnectionPoster
    from agent_channel.identity.caller import Caller


class AckBook(Protocol):
    def acknowledge(
        self, agent_id: int, task_id: int, generation: int, now: float
    ) -> AckOutcome: ...


class AckRefused(Refusal):
    code = "ack_refused"


class Ack(NamedTuple):
    task_id: int
    generation: int


def _positive(message: dict[str, Any], name: str) -> int:
    value = message.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < MAX_SEQ:
        raise StreamError(f"'{name}' must be a positive integer")
    return value


def parse_ack(body: str | None) -> Ack:
    message = parse_object(body)
    return Ack(_positive(message, "task_id"), _positive(message, "generation"))


MESSAGES = {
    AckOutcome.NOT_FOUND: "no such task of this agent",
    AckOutcome.NOT_DELEGATED: "the task is no longer delegated (done, cancelled or claimed)",
    AckOutcome.STALE_GENERATION: "the task was dispatched again; this generation is old",
}


def acknowledge(
    book: AckBook,
    connection_id: str,
    caller: Caller | None,
    ack: Ack,
    *,
    client: ConnectionPoster,
) -> AckOutcome:
    """Record the ack and answer ``acked``; raises AckRefused (code: the outcome)."""
    agent_id = channel_agent(caller)
    outcome = book.acknowledge(agent_id, ack.task_id, ack.generation, clock.now())
    if outcome is not AckOutcome.ACKED:
        raise AckRefused(MESSAGES[outcome], code=outcome.value)
    count("Acknowledgements")
    send_to_connection(
        connection_id,
        {"type": "acked", "task_id": ack.task_id, "generation": ack.generation},
        client=client,
    )
    return outcome
