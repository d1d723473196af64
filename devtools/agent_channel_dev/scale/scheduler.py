"""EventBridge Scheduler in memory: the grace schedules the rules create and
withdraw, the requests that costs (as EventBridgeGraceScheduler makes them), and
the schedules that fire."""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from agent_channel.grace.scheduler import GraceCancellation, schedule_name
from agent_channel_dev.scale import aws
from agent_channel_dev.scale.meter import Meter


class Throttled(Exception):
    """Scheduler refused the request: its per-second quota is spent (the client's
    retries included; boto3's standard mode gives up within a few seconds)."""


class MemoryGraceScheduler:
    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.pending: dict[str, float] = {}
        self._due: list[tuple[float, str]] = []

    def _admit(self, operation: str, quota: str) -> None:
        if self.meter.current(f"scheduler:{operation}") >= aws.QUOTAS[quota].value:
            self.meter.add(f"scheduler_throttled:{operation}")
            raise Throttled(operation)
        self.meter.scheduler(operation)

    def schedule(self, cancellation: GraceCancellation, due_at: float) -> None:
        self._admit("CreateSchedule", "scheduler_create_per_second")
        name = schedule_name(cancellation.agent_id, cancellation.session_id)
        self.pending[name] = due_at
        heapq.heappush(self._due, (due_at, name))

    def withdraw(self, agent_id: int, session_id: str | None) -> None:
        names = [schedule_name(agent_id, None)]
        if session_id:
            names.append(schedule_name(agent_id, session_id))
        for name in names:
            self._admit("DeleteSchedule", "scheduler_delete_per_second")
            self.pending.pop(name, None)

    def withdraw_all(self, agent_id: int, session_ids: Iterable[str]) -> int:
        names = [schedule_name(agent_id, None)]
        names += sorted({schedule_name(agent_id, session) for session in session_ids if session})
        withdrawn = 0
        for name in names:
            self._admit("DeleteSchedule", "scheduler_delete_per_second")
            if self.pending.pop(name, None) is not None:
                withdrawn += 1
        return withdrawn

    def fire_due(self, now: float) -> int:
        """Schedules due by ``now`` run once (ActionAfterCompletion DELETE)."""
        fired = 0
        while self._due and self._due[0][0] <= now:
            due_at, name = heapq.heappop(self._due)
            if self.pending.get(name) == due_at:
                del self.pending[name]
                fired += 1
        return fired
