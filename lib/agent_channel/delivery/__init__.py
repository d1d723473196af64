"""Delivery: stream names and members, fan-out through @connections, Gone handling,
dispatching work to agents, and permission decisions with their replay."""

__all__ = [
    "broadcast",
    "decision_store",
    "decisions",
    "dispatch",
    "dynamodb",
    "fanout",
    "gone",
    "members",
    "streams",
]
