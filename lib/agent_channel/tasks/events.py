"""Task events for the backend, published to an EventBridge bus.

The backend (not necessarily Python) subscribes with a rule on the bus; a
``task.cancelled`` event lets it fail a parent workflow. Whether it may then start
the next queued task of the topic depends on the ``reason`` (docs/GRACE.md, "After
a task.cancelled"): never for ``session_offline`` or ``agent_unregistered``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from agent_channel.observability import count, logger

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_events.type_defs import PutEventsRequestEntryTypeDef

SOURCE = "agent-channel"
TASK_CANCELLED = "task.cancelled"
DISPATCH_GIVEN_UP = "dispatch.given_up"

PUBLISH_ATTEMPTS = 3
"""put_events can fail single entries (FailedEntryCount) without raising, and the
client's own retries do not cover that; retry such an entry this many times."""

RETRY_PAUSE_SECONDS = 0.2


class EventNotPublished(Exception):
    """The bus refused an event after every attempt."""


@dataclass(frozen=True)
class TaskCancelled:
    task_id: int
    agent_id: int
    topic_id: int
    reason: str
    cancelled_at: float
    previous_status: str = "delegated"
    """What the task was when it was cancelled (queued, pending, running, delegated)."""

    def detail(self) -> dict[str, object]:
        return {
            "task_id": self.task_id,
            "agent_id": self.agent_id,
            "topic_id": self.topic_id,
            "reason": self.reason,
            "cancelled_at": self.cancelled_at,
            "previous_status": self.previous_status,
        }


@dataclass(frozen=True)
class DispatchGivenUp:
    """A dispatch no session acknowledged after every redelivery: the task is still
    delegated, and the backend decides what to do with it."""

    task_id: int
    agent_id: int
    topic_id: int
    generation: int
    deliveries: int

    def detail(self) -> dict[str, object]:
        return {
            "task_id": self.task_id,
            "agent_id": self.agent_id,
            "topic_id": self.topic_id,
            "generation": self.generation,
            "deliveries": self.deliveries,
        }


class TaskEvents(Protocol):
    def task_cancelled(self, event: TaskCancelled) -> None:
        """Tell the backend a task was cancelled; raises EventNotPublished."""


def announce(events: TaskEvents, event: TaskCancelled) -> bool:
    """Publish a cancellation that has committed; False if it could not be.

    A retry of the caller would not find the task open again, so failing it would
    not bring the event back: the failure is made loud (logged, counted as
    ``CancelEventFailures``) and the caller reports the task as unannounced.
    """
    try:
        events.task_cancelled(event)
    except Exception:
        count("CancelEventFailures")
        logger.exception("task.cancelled event not published", extra={"task_id": event.task_id})
        return False
    return True


class DeliveryEvents(Protocol):
    def dispatch_given_up(self, event: DispatchGivenUp) -> None:
        """Tell the backend a dispatch was given up; raises EventNotPublished."""


class EventBridgeTaskEvents:
    def __init__(self, client: EventBridgeClient, bus_name: str) -> None:
        self._client = client
        self._bus_name = bus_name

    def task_cancelled(self, event: TaskCancelled) -> None:
        self._publish(TASK_CANCELLED, event.task_id, event.detail())

    def dispatch_given_up(self, event: DispatchGivenUp) -> None:
        self._publish(DISPATCH_GIVEN_UP, event.task_id, event.detail())

    def _publish(self, detail_type: str, task_id: int, detail: dict[str, object]) -> None:
        entry: PutEventsRequestEntryTypeDef = {
            "Source": SOURCE,
            "DetailType": detail_type,
            "Detail": json.dumps(detail),
            "EventBusName": self._bus_name,
        }
        failure = ""
        for attempt in range(PUBLISH_ATTEMPTS):
            if attempt:
                time.sleep(RETRY_PAUSE_SECONDS * attempt)
            response = self._client.put_events(Entries=[entry])
            if not response.get("FailedEntryCount"):
                return
            result = response["Entries"][0]
            failure = f"{result.get('ErrorCode', '')}: {result.get('ErrorMessage', '')}"
        raise EventNotPublished(f"task {task_id}: {failure}")
