"""The sweeper, every minute: settle routed agents whose leases have all gone stale,
because $disconnect may never come.

With SWEEP_WORKERS above one, the scheduled invocation only pays owed graces and
fans the index shards out to that many asynchronous invocations of this same
function (each event names its shards), so the work of one invocation is its
share of the routed agents, however many there are (docs/SCALE.md).
"""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

import json
import os
from typing import Any

from agent_channel.config import settings
from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.invocation import lambda_handler
from agent_channel.observability import count, logger
from agent_channel.presence import rules, sweep_plan

store = wiring.presence_store()
scheduler = wiring.grace_scheduler()


def fan_out(function_arn: str, workers: int) -> tuple[int, list[int]]:
    """Invoke one worker per shard group, asynchronously: the number started, and
    the shards of the groups whose worker could not be started."""
    client = wiring.lambda_client()
    started = 0
    left: list[int] = []
    for shards in sweep_plan.shard_groups(workers):
        try:
            client.invoke(
                FunctionName=function_arn,
                InvocationType="Event",
                Payload=json.dumps(sweep_plan.worker_event(shards)).encode(),
            )
        except Exception:
            logger.exception("could not start a sweep worker", extra={"shards": shards})
            count("SweepWorkerFailures")
            left.extend(shards)
            continue
        started += 1
    return started, left


@lambda_handler
def handler(event: Any, context: Any) -> dict[str, Any]:
    try:
        shards = sweep_plan.worker_shards(event)
    except sweep_plan.BadShards as error:
        logger.warning("malformed sweep worker event ignored", extra={"error": str(error)})
        return {"outcomes": {}}
    workers = settings().sweep_workers
    function_arn = getattr(context, "invoked_function_arn", "")
    # An endpoint override means an emulator (the local stack points every client
    # at moto), where no Lambda runs the workers it would start: sweep in place.
    emulated = bool(os.environ.get("AWS_ENDPOINT_URL"))
    if shards is None and workers > 1 and function_arn and not emulated:
        rules.pay_owed_graces(store, scheduler)
        started, left = fan_out(function_arn, workers)
        logger.info("sweep fanned out", extra={"workers": started, "unstarted_shards": len(left)})
        if not left:
            return {"outcomes": {}, "workers": started}
        # Workers that could not be started (throttled, or no Lambda to invoke, as
        # in the local stack): their shards are swept here, late rather than never.
        shards = sorted(left)
    outcomes = rules.sweep(store, scheduler, settings(), shards)
    count("SweptAgents", sum(outcomes.values()))
    logger.info("sweep done", extra={"outcomes": outcomes, "shards": shards})
    return {"outcomes": outcomes}


cold_start.ready()
