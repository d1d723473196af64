"""The sweeper, every minute: settle routed agents whose leases have all gone stale,
because $disconnect may never come.

With SWEEP_WORKERS above one, the scheduled invocation only pays owed graces and
fans the index shards out to that many asynchronous invocations of this same
function (each event names its shards), so the work of one invocation is its
share of the routed agents, however many there are (docs/SCALE.md). An
invocation that runs short of time stops starting settles a margin before its
timeout and hands the rest to a continuation, one more invocation of itself.
"""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

import json
import os
from typing import TYPE_CHECKING, Any

from agent_channel.config import settings
from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.invocation import lambda_handler
from agent_channel.observability import count, logger
from agent_channel.presence import rules, sweep_plan

if TYPE_CHECKING:
    from collections.abc import Callable

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


def time_budget(context: Any) -> Callable[[], float] | None:
    """Seconds left to start new settles in: the invocation's remaining time less
    the margin the last settle and the continuation's Invoke need."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return lambda: remaining() / 1000 - sweep_plan.SWEEP_MARGIN_SECONDS


def continue_sweep(function_arn: str, hop: int, swept: rules.Swept) -> bool:
    """Hand what a sweep stopped before to a new asynchronous invocation of this
    function. False if it could not be started: the next minute's sweep covers
    those agents anyway (a sweep is idempotent), only later."""
    resume = swept.resume
    where = {
        "hop": hop,
        "unfinished_shards": len(swept.rest),
        "resume_after": None if resume is None else resume.after,
    }
    if hop >= sweep_plan.MAX_SWEEP_HOPS:
        logger.warning("sweep chain at its hop bound; the rest waits a minute", extra=where)
        count("SweepContinuationFailures")
        return False
    event = sweep_plan.worker_event(list(swept.rest), swept.resume, hop + 1)
    try:
        wiring.lambda_client().invoke(
            FunctionName=function_arn,
            InvocationType="Event",
            Payload=json.dumps(event).encode(),
        )
    except Exception:
        logger.exception("could not start a sweep continuation", extra=where)
        count("SweepContinuationFailures")
        return False
    count("SweepContinuations")
    logger.info("sweep continued in a new invocation", extra=where)
    return True


@lambda_handler
def handler(event: Any, context: Any) -> dict[str, Any]:
    try:
        worker = sweep_plan.worker_order(event)
    except sweep_plan.BadShards as error:
        logger.warning("malformed sweep worker event ignored", extra={"error": str(error)})
        return {"outcomes": {}}
    workers = settings().sweep_workers
    function_arn = getattr(context, "invoked_function_arn", "")
    # An endpoint override means an emulator (the local stack points every client
    # at moto), where no Lambda runs the workers or continuations it would start:
    # sweep in place, to the end.
    on_lambda = bool(function_arn) and not os.environ.get("AWS_ENDPOINT_URL")
    if worker is None and workers > 1 and on_lambda:
        rules.pay_owed_graces(store, scheduler)
        started, left = fan_out(function_arn, workers)
        logger.info("sweep fanned out", extra={"workers": started, "unstarted_shards": len(left)})
        if not left:
            return {"outcomes": {}, "workers": started}
        # Workers that could not be started (throttled, or no Lambda to invoke, as
        # in the local stack): their shards are swept here, late rather than never.
        worker = sweep_plan.Worker(tuple(sorted(left)))
    swept = rules.sweep(
        store,
        scheduler,
        settings(),
        None if worker is None else worker.shards,
        resume=None if worker is None else worker.resume,
        budget=time_budget(context) if on_lambda else None,
    )
    count("SweptAgents", sum(swept.outcomes.values()))
    answer: dict[str, Any] = {"outcomes": swept.outcomes}
    if swept.rest:
        hop = 0 if worker is None else worker.hop
        answer["continued"] = continue_sweep(function_arn, hop, swept)
    shards = None if worker is None else list(worker.shards)
    logger.info("sweep done", extra={"outcomes": swept.outcomes, "shards": shards})
    return answer


cold_start.ready()
