"""Redelivery, every minute (its own schedule, beside the presence sweeper): the
dispatches of still-delegated tasks that no session acknowledged are sent again to
their agents' sessions, with backoff, or given up (metric and event)."""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel.delivery import redelivery
from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.invocation import lambda_handler
from agent_channel.observability import logger

presence = wiring.presence_store()
tasks = wiring.task_store()
book = wiring.delivery_book()
events = wiring.task_events()
management = wiring.management_api()
on_gone = wiring.gone_handler()


@lambda_handler
def handler(event: Any, context: Any) -> dict[str, Any]:
    # Routed agents only: an agent with no live session has its grace instead.
    done = redelivery.redeliver_due(
        tasks, book, events, presence.routed_agents(), client=management, on_gone=on_gone
    )
    summary = {"redelivered": len(done.redelivered), "given_up": len(done.given_up)}
    logger.info("redelivery done", extra=summary)
    return summary


cold_start.ready()
