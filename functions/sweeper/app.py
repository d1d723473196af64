"""The sweeper, every minute: settle routed agents whose leases have all gone stale,
because $disconnect may never come."""

from __future__ import annotations

from typing import Any

from agent_channel import presence, runtime
from agent_channel.config import settings
from agent_channel.observability import count, logger, metrics

store = runtime.presence_store()
scheduler = runtime.grace_scheduler()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: Any, context: Any) -> dict[str, Any]:
    outcomes = presence.sweep(store, scheduler, settings())
    count("SweptAgents", sum(outcomes.values()))
    logger.info("sweep done", extra={"outcomes": outcomes})
    return {"outcomes": outcomes}
