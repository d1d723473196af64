"""Grace schedules in moto's EventBridge Scheduler: names, time, settings, repeats,
and the courtesy withdraw."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from agent_channel.config import settings
from agent_channel.grace.eventbridge import MAX_EVENT_AGE_SECONDS, MAX_RETRY_ATTEMPTS, at_expression
from agent_channel.grace.scheduler import GraceCancellation, schedule_name
from agent_channel.lambda_kit import wiring
from tests.support.schedules import get_schedule

# Scheduler's own rule for names (the API model: 1-64 of [0-9a-zA-Z-_.]).
NAME_RULE = re.compile(r"[0-9a-zA-Z\-_.]{1,64}")
DUE = 1_800_000_030.0
"""2027-01-15T08:00:30Z."""


def exists(name: str) -> bool:
    try:
        get_schedule(name)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return False
        raise
    return True


@pytest.mark.parametrize(
    "session_id",
    [None, "s1", "a session id with spaces/and:colons", "ü" * 300, "x" * 10_000],
)
def test_names_are_deterministic_and_within_schedulers_rules(session_id: str | None) -> None:
    agent_id = 9_223_372_036_854_775_807
    name = schedule_name(agent_id, session_id)
    assert NAME_RULE.fullmatch(name), name
    assert name == schedule_name(agent_id, session_id)


def test_names_separate_agents_and_sessions() -> None:
    names = {
        schedule_name(1, None),
        schedule_name(1, "s1"),
        schedule_name(1, "s2"),
        schedule_name(11, None),
        schedule_name(11, "s1"),
    }
    assert len(names) == 5


def test_the_time_is_utc_and_never_early() -> None:
    assert at_expression(DUE) == "at(2027-01-15T08:00:30)"
    # A fraction of a second rounds up: a schedule may fire late, never early.
    assert at_expression(DUE + 0.2) == "at(2027-01-15T08:00:31)"


def test_the_time_does_not_depend_on_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        assert at_expression(DUE) == "at(2027-01-15T08:00:30)"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_schedule_carries_every_setting(aws: None) -> None:
    wiring.grace_scheduler().schedule(GraceCancellation(7, "00ff00ff00ff00ff", "s1"), DUE)

    schedule = get_schedule(schedule_name(7, "s1"))

    assert schedule["ScheduleExpression"] == "at(2027-01-15T08:00:30)"
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["ActionAfterCompletion"] == "DELETE"
    target = schedule["Target"]
    assert target["Arn"] == settings().cancel_offline_arn
    assert target["RoleArn"] == settings().scheduler_role_arn
    assert target["RetryPolicy"] == {
        "MaximumRetryAttempts": MAX_RETRY_ATTEMPTS,
        "MaximumEventAgeInSeconds": MAX_EVENT_AGE_SECONDS,
    }
    assert target["DeadLetterConfig"] == {"Arn": settings().grace_dead_letter_arn}
    assert json.loads(target["Input"]) == {
        "agent_id": 7,
        "subscription_token": "00ff00ff00ff00ff",
        "session_id": "s1",
    }


def test_the_agent_wide_input_has_no_session(aws: None) -> None:
    wiring.grace_scheduler().schedule(GraceCancellation(7, "00ff00ff00ff00ff"), DUE)
    target = get_schedule(schedule_name(7, None))["Target"]
    assert json.loads(target["Input"]) == {"agent_id": 7, "subscription_token": "00ff00ff00ff00ff"}


def test_scheduling_twice_is_not_an_error_and_the_newer_wins(aws: None) -> None:
    scheduler = wiring.grace_scheduler()
    scheduler.schedule(GraceCancellation(7, "1111111111111111"), DUE)
    scheduler.schedule(GraceCancellation(7, "2222222222222222"), DUE + 60)

    schedule = get_schedule(schedule_name(7, None))

    assert json.loads(schedule["Target"]["Input"])["subscription_token"] == "2222222222222222"
    assert schedule["ScheduleExpression"] == "at(2027-01-15T08:01:30)"
    # UpdateSchedule resets what it is not given; the update gives everything.
    assert schedule["Target"]["DeadLetterConfig"] == {"Arn": settings().grace_dead_letter_arn}
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}


@contextmanager
def before_scheduler_call(operation: str, action: Any) -> Iterator[list[bool]]:
    events = wiring.grace_scheduler()._client.meta.events
    fired: list[bool] = []

    def hook(**_: Any) -> None:
        if not fired:
            fired.append(True)
            action()

    event = f"before-call.scheduler.{operation}"
    events.register(event, hook, unique_id="interleave")
    try:
        yield fired
    finally:
        events.unregister(event, unique_id="interleave")


def test_a_schedule_that_vanishes_before_its_update_is_created_again(aws: None) -> None:
    scheduler = wiring.grace_scheduler()
    name = schedule_name(7, None)
    scheduler.schedule(GraceCancellation(7, "1111111111111111"), DUE)

    def fire_and_delete() -> None:
        # The pending schedule runs and deletes itself (ActionAfterCompletion DELETE)
        # between this create's conflict and its update.
        boto3.client("scheduler").delete_schedule(Name=name, GroupName=settings().schedule_group)

    with before_scheduler_call("UpdateSchedule", fire_and_delete) as fired:
        scheduler.schedule(GraceCancellation(7, "2222222222222222"), DUE + 60)

    assert fired
    schedule = get_schedule(name)
    assert json.loads(schedule["Target"]["Input"])["subscription_token"] == "2222222222222222"


def test_withdraw_deletes_the_agents_and_the_sessions_schedules_only(aws: None) -> None:
    scheduler = wiring.grace_scheduler()
    scheduler.schedule(GraceCancellation(7, "1111111111111111"), DUE)
    scheduler.schedule(GraceCancellation(7, "1111111111111111", "s1"), DUE)
    scheduler.schedule(GraceCancellation(7, "1111111111111111", "s2"), DUE)
    scheduler.schedule(GraceCancellation(8, "1111111111111111"), DUE)

    scheduler.withdraw(7, "s1")

    assert not exists(schedule_name(7, None))
    assert not exists(schedule_name(7, "s1"))
    assert exists(schedule_name(7, "s2")), "another session's grace still runs"
    assert exists(schedule_name(8, None))


def test_withdrawing_nothing_is_not_an_error(aws: None) -> None:
    wiring.grace_scheduler().withdraw(7, "s1")
    wiring.grace_scheduler().withdraw(7, None)
