"""EventBridge Scheduler, locally: fire due one-time schedules and the sweeper.

Schedules live in the stack's moto server, created by the unchanged
grace_scheduler. Moto stores them but never fires them, so this loop lists the
group, fires each ``at()`` schedule whose time has come by invoking its target
function with its recorded input, and deletes it (``ActionAfterCompletion:
DELETE``). Functions with a ``rate(...)`` schedule event (the sweeper) run on a
timer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent_channel.observability import logger
from agent_channel_dev.local.apigw_events import scheduled_event
from agent_channel_dev.local.stack_template import TemplateError

Invoke = Callable[[str, Any], Awaitable[Any]]
"""Invoke a function by name or ARN with an event."""

if TYPE_CHECKING:
    from mypy_boto3_scheduler import EventBridgeSchedulerClient

TICK_SECONDS = 1.0
"""How often due schedules are looked for (AWS fires with one-minute precision)."""


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
    group: str
    name: str
    expression: str
    target_arn: str
    payload: Any
    delete_after: bool


class SchedulerLoop:
    def __init__(
        self,
        client: EventBridgeSchedulerClient,
        invoke: Invoke,
        *,
        groups: list[str],
        rates: dict[str, float],
    ) -> None:
        self._client = client
        self._invoke = invoke
        self._groups = groups
        self._rates = rates
        """Function name -> seconds between runs of its rate() schedule."""
        self._fired: set[tuple[str, str]] = set()
        self._read: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
        """(group, name) -> (its summary's creation and modification dates, the
        schedule as read): a schedule is read again only when it changed, not at
        every tick, which would hold the stack's moto's one-request lock for a
        GetSchedule per pending grace every second."""

    def due(self, now: float) -> list[DueSchedule]:
        return [found for group in self._groups for found in self._due_in(group, now)]

    def _due_in(self, group: str, now: float) -> list[DueSchedule]:
        found: list[DueSchedule] = []
        # Every page: ListSchedules answers 50 at most by default, newest first, so
        # one page would leave the oldest graces (the first due) unfired under load.
        pages = self._client.get_paginator("list_schedules").paginate(GroupName=group)
        summaries = [summary for page in pages for summary in page.get("Schedules", [])]
        listed = {(group, summary.get("Name", "")) for summary in summaries}
        for key in [key for key in self._read if key[0] == group and key not in listed]:
            del self._read[key]
        for summary in summaries:
            name = summary.get("Name", "")
            schedule = self._schedule(group, name, summary)
            if schedule is None:
                continue  # deleted since the listing (a reconnect withdrew it)
            expression = schedule.get("ScheduleExpression", "")
            at = parse_at(expression)
            if at is None or at > now or (name, expression) in self._fired:
                continue
            target = schedule.get("Target", {})
            raw = target.get("Input")
            found.append(
                DueSchedule(
                    group=group,
                    name=name,
                    expression=expression,
                    target_arn=target.get("Arn", ""),
                    payload=json.loads(raw) if raw else scheduled_event(),
                    delete_after=schedule.get("ActionAfterCompletion") == "DELETE",
                )
            )
        return found

    def _schedule(self, group: str, name: str, summary: Any) -> dict[str, Any] | None:
        """The schedule as last read, read again when its summary says it was
        created or modified since (a disconnect re-arming a name updates it)."""
        version = (summary.get("CreationDate"), summary.get("LastModificationDate"))
        known = self._read.get((group, name))
        if known is not None and known[0] == version:
            return known[1]
        try:
            schedule = dict(self._client.get_schedule(Name=name, GroupName=group))
        except self._client.exceptions.ResourceNotFoundException:
            return None
        self._read[(group, name)] = (version, schedule)
        return schedule

    async def fire(self, schedule: DueSchedule) -> None:
        try:
            result = await self._invoke(schedule.target_arn, schedule.payload)
            logger.info("schedule fired", extra={"schedule": schedule.name, "result": result})
        except TemplateError:
            logger.error("schedule target has no function", extra={"schedule": schedule.name})
        except Exception:
            # On AWS this would be retried, then dead-lettered; locally it is logged.
            logger.exception("schedule target failed", extra={"schedule": schedule.name})
        await asyncio.to_thread(self._retire, schedule)

    def _retire(self, schedule: DueSchedule) -> None:
        if not schedule.delete_after:
            self._fired.add((schedule.name, schedule.expression))
            return
        group = schedule.group
        try:
            current = self._client.get_schedule(Name=schedule.name, GroupName=group)
        except self._client.exceptions.ResourceNotFoundException:
            return
        if current.get("ScheduleExpression") != schedule.expression:
            return  # a newer disconnect re-armed the same name while it ran: keep it
        try:
            self._client.delete_schedule(Name=schedule.name, GroupName=group)
        except self._client.exceptions.ResourceNotFoundException:
            return

    async def tick(self) -> int:
        """Fire every due schedule once; how many fired."""
        due = await asyncio.to_thread(self.due, time.time())
        await asyncio.gather(*(self.fire(schedule) for schedule in due))
        return len(due)

    async def _rate(self, name: str) -> None:
        try:
            await self._invoke(name, scheduled_event())
        except Exception:
            logger.exception("rate schedule failed", extra={"function": name})

    async def run(self, stop: asyncio.Event) -> None:
        next_run = {name: time.monotonic() + seconds for name, seconds in self._rates.items()}
        while not stop.is_set():
            if self._groups:
                try:
                    await self.tick()
                except Exception:
                    logger.exception("scheduler tick failed")
            for name, when in next_run.items():
                if time.monotonic() >= when:
                    await self._rate(name)
                    next_run[name] = time.monotonic() + self._rates[name]
            try:
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)
            except TimeoutError:
                continue
