"""Settings read from the environment, with the defaults of the design."""

from __future__ import annotations

import os
from functools import cache
from typing import NamedTuple

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

API_GATEWAY_INTEGRATION_TIMEOUT = 29
"""API Gateway gives up on an integration (so on ``$connect``) after 29 s."""


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = int(raw)
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


class Settings(NamedTuple):
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
    connect_window_seconds: int
    history_retention_seconds: int
    redelivery_seconds: int
    max_delivery_attempts: int
    sweep_workers: int
    posts_per_second: int
    """This process's share of the account's @connections request quota."""
    fanout_invocation_members: int
    """A stream with more connections is split across fan-out workers."""
    fanout_worker_function: str
    """The fan-out worker function's ARN; empty: every stream is posted in place."""

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            heartbeat_seconds=_int("HEARTBEAT_SECONDS", 30),
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
            # A 410 within this long of $connect proves nothing (the handshake may
            # still be in progress); longer than API Gateway's integration timeout.
            connect_window_seconds=_int(
                "CONNECT_WINDOW_SECONDS", API_GATEWAY_INTEGRATION_TIMEOUT + 1
            ),
            # An agent stream's history: stale-after + grace + a sweep is about
            # 2 minutes; an hour covers that many times over.
            history_retention_seconds=_int("HISTORY_RETENTION_SECONDS", 3600),
            # An unacknowledged dispatch is sent again after this, doubling each
            # time, and given up after this many deliveries in all.
            redelivery_seconds=_int("REDELIVERY_SECONDS", 30),
            max_delivery_attempts=_int("MAX_DELIVERY_ATTEMPTS", 8),
            # 1: the sweep runs in the scheduled invocation itself (local stack,
            # small deployments); more: it fans out to that many shard workers.
            sweep_workers=_int("SWEEP_WORKERS", 1),
            posts_per_second=_int("POSTS_PER_SECOND", 2500),
            # 5,000 posts take 2 s at the default budget, 0.7 s of CPU at 1,024 MB
            # (docs/PERFORMANCE.md, "Very large streams"): far from any timeout.
            fanout_invocation_members=_int("FANOUT_INVOCATION_MEMBERS", 5000),
            fanout_worker_function=os.environ.get("FANOUT_WORKER_FUNCTION", ""),
        )


@cache
def settings() -> Settings:
    """The process's settings, read once (Lambda's environment does not change)."""
    return Settings.from_env()
