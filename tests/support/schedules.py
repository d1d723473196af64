"""The grace schedules the routes create, read back from (moto's) Scheduler."""

from __future__ import annotations

import json
from typing import Any

import boto3

from agent_channel.config import settings
from agent_channel.grace.scheduler import schedule_name


def get_schedule(name: str) -> dict[str, Any]:
    client = boto3.client("scheduler")
    return dict(client.get_schedule(Name=name, GroupName=settings().schedule_group))


def grace_input(agent_id: int, session_id: str | None) -> dict[str, Any]:
    """The input the agent's (or the session's) grace schedule will invoke
    ``cancel_offline`` with, as Scheduler holds it."""
    schedule = get_schedule(schedule_name(agent_id, session_id))
    found: dict[str, Any] = json.loads(schedule["Target"]["Input"])
    return found
