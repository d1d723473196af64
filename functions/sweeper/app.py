"""The sweeper, every minute: settle routed agents whose leases have all gone stale,
because $disconnect may never come; then redeliver the dispatches no session
acknowledged (with backoff), or give them up."""

from __future__ import annotations

from typing import Any

from agent_channel.config import settings
from agent_channel.delivery import redelivery
from agent_channel.lambda_kit import wiring
from agent_channel.observability import count, logger, metrics
from agent_channel.presence import rules

store = wiring.presence_store()
scheduler = wiring.grace_scheduler()
tasks = wiring.task_store()
book = wiring.delivery_book()
events = wiring.task_events()
management = wiring.management_api()
on_gone = wiring.gone_handler()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: Any, context: Any) -> dict[str, Any]:
    outcomes = rules.sweep(store, scheduler, settings())
    count("SweptAgents", sum(outcomes.values()))
    # Read after the sweep: an agent it made unroutable has the grace instead.
    redelivered = redelivery.redeliver_due(
        tasks, book, events, store.routed_agents(), client=management, on_gone=on_gone
    )
    summary = {
        "outcomes": outcomes,
        "redelivered": len(redelivered.redelivered),
        "given_up": len(redelivered.given_up),
    }
    logger.info("sweep done", extra=summary)
    return summary
