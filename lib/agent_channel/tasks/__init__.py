"""The task lifecycle (queued, running, delegated, done, cancelled) and its events."""

__all__ = ["dynamodb", "events", "model", "store"]
