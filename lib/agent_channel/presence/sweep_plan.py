"""How one sweep is cut into shard workers that run at once, and into continuations.

The sweeper's index spreads routed agents over ``schema.ROUTED_SHARDS``
partitions. A scheduled sweep hands each of ``workers`` invocations an equal
share of them, so no invocation's work grows past its share of the routed agents
(docs/SCALE.md sizes the share against the function's timeout). An invocation
whose share outgrows its time budget stops there and hands the rest, with the
point it reached, to a continuation: another invocation of the same function.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from agent_channel.storage import schema

SWEEP_MARGIN_SECONDS = 15.0
"""A sweep invocation starts no new settle once fewer seconds than this remain
before its timeout, and hands the rest to a continuation. The settle started last
must end, and the continuation's Invoke be made, before the timeout cuts them off.
A settle is a few requests, tens of milliseconds; but a request that DynamoDB or
Scheduler throttles is retried by botocore's standard mode with backoff, up to
1 + 2 + 4 + 8 = 15 s over five attempts and 7.5 s on average, so one settle that
meets throttling can take seconds. A quarter of the 60 s timeout leaves 45 s of
sweeping per invocation."""

MAX_SWEEP_HOPS = 4
"""Continuations one chain may make after the invocation that began it. Each hop
sweeps for up to the budget, so a chain holds about five budgets (nearly four
minutes) of one share's sweeping: enough for a share several times too large
for one invocation (a storm's backlog needs one hop at a million agents). The
bound keeps a chain from running forever (a shard that never empties, a bug, a
forged event), and with it the sweeper invocations running at once for one share
(one per minute's chain) at five. An agent a chain reaches only that late has
missed its deadline anyway; the next minute's sweep starts over from the shards'
beginnings, and ``SweepContinuationFailures`` tells the operator. A whole chain
(the scheduled invocation, its worker, four continuations: six invocations) also
stays far below the 16 after which Lambda's recursive loop detection stops a
chain of invocations."""

_KEYS = frozenset({"sweep_shards", "sweep_resume", "sweep_hop"})


class BadShards(ValueError):
    """A worker event whose shard list, resume point or hop count is malformed."""


class Resume(NamedTuple):
    """Where a sweep of one shard stopped: ``after`` is the last agent settled, in
    the index's order (by ``schema.agent_sort``); the shard's sweep goes on with the
    agents after it."""

    shard: int
    after: int


class Worker(NamedTuple):
    """What one sweep invocation is asked to do: settle the agents of ``shards``
    (those after ``resume.after`` in ``resume.shard``), as hop ``hop`` of a chain
    (0: started by the scheduled sweep; a continuation counts from 1)."""

    shards: tuple[int, ...]
    resume: Resume | None = None
    hop: int = 0


def every_shard() -> list[int]:
    return list(range(schema.ROUTED_SHARDS))


def shard_groups(workers: int) -> list[list[int]]:
    """Every shard exactly once, dealt round-robin to at most ``workers`` groups."""
    if workers <= 0:
        raise ValueError("a sweep needs at least one worker")
    count = min(workers, schema.ROUTED_SHARDS)
    return [list(range(first, schema.ROUTED_SHARDS, count)) for first in range(count)]


def worker_event(shards: list[int], resume: Resume | None = None, hop: int = 0) -> dict[str, Any]:
    event: dict[str, Any] = {"sweep_shards": shards}
    if resume is not None:
        event["sweep_resume"] = {"shard": resume.shard, "after": resume.after}
    if hop:
        event["sweep_hop"] = hop
    return event


def worker_order(event: Any) -> Worker | None:
    """What a worker event asks; None for any other event (a scheduled sweep
    carries nothing the sweep uses). Raises BadShards on anything a sweep would
    not have written: a malformed shard list, a resume point outside the listed
    shards or whose agent id is not one, a hop count out of bounds. (The agent need
    not be of its shard's modulus: an entry written under the old one, 16, lies in
    a shard of another.)"""
    if not isinstance(event, dict) or not _KEYS & event.keys():
        return None
    unknown = {key for key in event if isinstance(key, str) and key.startswith("sweep_")} - _KEYS
    if unknown or "sweep_shards" not in event:
        raise BadShards("a worker event names its shards, and nothing else of the sweep's")
    shards = _shards(event["sweep_shards"])
    hop = _hop(event.get("sweep_hop", 0))
    resume = None
    if "sweep_resume" in event:
        if not hop:
            raise BadShards("only a continuation resumes inside a shard")
        resume = _resume(event["sweep_resume"], shards)
    return Worker(tuple(shards), resume, hop)


def _shards(shards: Any) -> list[int]:
    if (
        not isinstance(shards, list)
        or not shards
        or len(shards) > schema.ROUTED_SHARDS
        or not all(type(shard) is int and 0 <= shard < schema.ROUTED_SHARDS for shard in shards)
    ):
        raise BadShards(f"not a list of shard numbers below {schema.ROUTED_SHARDS}")
    return sorted(set(shards))


def _hop(hop: Any) -> int:
    if type(hop) is not int or not 0 <= hop <= MAX_SWEEP_HOPS:
        raise BadShards(f"a hop count is a whole number from 0 to {MAX_SWEEP_HOPS}")
    return hop


def _resume(resume: Any, shards: list[int]) -> Resume:
    if not isinstance(resume, dict) or set(resume) != {"shard", "after"}:
        raise BadShards("a resume point is {shard, after}")
    shard, after = resume["shard"], resume["after"]
    if type(shard) is not int or shard not in shards:
        raise BadShards("a resume point lies in one of the listed shards")
    if type(after) is not int or not 0 < after < schema.MAX_ID:
        raise BadShards(f"a resume point's agent id is a positive integer below {schema.MAX_ID}")
    return Resume(shard, after)
