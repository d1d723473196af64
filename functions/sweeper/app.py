"""The sweeper, every minute: settle routed agents whose leases have all gone stale,
because $disconnect may never come."""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel.config import settings
from agent_channel.lambda_kit import wiring
from agent_channel.observability import count, logger, metrics
from agent_channel.presence import rules

store = wiring.presence_store()
scheduler = wiring.grace_scheduler()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: Any, context: Any) -> dict[str, Any]:
    outcomes = rules.sweep(store, scheduler, settings())
    count("SweptAgents", sum(outcomes.values()))
    logger.info("sweep done", extra={"outcomes": outcomes})
    return {"outcomes": outcomes}


cold_start.ready()
