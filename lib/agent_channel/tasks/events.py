"""Task events for the backend, on an EventBridge bus.

The backend (not necessarily Python) subscribes with a rule on the bus; a
``task.cancelled`` event lets it fail a parent workflow and start the next queued
task of the topic.

No function publishes them. The task-event pipe (``TaskEventPipe`` in
template.yaml) reads the table's stream and puts one event on the bus for each
committed move of a task to cancelled: the transactional-outbox pattern, so an
event cannot be lost between the cancel and a publish. Its detail:

    {"event_id": "<stream record id>", "task_id": "42", "agent_id": "7",
     "topic_id": "3", "reason": "agent_offline", "cancelled_at": "1700000000.5"}

Numbers arrive as decimal strings (a stream image's numbers are strings, and a
pipe's input template cannot convert them). ``event_id`` is the stream record's
id: a redelivery of the same change carries the same id, so consumers
de-duplicate on it.
"""

from __future__ import annotations

SOURCE = "agent-channel"
TASK_CANCELLED = "task.cancelled"
DETAIL_FIELDS = ("event_id", "task_id", "agent_id", "topic_id", "reason", "cancelled_at")
