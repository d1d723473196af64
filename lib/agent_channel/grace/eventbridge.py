"""Grace cancellations as EventBridge Scheduler one-time schedules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent_channel.grace.scheduler import GraceCancellation, schedule_name
from agent_channel.observability import logger

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mypy_boto3_scheduler import EventBridgeSchedulerClient

    from agent_channel.config import Settings

MAX_RETRY_ATTEMPTS = 3
MAX_EVENT_AGE_SECONDS = 3600
MAX_PUT_ATTEMPTS = 3
"""Create-or-update rounds when a schedule of the same name comes and goes meanwhile."""


def at_expression(due_at: float) -> str:
    """Scheduler's one-time expression, in UTC, rounded up to the next second."""
    moment = datetime.fromtimestamp(int(due_at) + (due_at % 1 > 0), tz=UTC)
    return f"at({moment:%Y-%m-%dT%H:%M:%S})"


class EventBridgeGraceScheduler:
    def __init__(self, client: EventBridgeSchedulerClient, settings: Settings) -> None:
        self._client = client
        self._settings = settings

    def _request(self, cancellation: GraceCancellation, due_at: float) -> dict[str, Any]:
        target: dict[str, Any] = {
            "Arn": self._settings.cancel_offline_arn,
            "RoleArn": self._settings.scheduler_role_arn,
            "Input": json.dumps(cancellation.payload()),
            "RetryPolicy": {
                "MaximumRetryAttempts": MAX_RETRY_ATTEMPTS,
                "MaximumEventAgeInSeconds": MAX_EVENT_AGE_SECONDS,
            },
        }
        if self._settings.grace_dead_letter_arn:
            target["DeadLetterConfig"] = {"Arn": self._settings.grace_dead_letter_arn}
        return {
            "Name": schedule_name(cancellation.agent_id, cancellation.session_id),
            "GroupName": self._settings.schedule_group,
            "ScheduleExpression": at_expression(due_at),
            "ScheduleExpressionTimezone": "UTC",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "ActionAfterCompletion": "DELETE",
            "Target": target,
        }

    def schedule(self, cancellation: GraceCancellation, due_at: float) -> None:
        request = self._request(cancellation, due_at)
        self._create_or_update(request)
        logger.info(
            "grace cancellation scheduled",
            extra={"schedule": request["Name"], "due": request["ScheduleExpression"]},
        )

    def _create_or_update(self, request: dict[str, Any]) -> None:
        for _ in range(MAX_PUT_ATTEMPTS):
            try:
                self._client.create_schedule(**request)
                return
            except self._client.exceptions.ConflictException:
                # The same name exists: an earlier disconnect of this agent (or
                # session) is still pending. The newer one carries the current token
                # and window. UpdateSchedule replaces every field (unset ones revert
                # to defaults), so it gets the whole request, not just the changes.
                pass
            try:
                self._client.update_schedule(**request)
                return
            except self._client.exceptions.ResourceNotFoundException:
                # Gone between the two calls: it fired and deleted itself, or a
                # subscribe withdrew it. Create it afresh.
                continue
        raise RuntimeError(f"schedule {request['Name']} kept appearing and vanishing")

    def withdraw(self, agent_id: int, session_id: str | None) -> None:
        names = [schedule_name(agent_id, None)]
        if session_id:
            names.append(schedule_name(agent_id, session_id))
        for name in names:
            try:
                self._client.delete_schedule(Name=name, GroupName=self._settings.schedule_group)
            except self._client.exceptions.ResourceNotFoundException:
                continue

    def withdraw_all(self, agent_id: int, session_ids: Iterable[str]) -> int:
        # By name: ListSchedules cannot be granted on the group alone, and a
        # session's schedule matters only while it has a topic or a lease.
        names = [schedule_name(agent_id, None)]
        names += sorted({schedule_name(agent_id, session) for session in session_ids if session})
        deleted = 0
        for name in names:
            try:
                self._client.delete_schedule(Name=name, GroupName=self._settings.schedule_group)
            except self._client.exceptions.ResourceNotFoundException:
                continue
            deleted += 1
        return deleted
