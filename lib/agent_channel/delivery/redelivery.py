"""Redelivery: a dispatch of a still-delegated task that no session acknowledged is
sent again to the agent's sessions, with backoff, until it is acknowledged,
claimed, cancelled, or given up.

``functions/redeliver`` runs ``redeliver_due`` every minute for every routed
agent (an agent without a live session has the grace cancellation instead).
The first redelivery is due ``REDELIVERY_SECONDS`` after the dispatch, then
twice as long each time (capped at ``MAX_BACKOFF_SECONDS``); after
``MAX_DELIVERY_ATTEMPTS`` deliveries in all it is given up: counted
(``DispatchesGivenUp``) and published as a ``dispatch.given_up`` event, and the
task stays delegated for the backend to decide.

Each redelivery is one conditional write (``take_attempt``) before the posts, so
concurrent sweeps, an ack, a claim or a cancellation landing in between make it
send nothing. A redelivered message is the dispatch as first sent (same
generation) plus ``"redelivery": n``; it is not numbered again in the history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from agent_channel import clock
from agent_channel.config import settings
from agent_channel.delivery.broadcast import broadcast_to_stream
from agent_channel.delivery.streams import agent_stream
from agent_channel.observability import count, logger
from agent_channel.tasks.events import DeliveryEvents, DispatchGivenUp
from agent_channel.tasks.model import Status, Task

if TYPE_CHECKING:
    from collections.abc import Iterable

    from agent_channel.delivery.fanout import ConnectionPoster, GoneHandler
    from agent_channel.tasks.store import TaskStore

MAX_BACKOFF_SECONDS = 15 * 60


class RedeliveryBook(Protocol):
    def take_attempt(self, task: Task, next_delivery_at: float) -> bool: ...

    def give_up(self, task: Task) -> bool: ...


def backoff(deliveries: int) -> float:
    """Seconds until the next delivery after ``deliveries`` so far (1, 2, ...)."""
    base = settings().redelivery_seconds
    return float(min(MAX_BACKOFF_SECONDS, base * 2 ** max(0, deliveries - 1)))


def first_redelivery(now: float) -> float:
    return now + backoff(1)


@dataclass
class Redelivered:
    redelivered: list[int] = field(default_factory=list)
    given_up: list[int] = field(default_factory=list)


def redeliver_due(
    tasks: TaskStore,
    book: RedeliveryBook,
    events: DeliveryEvents,
    agent_ids: Iterable[int],
    *,
    client: ConnectionPoster,
    on_gone: GoneHandler | None,
) -> Redelivered:
    done = Redelivered()
    for agent_id in agent_ids:
        try:
            _redeliver_agent(tasks, book, events, agent_id, done, client=client, on_gone=on_gone)
        except Exception:
            logger.exception("redelivery of an agent failed", extra={"agent_id": agent_id})
    if done.redelivered:
        count("Redeliveries", len(done.redelivered))
    if done.given_up:
        count("DispatchesGivenUp", len(done.given_up))
    return done


def _redeliver_agent(
    tasks: TaskStore,
    book: RedeliveryBook,
    events: DeliveryEvents,
    agent_id: int,
    done: Redelivered,
    *,
    client: ConnectionPoster,
    on_gone: GoneHandler | None,
) -> None:
    now = clock.now()
    # The index may lag; every decision below is a conditional write on the task.
    for task in tasks.by_status(agent_id, Status.DELEGATED):
        if task.acknowledged or task.next_delivery_at is None or not task.dispatch_message:
            continue
        if task.next_delivery_at > now:
            continue
        if task.delivery_attempts >= settings().max_delivery_attempts:
            if book.give_up(task):
                _report_given_up(events, task)
                done.given_up.append(task.task_id)
            continue
        if not book.take_attempt(task, now + backoff(task.delivery_attempts + 1)):
            continue
        message = {**json.loads(task.dispatch_message), "redelivery": task.delivery_attempts}
        broadcast_to_stream(agent_stream(agent_id), message, client=client, on_gone=on_gone)
        done.redelivered.append(task.task_id)
        logger.info(
            "dispatch redelivered",
            extra={"task_id": task.task_id, "delivery": task.delivery_attempts + 1},
        )


def _report_given_up(events: DeliveryEvents, task: Task) -> None:
    logger.warning(
        "dispatch given up: no session acknowledged it",
        extra={"task_id": task.task_id, "deliveries": task.delivery_attempts},
    )
    try:
        events.dispatch_given_up(
            DispatchGivenUp(
                task_id=task.task_id,
                agent_id=task.agent_id,
                topic_id=task.topic_id,
                generation=task.generation,
                deliveries=task.delivery_attempts,
            )
        )
    except Exception:
        # The metric and the log line stand; the event is a courtesy to the backend.
        logger.exception("could not publish dispatch.given_up")
