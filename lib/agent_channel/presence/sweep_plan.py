"""How one sweep is cut into shard workers that run at once.

The sweeper's index spreads routed agents over ``schema.ROUTED_SHARDS``
partitions. A scheduled sweep hands each of ``workers`` invocations an equal
share of them, so no invocation's work grows past its share of the routed agents
(docs/SCALE.md sizes the share against the function's timeout).
"""

from __future__ import annotations

from typing import Any

from agent_channel.storage import schema


class BadShards(ValueError):
    """A worker event whose shard list is not a list of index shard numbers."""


def shard_groups(workers: int) -> list[list[int]]:
    """Every shard exactly once, dealt round-robin to at most ``workers`` groups."""
    if workers <= 0:
        raise ValueError("a sweep needs at least one worker")
    count = min(workers, schema.ROUTED_SHARDS)
    return [list(range(first, schema.ROUTED_SHARDS, count)) for first in range(count)]


def worker_event(shards: list[int]) -> dict[str, Any]:
    return {"sweep_shards": shards}


def worker_shards(event: Any) -> list[int] | None:
    """The shards a worker event names; None for any other event (a scheduled
    sweep carries nothing the sweep uses). Raises BadShards on a malformed list."""
    if not isinstance(event, dict) or "sweep_shards" not in event:
        return None
    shards = event["sweep_shards"]
    if (
        not isinstance(shards, list)
        or not shards
        or len(shards) > schema.ROUTED_SHARDS
        or not all(type(shard) is int and 0 <= shard < schema.ROUTED_SHARDS for shard in shards)
    ):
        raise BadShards(f"not a list of shard numbers below {schema.ROUTED_SHARDS}")
    return sorted(set(shards))
