"""Task events for the backend, published to an EventBridge bus.

The backend (not necessarily Python) subscribes with a rule on the bus; a
``task.cancelled`` event lets it fail a parent workflow. Whether it may then start
the next queued task of the topic depends on the ``reason`` (docs/GRACE.md, "After
a task.cancelled"): never for ``session_offline`` or ``agent_unregistered``.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_events.type_defs import PutEventsRequestEntryTypeDef

SOURCE = "agent-channel"
TASK_CANCELLED = "task.cancelled"
DETAIL_FIELDS = (
    "event_id",
    "task_id",
    "agent_id",
    "topic_id",
    "reason",
    "cancelled_at",
    "previous_status",
)
"""task.cancelled's detail as the task-event pipe puts it on the bus (docs/OPERATIONS.md);
the function publishers below serve the other events."""
DISPATCH_GIVEN_UP = "dispatch.given_up"

PUBLISH_ATTEMPTS = 3
"""put_events can fail single entries (FailedEntryCount) without raising, and the
client's own retries do not cover that; retry such an entry this many times."""

RETRY_PAUSE_SECONDS = 0.2


class EventNotPublished(Exception):
    """The bus refused an event after every attempt."""


class DispatchGivenUp(NamedTuple):
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


class DeliveryEvents(Protocol):
    def dispatch_given_up(self, event: DispatchGivenUp) -> None:
        """Tell the backend a dispatch was given up; raises EventNotPublished."""


class EventBridgeTaskEvents:
    def __init__(self, client: EventBridgeClient, bus_name: str) -> None:
        self._client = client
        self._bus_name = bus_name

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
