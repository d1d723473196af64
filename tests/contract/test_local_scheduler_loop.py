"""The local stack's Scheduler loop against moto's Scheduler: it fires every due
one-time schedule, however many are pending (ListSchedules answers in pages), and
reads a schedule again only when it changed."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import boto3
import pytest
from moto import mock_aws

from agent_channel_dev.local.scheduler_loop import SchedulerLoop

GROUP = "graces"
TARGET = "arn:aws:lambda:us-east-1:123456789012:function:cancel-offline"
ROLE = "arn:aws:iam::123456789012:role/scheduler"
PAST = "at(2020-01-01T00:00:00)"
FUTURE = "at(2999-01-01T00:00:00)"


@pytest.fixture
def scheduler() -> Any:
    with mock_aws():
        client = boto3.client("scheduler", region_name="us-east-1")
        client.create_schedule_group(Name=GROUP)
        yield client


def create(client: Any, name: str, expression: str) -> None:
    client.create_schedule(
        Name=name,
        GroupName=GROUP,
        ScheduleExpression=expression,
        FlexibleTimeWindow={"Mode": "OFF"},
        Target={"Arn": TARGET, "RoleArn": ROLE, "Input": json.dumps({"name": name})},
        ActionAfterCompletion="DELETE",
    )


def counting(client: Any) -> Counter[str]:
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register("before-call.scheduler", count)
    return calls


def loop_for(client: Any) -> tuple[SchedulerLoop, list[Any]]:
    fired: list[Any] = []

    async def invoke(target: str, payload: Any) -> Any:
        fired.append(payload)
        return {"ok": True}

    return SchedulerLoop(client, invoke, groups=[GROUP], rates={}), fired


def test_every_due_schedule_fires_past_the_first_page(scheduler: Any) -> None:
    for number in range(120):
        create(scheduler, f"grace-{number:03d}", PAST)
    loop, fired = loop_for(scheduler)

    assert asyncio.run(loop.tick()) == 120
    assert sorted(payload["name"] for payload in fired) == [f"grace-{n:03d}" for n in range(120)]
    assert scheduler.list_schedules(GroupName=GROUP)["Schedules"] == []


def test_a_schedule_is_read_again_only_when_it_changed(scheduler: Any) -> None:
    create(scheduler, "later", FUTURE)
    loop, fired = loop_for(scheduler)
    calls = counting(scheduler)

    for _ in range(3):
        assert asyncio.run(loop.tick()) == 0
    assert calls["GetSchedule"] == 1

    # Re-armed to now (as a disconnect re-arms a grace): read again, and fired.
    scheduler.update_schedule(
        Name="later",
        GroupName=GROUP,
        ScheduleExpression=PAST,
        FlexibleTimeWindow={"Mode": "OFF"},
        Target={"Arn": TARGET, "RoleArn": ROLE, "Input": json.dumps({"name": "later"})},
        ActionAfterCompletion="DELETE",
    )
    assert asyncio.run(loop.tick()) == 1
    assert [payload["name"] for payload in fired] == ["later"]
