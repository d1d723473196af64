"""Presence: which sessions of a channel agent are live, and whether it may be given work."""

__all__ = ["dynamodb", "model", "rules", "store"]
