"""Increasing integer ids, from atomic counter items."""

from __future__ import annotations

from agent_channel.storage.records import CounterRecord
from agent_channel.storage.schema import counter_key


def next_id(name: str) -> int:
    """The next id of ``name`` (``user``, ``topic``, ``task``): one atomic ADD."""
    counter = CounterRecord(*counter_key(name))
    counter.update(actions=[CounterRecord.value.add(1)])
    return int(counter.value)
