"""The local stack end to end for operations: the task-event pipe carries a grace
cancellation to the bus (read back from the stack's moto server as a backend
would, with a rule and a queue), and the admin endpoint is apart from the
delivery one."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from agent_channel.tasks.events import SOURCE, TASK_CANCELLED
from tests.e2e.stack import GRACE_SECONDS, AgentProcess, DevServer, wait_until

pytestmark = pytest.mark.e2e

AgentFactory = Callable[..., AgentProcess]
MOTO_LINE = re.compile(r"^\s+moto\s+(http://\S+)$")


def moto_client(dev: DevServer, service: str) -> Any:
    url = next(m.group(1) for line in dev.output.lines if (m := MOTO_LINE.match(line)))
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def backend_tap(dev: DevServer) -> Callable[[], list[dict[str, Any]]]:
    """A rule on the stack's bus for task.cancelled, with an SQS queue as target."""
    events, sqs = moto_client(dev, "events"), moto_client(dev, "sqs")
    # The stack's one bus besides the default: the template's task-event bus.
    [bus] = [b["Name"] for b in events.list_event_buses()["EventBuses"] if b["Name"] != "default"]
    name = f"tap-{uuid.uuid4().hex[:8]}"
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    pattern = {"source": [SOURCE], "detail-type": [TASK_CANCELLED]}
    events.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps(pattern))
    events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])

    def received() -> list[dict[str, Any]]:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
        return [json.loads(m["Body"]) for m in messages.get("Messages", [])]

    return received


def test_a_grace_cancellation_reaches_the_bus_through_the_pipe(
    dev: DevServer, agents: AgentFactory
) -> None:
    received = backend_tap(dev)
    agent_id, topic_id = dev.new_agent("piped")
    session = agents(agent_id, "only")
    task_id = dev.dispatch(agent_id, topic_id, "cancel me")
    session.wait_for("dispatch", task_id=task_id)

    session.kill()

    seen: list[dict[str, Any]] = []

    def delivered() -> bool:
        seen.extend(received())
        return any(event["detail"]["task_id"] == str(task_id) for event in seen)

    wait_until(delivered, GRACE_SECONDS + 20, "task.cancelled on the bus")
    [event] = [e for e in seen if e["detail"]["task_id"] == str(task_id)]
    assert event["detail"]["agent_id"] == str(agent_id)
    assert event["detail"]["reason"] == "agent_offline"
    assert event["detail"]["event_id"]
    assert dev.task_status(agent_id, task_id) == "cancelled"


def post(dev: DevServer, path: str, command: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - loopback URL of the test's own server
        dev.backend + path,
        data=json.dumps(command).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {dev.secret}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def test_accounts_go_to_the_admin_endpoint_only(dev: DevServer) -> None:
    made = dev.cli("create-user", "ops")
    assert made["ok"] is True
    # The delivery endpoint does not know the op, as BackendFunction would not.
    answer = post(dev, "/_backend", {"op": "create_user", "name": "eve"})
    assert answer["ok"] is False and answer["error"] == "unknown_op"
    assert post(dev, "/_admin", {"op": "dispatch", "task_id": 1})["error"] == "unknown_op"


def test_a_keyed_command_sent_twice_creates_one_task(dev: DevServer) -> None:
    command = {
        "op": "create_task",
        "agent_id": dev.agent_id,
        "topic_id": dev.topic_id,
        "content": "once",
        "idempotency_key": uuid.uuid4().hex,
    }
    first, again = post(dev, "/_backend", command), post(dev, "/_backend", command)
    assert first["ok"] is True, first
    assert again == first
    listed = dev.cli("tasks", "--agent", str(dev.agent_id))["tasks"]
    assert [t["task_id"] for t in listed if t["content"] == "once"] == [first["task_id"]]
