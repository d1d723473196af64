"""EventBridge Scheduler, locally: fire due one-time schedules and the sweeper.

Schedules live in the embedded moto server, created by the unchanged
grace_scheduler. Moto stores them but never fires them, so this loop lists the
group, fires each ``at()`` schedule whose time has come by invoking its target
function with its recorded input, and deletes it (``ActionAfterCompletion:
DELETE``). The sweeper, a ``rate(1 minute)`` schedule on AWS, runs on a timer.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent_channel.observability import logger
from agent_channel_dev.local.apigw_events import scheduled_event
from agent_channel_dev.local.functions import (
    FunctionMissing,
    FunctionRunner,
    folder_for_function_name,
    function_name_from_arn,
)

if TYPE_CHECKING:
    from mypy_boto3_scheduler import EventBridgeSchedulerClient

TICK_SECONDS = 1.0
"""How often due schedules are looked for (AWS fires with one-minute precision)."""
SWEEPER_FOLDER = "sweeper"


def parse_at(expression: str) -> float | None:
    """``at(2026-01-01T12:00:00)`` in UTC -> epoch seconds; None for rate()/cron()."""
    if not (expression.startswith("at(") and expression.endswith(")")):
        return None
    try:
        moment = datetime.strptime(expression[3:-1], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC).timestamp()


def sweep_interval(stale_after_seconds: int) -> float:
    """Every minute, as deployed; every few seconds when staleness is shortened for
    a demo or a test, so a crashed plugin is still reaped within a few heartbeats."""
    if stale_after_seconds >= 45:
        return 60.0
    return float(max(1, stale_after_seconds // 2))


@dataclass(frozen=True)
class DueSchedule:
    name: str
    expression: str
    target_arn: str
    payload: Any
    delete_after: bool


class SchedulerLoop:
    def __init__(
        self,
        client: EventBridgeSchedulerClient,
        runner: FunctionRunner,
        *,
        group: str,
        sweep_seconds: float,
    ) -> None:
        self._client = client
        self._runner = runner
        self._group = group
        self._sweep_seconds = sweep_seconds
        self._fired: set[tuple[str, str]] = set()

    def due(self, now: float) -> list[DueSchedule]:
        found: list[DueSchedule] = []
        summaries = self._client.list_schedules(GroupName=self._group).get("Schedules", [])
        for summary in summaries:
            name = summary.get("Name", "")
            try:
                schedule = self._client.get_schedule(Name=name, GroupName=self._group)
            except self._client.exceptions.ResourceNotFoundException:
                continue  # deleted since the listing (a reconnect withdrew it)
            expression = schedule.get("ScheduleExpression", "")
            at = parse_at(expression)
            if at is None or at > now or (name, expression) in self._fired:
                continue
            target = schedule.get("Target", {})
            raw = target.get("Input")
            found.append(
                DueSchedule(
                    name=name,
                    expression=expression,
                    target_arn=target.get("Arn", ""),
                    payload=json.loads(raw) if raw else scheduled_event(),
                    delete_after=schedule.get("ActionAfterCompletion") == "DELETE",
                )
            )
        return found

    def fire(self, schedule: DueSchedule) -> None:
        try:
            folder = folder_for_function_name(function_name_from_arn(schedule.target_arn))
            result = self._runner.invoke_sync(folder, schedule.payload)
            logger.info("schedule fired", extra={"schedule": schedule.name, "result": result})
        except FunctionMissing:
            logger.error("schedule target has no function", extra={"schedule": schedule.name})
        except Exception:
            # On AWS this would be retried, then dead-lettered; locally it is logged.
            logger.exception("schedule target failed", extra={"schedule": schedule.name})
        self._retire(schedule)

    def _retire(self, schedule: DueSchedule) -> None:
        if not schedule.delete_after:
            self._fired.add((schedule.name, schedule.expression))
            return
        try:
            current = self._client.get_schedule(Name=schedule.name, GroupName=self._group)
        except self._client.exceptions.ResourceNotFoundException:
            return
        if current.get("ScheduleExpression") != schedule.expression:
            return  # a newer disconnect re-armed the same name while it ran: keep it
        try:
            self._client.delete_schedule(Name=schedule.name, GroupName=self._group)
        except self._client.exceptions.ResourceNotFoundException:
            return

    def tick(self) -> int:
        """Fire every due schedule once; how many fired."""
        due = self.due(time.time())
        for schedule in due:
            self.fire(schedule)
        return len(due)

    def sweep(self) -> None:
        try:
            self._runner.invoke_sync(SWEEPER_FOLDER, scheduled_event())
        except Exception:
            logger.exception("sweeper failed")

    async def run(self, stop: asyncio.Event) -> None:
        next_sweep = time.monotonic() + self._sweep_seconds
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.tick)
            except Exception:
                logger.exception("scheduler tick failed")
            if time.monotonic() >= next_sweep:
                await asyncio.to_thread(self.sweep)
                next_sweep = time.monotonic() + self._sweep_seconds
            try:
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)
            except TimeoutError:
                continue
