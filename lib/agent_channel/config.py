"""Settings read from the environment, with the defaults of the design."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

CHANNEL_AGENT_MODEL = "claude-code"
"""The model that marks a channel agent: one served through this channel, with presence."""

API_GATEWAY_MESSAGE_LIMIT = 128 * 1024
"""API Gateway refuses a WebSocket message over 128 KB (a frame and its continuations)."""

API_GATEWAY_FRAME_LIMIT = 32 * 1024
"""API Gateway closes the socket with 1009 on a client frame over 32 KB."""

MAX_REPLAY_IDS = 100
"""Ids per replay_permissions frame. Sized to the frame limit: 100 ids of the
longest allowed (256 ASCII characters) encode to about 26 KB, so a client that
fills a frame to this limit never needs a frame over 32 KB."""


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = int(raw)
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    heartbeat_seconds: int
    stale_after_seconds: int
    grace_seconds: int
    schedule_group: str
    scheduler_role_arn: str
    cancel_offline_arn: str
    grace_dead_letter_arn: str
    event_bus_name: str
    callback_url: str
    max_replay_ids: int
    fanout_workers: int
    posts_per_second: int
    """This process's share of the account's @connections request quota."""

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            heartbeat_seconds=_int("HEARTBEAT_SECONDS", 15),
            stale_after_seconds=_int("STALE_AFTER", 45),
            grace_seconds=_int("GRACE_SECONDS", 30),
            schedule_group=os.environ.get("SCHEDULE_GROUP_NAME", "agent-channel"),
            scheduler_role_arn=os.environ.get("SCHEDULER_ROLE_ARN", ""),
            cancel_offline_arn=os.environ.get("CANCEL_OFFLINE_FUNCTION_ARN", ""),
            grace_dead_letter_arn=os.environ.get("GRACE_DLQ_ARN", ""),
            event_bus_name=os.environ.get("EVENT_BUS_NAME", "default"),
            callback_url=os.environ.get("CALLBACK_URL", ""),
            max_replay_ids=_int("MAX_REPLAY_IDS", MAX_REPLAY_IDS),
            fanout_workers=_int("FANOUT_WORKERS", 64),
            posts_per_second=_int("POSTS_PER_SECOND", 2500),
        )


@cache
def settings() -> Settings:
    """The process's settings, read once (Lambda's environment does not change)."""
    return Settings.from_env()
