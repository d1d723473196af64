"""Requests added by the reliable agent stream, counted at botocore (requests really
sent) against in-process moto: per message kept in the history, per resume, per
acknowledgement, per resync and per redelivery, and what a 410 costs now.

    .venv/bin/python -m bench.delivery_requests
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "lib"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench.requests_per_op import _environment  # noqa: E402


@dataclass(frozen=True)
class Row:
    operation: str
    dynamodb: list[str]
    posts: int
    aim: str
    met: bool


def _joined(operations: list[str]) -> str:
    counted: dict[str, int] = {}
    for operation in operations:
        counted[operation] = counted.get(operation, 0) + 1
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counted.items()) or "-"


def measure() -> list[Row]:
    _environment()
    import boto3
    from moto import mock_aws

    from agent_channel.config import CHANNEL_AGENT_MODEL, settings
    from agent_channel.delivery import dispatch, history, redelivery
    from agent_channel.delivery.gone import forget_gone
    from agent_channel.identity import accounts
    from agent_channel.lambda_kit import wiring
    from agent_channel.presence.model import Subscription
    from agent_channel.presence.rules import subscribe
    from agent_channel.storage.records import Record
    from agent_channel.tasks.model import Status
    from agent_channel_dev.instruments.lambda_context import LocalContext
    from agent_channel_dev.instruments.request_counter import counting_requests
    from agent_channel_dev.local import stack_template
    from agent_channel_dev.local.apigw_events import route_event

    rows: list[Row] = []

    def count(operation: str, aim: str, extra: Callable[[list[str]], bool], act: Any) -> Any:
        with counting_requests() as counter:
            result = act()
        operations = counter.of("dynamodb")
        rows.append(
            Row(
                operation,
                operations,
                counter.count("apigatewaymanagementapi"),
                aim,
                extra(operations),
            )
        )
        return result

    with mock_aws():
        boto3.client("dynamodb").create_table(
            **stack_template.table_create_kwargs(Record.Meta.table_name)
        )
        boto3.client("scheduler").create_schedule_group(Name=settings().schedule_group)
        boto3.client("events").create_event_bus(Name=settings().event_bus_name)
        owner = accounts.create_user("owner")
        agent_id = int(accounts.create_agent("agent", owner.user_id, CHANNEL_AGENT_MODEL).user_id)
        topic_id = int(
            accounts.create_topic(owner.user_id, "t", primary_agent_id=agent_id).topic_id
        )
        store, tasks, keep = wiring.presence_store(), wiring.task_store(), wiring.history()
        # boto3's own @connections client (moto answers it), so botocore counts posts.
        client = boto3.client("apigatewaymanagementapi", endpoint_url=settings().callback_url)
        scheduler = wiring.grace_scheduler()
        subscribe(store, scheduler, Subscription("a1=", owner.user_id, agent_id, "s1"))
        context = {
            "principalId": str(owner.user_id),
            "user_id": str(owner.user_id),
            "target": "channel_agent",
            "agent_id": str(agent_id),
            "topic_id": "",
            "session_id": "s1",
        }
        stream = __import__("functions.stream.app", fromlist=["handler"])
        stream.management = client  # type: ignore[attr-defined]

        def frame(body: dict[str, Any]) -> Any:
            event = route_event(body["action"], "a1=", authorizer=context, body=json.dumps(body))
            return stream.handler(event, LocalContext(function_name="stream"))

        message = {"type": "permission_decision", "request_id": "r", "behavior": "allow"}
        count(
            "keep a message (sequence + history), per message",
            "at most 1 write",
            lambda ops: sum(op != "Query" for op in ops) <= 1,
            lambda: history.stamp(keep, agent_id, message),
        )

        def dispatch_once(with_history: bool) -> int:
            task = tasks.start(tasks.create(topic_id=topic_id, agent_id=agent_id, content="x"))
            with counting_requests() as counter:
                dispatch.dispatch(
                    tasks,
                    task.task_id,
                    client=client,
                    on_gone=None,
                    history=keep if with_history else None,
                )
            return len(counter.of("dynamodb"))

        plain, kept = dispatch_once(False), dispatch_once(True)
        rows.append(
            Row(
                f"dispatch: {plain} requests unnumbered, {kept} numbered",
                ["Query", "PutItem"][: kept - plain],
                0,
                "at most 1 write",
                kept - plain <= 2,
            )
        )
        for _ in range(3):
            history.stamp(keep, agent_id, message)
        head = keep.head(agent_id)
        assert head is not None
        count(
            "resume, 3 missed",
            "1 Query + the posts",
            lambda ops: ops == ["Query"],
            lambda: frame({"action": "resume", "after": head.seq - 3, "epoch": head.epoch}),
        )
        count(
            "resume, up to date",
            "1 Query + the posts",
            lambda ops: ops == ["Query"],
            lambda: frame({"action": "resume", "after": head.seq, "epoch": head.epoch}),
        )
        delegated = tasks.by_status(agent_id, Status.DELEGATED)
        first = delegated[0]
        count(
            "ack",
            "1 conditional write",
            lambda ops: ops == ["UpdateItem"],
            lambda: frame({"action": "ack", "task_id": first.task_id, "generation": 1}),
        )
        count(
            "ack, refused (not delegated / another agent's)",
            "1 conditional write (+1 read to say why)",
            lambda ops: ops == ["UpdateItem", "GetItem"],
            lambda: frame({"action": "ack", "task_id": 10**9, "generation": 1}),
        )
        count(
            f"resync, {len(delegated)} delegated tasks",
            "2 Queries (head, index) + the posts",
            lambda ops: ops == ["Query", "Query"],
            lambda: frame({"action": "resync"}),
        )
        from agent_channel import clock

        real_now = clock.now
        clock.now = lambda: real_now() + settings().redelivery_seconds
        try:
            count(
                f"redelivery, 1 agent, {len(delegated) - 1} due",
                "per agent 1 index Query; per task 1 conditional write + the posts",
                lambda ops: ops.count("UpdateItem") == len(delegated) - 1,
                lambda: redelivery.redeliver_due(
                    tasks,
                    wiring.delivery_book(),
                    wiring.task_events(),
                    [agent_id],
                    client=client,
                    on_gone=None,
                ),
            )
        finally:
            clock.now = real_now
        count(
            "a 410 within the connect window",
            "1 read, nothing written",
            lambda ops: ops == ["GetItem"],
            lambda: forget_gone(store, scheduler, settings(), "a1=", f"agent:user:{agent_id}"),
        )
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| operation | DynamoDB requests | posts | aim | met |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.operation} | {_joined(row.dynamodb)} | {row.posts} | {row.aim} "
            f"| {'yes' if row.met else 'no'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(measure()))
