"""Read back what reached the backend's EventBridge bus, as the backend would: a
rule on the bus matching source and detail-type, with an SQS target.

Task events reach the bus through the task-event pipe (the table's stream), so a
tap runs that pipe, from its definition in template.yaml, before each read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import boto3

from agent_channel.storage.records import Record
from agent_channel.tasks.events import SOURCE, TASK_CANCELLED
from agent_channel_dev.local.pipe import LocalPipe, PipeDefinition


@dataclass
class EventTap:
    queue_url: str
    pipe: LocalPipe

    def afresh(self) -> EventTap:
        """The same tap through a pipe that has read nothing yet (on the same
        clients): for a table put back as it was before this tap's pipe read it."""
        old = self.pipe
        pipe = LocalPipe(
            old.definition,
            old.table_name,
            old.bus_name,
            dynamodb=old.dynamodb,
            streams=old.streams,
            events=old.events,
        )
        return EventTap(self.queue_url, pipe)

    def drain(self) -> list[dict[str, Any]]:
        """Every event delivered so far (each at most once: they are deleted)."""
        self.pipe.pump()
        sqs = boto3.client("sqs")
        events: list[dict[str, Any]] = []
        while True:
            response = sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            messages = response.get("Messages", [])
            if not messages:
                return events
            for message in messages:
                events.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])


def install_event_tap(bus_name: str, detail_type: str = TASK_CANCELLED) -> EventTap:
    events = boto3.client("events")
    sqs = boto3.client("sqs")
    if bus_name != "default":
        events.create_event_bus(Name=bus_name)
    queue_url = sqs.create_queue(QueueName=f"tap-{detail_type.replace('.', '-')}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    rule = f"tap-{detail_type.replace('.', '-')}"
    events.put_rule(
        Name=rule,
        EventBusName=bus_name,
        EventPattern=json.dumps({"source": [SOURCE], "detail-type": [detail_type]}),
    )
    events.put_targets(Rule=rule, EventBusName=bus_name, Targets=[{"Id": "tap", "Arn": queue_arn}])
    pipe = LocalPipe(PipeDefinition.from_template(), Record.Meta.table_name, bus_name)
    return EventTap(queue_url, pipe)
