"""AWS requests per operation, counted at botocore (requests really sent), for every
route, the sweeper, cancel_offline and the backend's delivery commands, against
in-process moto. Retries would count too; none happen here.

    .venv/bin/python -m bench.requests_per_op
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "lib"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@dataclass(frozen=True)
class Row:
    operation: str
    dynamodb: list[str]
    scheduler: list[str]
    events: list[str]
    posts: int
    minimum: str
    why: str


def _environment() -> None:
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "TABLE_NAME": "agent-channel-bench",
            "SCHEDULE_GROUP_NAME": "agent-channel-bench",
            "SCHEDULER_ROLE_ARN": "arn:aws:iam::123456789012:role/bench",
            "CANCEL_OFFLINE_FUNCTION_ARN": "arn:aws:lambda:us-east-1:123456789012:function:c",
            "EVENT_BUS_NAME": "agent-channel-bench",
            "CALLBACK_URL": "https://example.execute-api.us-east-1.amazonaws.com/bench",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "ERROR",
        }
    )
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    # Settings are read once per process; an earlier benchmark of this run read them.
    from agent_channel.config import settings

    settings.cache_clear()


# The minimum each operation needs in principle, and why.
MINIMA: dict[str, tuple[str, str]] = {
    "$connect authorizer": (
        "1 read",
        "the token digest and the target must be read; one consistent BatchGetItem reads both",
    ),
    "$connect (channel agent)": (
        "1 write",
        "connection, membership, lease and routing must change atomically: one transaction. "
        "No grace is withdrawn: the agent item (read by the authorizer) records none pending",
    ),
    "$connect (channel agent, agent-wide grace pending)": (
        "1 write + 1 withdraw",
        "the same transaction; the agent-wide grace the last one out scheduled is withdrawn "
        "(the authorizer read `grace_scheduled` on the agent; the transaction clears it)",
    ),
    "$connect (topic)": ("1 write", "connection and membership, with the access re-checked"),
    "heartbeat": ("1 write", "refresh last_seen_at, conditioned on the lease existing"),
    "heartbeat (lease reaped, restored)": (
        "1 write",
        "the restore transaction alone; the failed refresh first costs 1 more, but only "
        "on this rare path",
    ),
    "$disconnect (sibling remains)": (
        "3 + 1 schedule",
        "drop the connection, delete the lease returning it (a transaction cannot return "
        "old values), read the partition; the session grace",
    ),
    "$disconnect (sibling remains, 1 stale lease)": (
        "3 + 1 per stale lease + 1 schedule per session gone",
        "as above, plus the conditional delete of each stale lease (reaping is issue 17's "
        "policy); the session graces of the dropped and the reaped sessions",
    ),
    "$disconnect (last one out)": (
        "4 + 1 schedule",
        "as above, then the conditional clear (version + staleness) in one transaction; "
        "the agent-wide grace",
    ),
    "$disconnect (stale or duplicate)": (
        "2",
        "drop the connection, then the lease delete that finds it gone; nothing else",
    ),
    "replay_permissions (3 ids, 2 decided)": (
        "1 read + 1 query",
        "decisions and the caller's connection in one BatchGetItem; the stream's members",
    ),
    "$default": ("0", "an error message on the socket"),
    "sweeper (nothing routed)": (
        "17 queries",
        "the 16 ROUTED# index shards (spread so that no index partition is hot) and the "
        "owed-grace entry",
    ),
    "sweeper (1 agent, all leases stale)": (
        "17 + 2, + 1 schedule",
        "the shard queries, a consistent read of the agent, the clear-and-reap transaction",
    ),
    "cancel_offline (agent-wide, 1 delegated task)": (
        "3 + 1 event",
        "read presence, find delegated tasks (index), cancel + release the slot in one "
        "transaction guarded by the presence read, then publish task.cancelled",
    ),
    "cancel_offline (routing back on)": ("1", "read presence and stop"),
    "backend dispatch (task with an author)": (
        "5 + posts",
        "the task; its agent, topic and author in one BatchGetItem; both streams' members; "
        "the running -> delegated transaction (conditioned on the presence it read), whose "
        "result is computed, not re-read",
    ),
    "backend decide_permission": (
        "2 + posts",
        "the first-wins write with the ownership check (one transaction), the stream's members",
    ),
    "backend claim_reply": (
        "2",
        "read the task, then the conditional delegated -> done with the slot freed (one "
        "transaction; the new task is computed from the old, not re-read)",
    ),
}


def measure() -> list[Row]:
    _environment()
    import boto3
    from moto import mock_aws

    from agent_channel.config import CHANNEL_AGENT_MODEL, settings
    from agent_channel.identity import accounts
    from agent_channel.storage import schema
    from agent_channel.storage.records import LeaseRecord, Record
    from agent_channel.tasks.dynamodb import DynamoTaskStore

    tasks = DynamoTaskStore()
    from agent_channel_dev.instruments.lambda_context import LocalContext
    from agent_channel_dev.instruments.request_counter import counting_requests
    from agent_channel_dev.local import stack_template
    from agent_channel_dev.local.apigw_events import authorizer_event, route_event, scheduled_event

    rows: list[Row] = []
    gateway_functions: dict[str, Any] = {}

    def function(name: str) -> Any:
        if name not in gateway_functions:
            import importlib

            module = importlib.import_module(f"functions.{name}.app")
            if hasattr(module, "management"):
                # The lean poster speaks HTTP itself; here posts go through boto3's
                # client, which moto answers and the botocore hook counts (the
                # same request: tests/contract/test_poster_signing.py).
                module.management = boto3.client(  # type: ignore[attr-defined]
                    "apigatewaymanagementapi", endpoint_url=settings().callback_url
                )
            gateway_functions[name] = module
        return gateway_functions[name]

    def invoke(name: str, event: Any) -> Any:
        return function(name).handler(event, LocalContext(function_name=name))

    def count(operation: str, action: Callable[[], Any]) -> Any:
        with counting_requests() as counter:
            result = action()
        minimum, why = MINIMA[operation]
        rows.append(
            Row(
                operation,
                counter.of("dynamodb"),
                counter.of("scheduler"),
                counter.of("events"),
                counter.count("apigatewaymanagementapi"),
                minimum,
                why,
            )
        )
        return result

    with mock_aws():
        dynamodb = boto3.client("dynamodb")
        dynamodb.create_table(**stack_template.table_create_kwargs(Record.Meta.table_name))
        boto3.client("scheduler").create_schedule_group(Name=settings().schedule_group)
        boto3.client("events").create_event_bus(Name=settings().event_bus_name)
        owner = accounts.create_user("owner")
        token = accounts.issue_token(owner.user_id)
        agent_id = int(accounts.create_agent("agent", owner.user_id, CHANNEL_AGENT_MODEL).user_id)
        topic_id = int(
            accounts.create_topic(owner.user_id, "t", primary_agent_id=agent_id).topic_id
        )
        contexts: dict[str, dict[str, Any]] = {}

        def authorize(connection_id: str, query: dict[str, str]) -> dict[str, Any]:
            event = authorizer_event(connection_id, query={**query, "token": token})
            policy = invoke("authorize", event)
            return {"principalId": policy["principalId"], **policy["context"]}

        def connect(connection_id: str, query: dict[str, str], label: str | None) -> None:
            context = (
                count("$connect authorizer", lambda: authorize(connection_id, query))
                if label == "$connect (channel agent)"
                else authorize(connection_id, query)
            )
            contexts[connection_id] = context
            event = route_event("$connect", connection_id, authorizer=context, query=query)
            answer = (
                count(label, lambda: invoke("connect", event))
                if label
                else invoke("connect", event)
            )
            assert answer["statusCode"] == 200, answer

        def send(connection_id: str, route: str, name: str, body: str, label: str) -> None:
            event = route_event(route, connection_id, authorizer=contexts[connection_id], body=body)
            count(label, lambda: invoke(name, event))

        def disconnect(connection_id: str, label: str | None) -> None:
            event = route_event("$disconnect", connection_id, authorizer=contexts[connection_id])
            if label:
                count(label, lambda: invoke("disconnect", event))
            else:
                invoke("disconnect", event)

        def backend(command: dict[str, Any], label: str) -> dict[str, Any]:
            answer: dict[str, Any] = count(label, lambda: invoke("backend", command))
            assert answer["ok"], answer
            return answer

        agent_query = {"agent_id": str(agent_id), "session_id": "s1"}
        connect("a1=", agent_query, "$connect (channel agent)")
        connect("t1=", {"topic_id": str(topic_id)}, "$connect (topic)")
        send("a1=", "heartbeat", "heartbeat", '{"action": "heartbeat"}', "heartbeat")
        # A reaped lease: delete it behind the open socket's back.
        LeaseRecord(*schema.lease_key(agent_id, "a1=")).delete()
        send(
            "a1=",
            "heartbeat",
            "heartbeat",
            '{"action": "heartbeat"}',
            "heartbeat (lease reaped, restored)",
        )
        for request_id in ("r1", "r2"):
            backend(
                {
                    "op": "decide_permission",
                    "agent_id": agent_id,
                    "request_id": request_id,
                    "behavior": "allow",
                    "decided_by": owner.user_id,
                },
                "backend decide_permission",
            )
        rows.pop()  # keep one decide_permission row
        send(
            "a1=",
            "replay_permissions",
            "replay",
            '{"action": "replay_permissions", "request_ids": ["r1", "r2", "r3"]}',
            "replay_permissions (3 ids, 2 decided)",
        )
        send("a1=", "$default", "default", '{"action": "nope"}', "$default")
        task = tasks.start(
            tasks.create(topic_id=topic_id, agent_id=agent_id, content="x", author_id=owner.user_id)
        )
        backend(
            {"op": "dispatch", "task_id": int(task.task_id)},
            "backend dispatch (task with an author)",
        )
        backend({"op": "claim_reply", "task_id": int(task.task_id)}, "backend claim_reply")

        connect("a2=", {**agent_query, "session_id": "s2"}, None)
        disconnect("a2=", "$disconnect (sibling remains)")
        disconnect("a2=", "$disconnect (stale or duplicate)")
        task = tasks.start(
            tasks.create(topic_id=topic_id, agent_id=agent_id, content="y", author_id=owner.user_id)
        )
        backend(
            {"op": "dispatch", "task_id": int(task.task_id)},
            "backend dispatch (task with an author)",
        )
        rows.pop()
        lease_token = next(
            lease.token
            for lease in function("heartbeat").store.read(agent_id).leases
            if lease.connection_id == "a1="
        )
        disconnect("a1=", "$disconnect (last one out)")
        disconnect("t1=", None)
        count("sweeper (nothing routed)", lambda: invoke("sweeper", scheduled_event()))
        grace = {"agent_id": agent_id, "subscription_token": lease_token}
        count(
            "cancel_offline (agent-wide, 1 delegated task)",
            lambda: invoke("cancel_offline", grace),
        )
        connect("a3=", agent_query, "$connect (channel agent, agent-wide grace pending)")
        count("cancel_offline (routing back on)", lambda: invoke("cancel_offline", grace))
        # Two more sessions; one goes stale, the other leaves while a3 stays.
        connect("a4=", {**agent_query, "session_id": "s4"}, None)
        connect("a5=", {**agent_query, "session_id": "s5"}, None)
        LeaseRecord(*schema.lease_key(agent_id, "a4=")).update(
            actions=[LeaseRecord.last_seen_at.set(1.0)]
        )
        disconnect("a5=", "$disconnect (sibling remains, 1 stale lease)")
        # Every lease stale: the plugins crashed without a $disconnect.
        LeaseRecord(*schema.lease_key(agent_id, "a3=")).update(
            actions=[LeaseRecord.last_seen_at.set(1.0)]
        )
        count("sweeper (1 agent, all leases stale)", lambda: invoke("sweeper", scheduled_event()))
    order = list(MINIMA)
    return sorted(rows, key=lambda row: order.index(row.operation))


def _requests(names: list[str]) -> str:
    if not names:
        return "0"
    counted: dict[str, int] = {}
    for name in names:
        counted[name] = counted.get(name, 0) + 1
    detail = ", ".join(f"{n} {op}" if n > 1 else op for op, n in counted.items())
    return f"{len(names)} ({detail})"


def markdown(rows: list[Row]) -> str:
    lines = [
        "| operation | DynamoDB | Scheduler | EventBridge | posts | minimum | why |",
        "| --- | --- | --- | --- | ---: | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.operation} | {_requests(row.dynamodb)} | {_requests(row.scheduler)}"
            f" | {_requests(row.events)} | {row.posts} | {row.minimum} | {row.why} |"
        )
    return "\n".join(lines)


def main() -> int:
    print(markdown(measure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
