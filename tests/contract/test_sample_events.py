"""The sample events in events/ (what `sam local invoke -e` feeds the functions)
drive every handler through moto, used verbatim.

Every AWS call a handler makes while doing so is recorded and checked against
that function's IAM policy in template.yaml, resolved with the physical names the
tests run with: the code never calls what the deployed function may not.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlparse

import boto3
import botocore.client
import pytest
from botocore.exceptions import ClientError

from agent_channel import clock
from agent_channel.config import CHANNEL_AGENT_MODEL, settings
from agent_channel.delivery import decisions
from agent_channel.identity import accounts
from agent_channel.identity.caller import Caller
from agent_channel.identity.tokens import token_digest
from agent_channel.lambda_kit import wiring
from agent_channel.storage import schema
from agent_channel.storage.records import TaskRecord, TokenRecord, UserRecord
from agent_channel.tasks.dynamodb import DynamoTaskStore
from agent_channel.tasks.model import Status
from agent_channel_dev.instruments.lambda_context import LocalContext
from agent_channel_dev.local import apigw_events, stack_template
from tests.contract.test_template import (
    FUNCTION_IDS,
    as_list,
    function_environment,
    function_role,
    policy_statements,
    translated,
)
from tests.support.clock import FakeClock
from tests.support.fixtures import World

tasks = DynamoTaskStore()

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
ACCOUNT = "123456789012"
REGION = "us-east-1"

# The sample world the events speak of.
OWNER_ID = 7
AGENT_ID = 42
TOKEN = "act_SAMPLE-token-for-sam-local-invoke"
CONNECTION_ID = "L0SM9cOFvHcCIhw="
SESSION_ID = "laptop-1"
DISPATCH_TASK_ID = 1001

EVENT_FUNCTIONS = {
    "authorize.json": "authorize",
    "connect.json": "connect",
    "disconnect.json": "disconnect",
    "heartbeat.json": "heartbeat",
    "replay_permissions.json": "replay",
    "default.json": "default",
    "sweeper.json": "sweeper",
    "cancel_offline_agent.json": "cancel_offline",
    "cancel_offline_session.json": "cancel_offline",
    "backend_decide_permission.json": "backend",
    "backend_dispatch.json": "backend",
    "backend_unregister_agent.json": "backend",
    "admin_create_agent.json": "admin",
    "admin_issue_token.json": "admin",
    "ack.json": "stream",
    "resume.json": "stream",
    "resync.json": "stream",
    "redeliver.json": "redeliver",
    "fanout_slice.json": "fanout",
}


def load_event(name: str) -> Any:
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- AWS calls vs IAM


@dataclass(frozen=True)
class Call:
    service: str
    operation: str
    params: dict[str, Any]
    endpoint: str


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    active: bool = False
    gone: set[str] = field(default_factory=set)
    """Connections whose sockets are closed: posting to them answers 410 Gone."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def recording(self) -> Iterator[list[Call]]:
        with self.lock:
            self.calls = []
            self.active = True
        try:
            yield self.calls
        finally:
            with self.lock:
                self.active = False

    def add(self, call: Call) -> None:
        with self.lock:
            if self.active:
                self.calls.append(call)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    found = Recorder()
    original = getattr(botocore.client.BaseClient, "_make_api_call")  # noqa: B009 - private

    def recording_call(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        found.add(
            Call(
                self.meta.service_model.service_name,
                operation_name,
                api_params,
                self.meta.endpoint_url,
            )
        )
        if operation_name == "PostToConnection" and api_params["ConnectionId"] in found.gone:
            raise ClientError(
                {
                    "Error": {"Code": "GoneException", "Message": "gone"},
                    "ResponseMetadata": {"HTTPStatusCode": 410},
                },
                operation_name,
            )
        return original(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording_call)
    return found


def _table_arn(name: str) -> str:
    return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"


DYNAMODB_ITEM_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


def iam_requests(call: Call) -> list[tuple[str, str, dict[str, str]]]:
    """(action, resource ARN, request context keys) that IAM authorizes for a call."""
    p = call.params
    if call.service == "dynamodb":
        if call.operation == "TransactWriteItems":
            return [
                (f"dynamodb:{DYNAMODB_ITEM_ACTIONS[kind]}", _table_arn(item[kind]["TableName"]), {})
                for item in p["TransactItems"]
                for kind in item
            ]
        if call.operation == "TransactGetItems":
            return [
                ("dynamodb:GetItem", _table_arn(item["Get"]["TableName"]), {})
                for item in p["TransactItems"]
            ]
        if call.operation in ("BatchGetItem", "BatchWriteItem"):
            return [(f"dynamodb:{call.operation}", _table_arn(t), {}) for t in p["RequestItems"]]
        arn = _table_arn(p["TableName"])
        if p.get("IndexName"):
            arn += f"/index/{p['IndexName']}"
        return [(f"dynamodb:{call.operation}", arn, {})]
    if call.service == "scheduler":
        group = p.get("GroupName", "default")
        arn = f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/{group}/{p['Name']}"
        found: list[tuple[str, str, dict[str, str]]] = [(f"scheduler:{call.operation}", arn, {})]
        role = (p.get("Target") or {}).get("RoleArn")
        if role:
            found.append(("iam:PassRole", role, {"iam:PassedToService": "scheduler.amazonaws.com"}))
        return found
    if call.service == "events":
        return [
            (
                "events:PutEvents",
                f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/"
                + entry.get("EventBusName", "default"),
                {},
            )
            for entry in p["Entries"]
        ]
    if call.service == "apigatewaymanagementapi":
        url = urlparse(call.endpoint)
        api_id = (url.hostname or "").split(".")[0]
        stage = url.path.strip("/")
        method = {"PostToConnection": "POST", "DeleteConnection": "DELETE"}.get(
            call.operation, "GET"
        )
        arn = f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{api_id}/{stage}/{method}/@connections/"
        return [("execute-api:ManageConnections", arn + p["ConnectionId"], {})]
    raise AssertionError(f"a call the IAM check does not know: {call.service}:{call.operation}")


def bindings() -> dict[str, str]:
    """The template's names resolved as the tests' environment names them."""
    env = os.environ
    callback = urlparse(env["CALLBACK_URL"])
    bus = env["EVENT_BUS_NAME"]
    found = {
        "AWS::Partition": "aws",
        "AWS::Region": REGION,
        "AWS::AccountId": ACCOUNT,
        "AWS::URLSuffix": "amazonaws.com",
        "Table": env["TABLE_NAME"],
        "Table.Arn": _table_arn(env["TABLE_NAME"]),
        "GraceScheduleGroup": env["SCHEDULE_GROUP_NAME"],
        "GraceSchedulerRole.Arn": env["SCHEDULER_ROLE_ARN"],
        "CancelOfflineFunction.Arn": env["CANCEL_OFFLINE_FUNCTION_ARN"],
        "GraceDeadLetterQueue.Arn": env["GRACE_DLQ_ARN"],
        "TaskEventBus": bus,
        "TaskEventBus.Arn": f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{bus}",
        "WebSocketApi": (callback.hostname or "").split(".")[0],
        "StageName": callback.path.strip("/"),
    }
    for name, parameter in translated()["Parameters"].items():
        found.setdefault(name, str(parameter.get("Default", "")))
    return found


def resolve(value: Any, names: dict[str, str]) -> str:
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return names[value["Ref"]]
    if "Fn::GetAtt" in value:
        return names[".".join(value["Fn::GetAtt"])]
    if "Fn::Sub" in value:
        text = value["Fn::Sub"]
        for name, bound in names.items():
            text = text.replace("${" + name + "}", bound)
        assert "${" not in text, f"unresolved: {text}"
        return str(text)
    raise AssertionError(f"cannot resolve {value}")


def allowed(folder: str, action: str, arn: str, context: dict[str, str]) -> bool:
    names = bindings()
    for statement in policy_statements(function_role(folder)):
        if statement["Effect"] != "Allow":
            continue
        if not any(
            fnmatch.fnmatch(action.lower(), a.lower()) for a in as_list(statement["Action"])
        ):
            continue
        resources = [resolve(r, names) for r in as_list(statement["Resource"])]
        if not any(fnmatch.fnmatchcase(arn, pattern) for pattern in resources):
            continue
        conditions = statement.get("Condition", {})
        if all(
            operator == "StringEquals" and context.get(key) == expected
            for operator, keys in conditions.items()
            for key, expected in keys.items()
        ):
            return True
    return False


def assert_calls_allowed(folder: str, calls: list[Call]) -> None:
    denied = [
        (call.service, call.operation, action, arn)
        for call in calls
        for action, arn, context in iam_requests(call)
        if not allowed(folder, action, arn, context)
    ]
    assert denied == [], f"{folder}'s policy in template.yaml does not allow these calls"


STACK_NAMES = {
    "TABLE_NAME",
    "SCHEDULE_GROUP_NAME",
    "SCHEDULER_ROLE_ARN",
    "CANCEL_OFFLINE_FUNCTION_ARN",
    "GRACE_DLQ_ARN",
    "EVENT_BUS_NAME",
    "CALLBACK_URL",
}
"""The variables that name the stack's resources."""


def assert_environment_matches(folder: str) -> None:
    """The function's environment in the template, resolved, is the tests' environment."""
    names = bindings()
    for variable, value in function_environment(folder).items():
        if variable in STACK_NAMES:
            assert resolve(value, names) == os.environ[variable], f"{folder}: {variable}"


def function(folder: str) -> ModuleType:
    module = importlib.import_module(f"functions.{folder}.app")
    if hasattr(module, "management"):
        # moto's @connections backend is reached through botocore, and the lean
        # poster speaks HTTP itself: the route posts through boto3's client here,
        # so that moto stores the frames and the IAM check sees each call. That
        # both send the same signed request is tests/contract/test_poster_signing.py.
        module.management = boto3_management_client()
    return module


@cache
def boto3_management_client() -> Any:
    return boto3.client("apigatewaymanagementapi", endpoint_url=settings().callback_url)


def invoke(folder: str, event: Any, recorder: Recorder) -> Any:
    assert_environment_matches(folder)
    with recorder.recording() as calls:
        result = function(folder).handler(event, LocalContext(function_name=folder))
    assert_calls_allowed(folder, list(calls))
    return result


# ---------------------------------------------------------------- the sample world


@dataclass
class Sample:
    world: World
    clock: FakeClock
    recorder: Recorder
    session_topic_id: int = 0
    other_topic_id: int = 0

    def run(self, name: str) -> Any:
        return invoke(EVENT_FUNCTIONS[name], load_event(name), self.recorder)

    def presence(self) -> Any:
        return wiring.presence_store().read(AGENT_ID)

    def posted(self) -> list[dict[str, Any]]:
        from moto.apigatewaymanagementapi.models import apigatewaymanagementapi_backends

        backend = apigatewaymanagementapi_backends[ACCOUNT][REGION]
        messages: list[dict[str, Any]] = []
        decoder = json.JSONDecoder()
        for key, connection in backend.connections.items():
            if unquote(key) != CONNECTION_ID:
                continue
            text, at = connection.data.decode("utf-8"), 0
            while at < len(text):
                message, at = decoder.raw_decode(text, at)
                messages.append(message)
        return messages

    def schedules(self) -> dict[str, dict[str, Any]]:
        client = boto3.client("scheduler")
        group = settings().schedule_group
        return {
            s["Name"]: dict(client.get_schedule(Name=s["Name"], GroupName=group))
            for s in client.list_schedules(GroupName=group)["Schedules"]
        }

    def delegated_task(self, topic_id: int) -> int:
        task = tasks.create(topic_id=topic_id, agent_id=AGENT_ID, content="review")
        task = tasks.delegate(tasks.start(task))
        return int(task.task_id)


@pytest.fixture
def sample(world: World, fake_clock: FakeClock, recorder: Recorder) -> Sample:
    """User 7 owns channel agent 42; the sample token is 7's; the stack's bus exists."""
    now = clock.now()
    UserRecord(*schema.user_key(OWNER_ID), user_id=OWNER_ID, name="ada", created_at=now).save()
    UserRecord(
        *schema.user_key(AGENT_ID),
        user_id=AGENT_ID,
        name="claude",
        created_by=OWNER_ID,
        model=CHANNEL_AGENT_MODEL,
        created_at=now,
    ).save()
    TokenRecord(*schema.token_key(token_digest(TOKEN)), user_id=OWNER_ID, created_at=now).save()
    boto3.client("events").create_event_bus(Name=settings().event_bus_name)
    found = Sample(world, fake_clock, recorder)
    found.session_topic_id = int(
        accounts.create_topic(
            OWNER_ID, "private", primary_agent_id=AGENT_ID, session_id=SESSION_ID
        ).topic_id
    )
    found.other_topic_id = int(
        accounts.create_topic(OWNER_ID, "shared", primary_agent_id=AGENT_ID).topic_id
    )
    return found


# ---------------------------------------------------------------- the events themselves


def test_every_sample_event_belongs_to_a_function_of_the_template() -> None:
    on_disk = {path.name for path in EVENTS.glob("*.json")}
    assert on_disk == set(EVENT_FUNCTIONS)
    assert set(EVENT_FUNCTIONS.values()) == set(FUNCTION_IDS)
    routes = stack_template.routes()
    for name, folder in EVENT_FUNCTIONS.items():
        event = load_event(name)
        context = event.get("requestContext") if isinstance(event, dict) else None
        if name == "authorize.json":
            assert stack_template.authorizer_function() == folder
        elif context is not None:
            assert routes[context["routeKey"]] == folder, name


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _shape(inner) for key, inner in value.items()}
    return type(value).__name__


def test_route_events_are_shaped_as_the_local_gateway_builds_them() -> None:
    caller = Caller(7, "channel_agent", 42, None, "s")
    authorizer = apigw_events.authorizer_context_for_routes(
        {"principalId": "7", "context": caller.as_context()}
    )
    for name in ("connect.json", "disconnect.json", "heartbeat.json", "replay_permissions.json"):
        sample = load_event(name)
        context = sample["requestContext"]
        built = apigw_events.route_event(
            context["routeKey"],
            CONNECTION_ID,
            authorizer=authorizer,
            body=sample.get("body"),
            headers=sample.get("headers"),
            query=sample.get("queryStringParameters"),
        )
        assert set(sample) == set(built), name
        sample_context = dict(context)
        sample_authorizer = dict(sample_context.pop("authorizer"))
        assert sample_authorizer["integrationLatency"] >= 0
        built_context = dict(built["requestContext"])
        assert set(sample_authorizer) == set(built_context.pop("authorizer")), name
        assert set(sample_context) == set(built_context), name
        for key in ("routeKey", "eventType", "messageDirection"):
            assert sample_context[key] == built_context[key], (name, key)
        if "multiValueHeaders" in sample:
            assert sample["multiValueHeaders"] == {k: [v] for k, v in sample["headers"].items()}
    default = load_event("default.json")
    assert default["requestContext"]["routeKey"] == "$default"
    assert json.loads(default["body"])["action"] not in stack_template.routes()


def test_the_authorizer_and_scheduled_events_are_shaped_as_built() -> None:
    sample = load_event("authorize.json")
    built = apigw_events.authorizer_event(CONNECTION_ID, headers={"a": "b"}, query={"c": "d"})
    assert (
        _shape({**sample, "requestContext": {}}).keys()
        == _shape({**built, "requestContext": {}}).keys()
    )
    assert set(sample["requestContext"]) == set(built["requestContext"])
    assert sample["methodArn"].endswith(f"/{sample['requestContext']['stage']}/$connect")
    assert set(load_event("sweeper.json")) == set(apigw_events.scheduled_event())


# ---------------------------------------------------------------- driving the handlers


def test_authorize_event_allows_with_the_context_the_route_events_carry(sample: Sample) -> None:
    policy = sample.run("authorize.json")
    assert policy["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    context = apigw_events.authorizer_context_for_routes(policy)
    # API Gateway measures the authorizer's latency; the context is otherwise the same.
    context.pop("integrationLatency")
    expected = dict(load_event("connect.json")["requestContext"]["authorizer"])
    expected.pop("integrationLatency")
    assert context == expected
    for name in ("disconnect.json", "heartbeat.json", "replay_permissions.json", "default.json"):
        carried = dict(load_event(name)["requestContext"]["authorizer"])
        carried.pop("integrationLatency")
        assert carried == expected, name


def test_connect_event_subscribes_the_agent(sample: Sample) -> None:
    assert sample.run("connect.json")["statusCode"] == 200
    presence = sample.presence()
    assert presence.routing_on
    assert [(lease.connection_id, lease.session_id) for lease in presence.leases] == [
        (CONNECTION_ID, SESSION_ID)
    ]


def test_restore_event_refreshes_a_live_lease(sample: Sample) -> None:
    sample.run("connect.json")
    sample.clock.advance(15)
    assert sample.run("heartbeat.json")["statusCode"] == 200
    (lease,) = sample.presence().leases
    assert lease.last_seen_at == clock.now()


def test_restore_event_restores_a_reaped_lease(sample: Sample) -> None:
    sample.run("connect.json")
    sample.clock.advance(settings().stale_after_seconds + 1)
    presence = sample.presence()
    wiring.presence_store().reap(presence.leases, clock.now() - settings().stale_after_seconds)
    assert sample.presence().leases == ()
    assert sample.run("heartbeat.json")["statusCode"] == 200
    assert len(sample.presence().leases) == 1


def test_replay_event_resends_only_recorded_decisions(sample: Sample) -> None:
    sample.run("connect.json")
    decisions.record_decision(
        wiring.decision_store(),
        agent_id=AGENT_ID,
        request_id="perm-1",
        behavior="allow",
        decided_by=7,
    )
    decisions.record_decision(
        wiring.decision_store(),
        agent_id=AGENT_ID,
        request_id="perm-2",
        behavior="deny",
        decided_by=7,
    )
    assert sample.run("replay_permissions.json")["statusCode"] == 200
    assert sample.posted() == [
        {
            "type": "permission_decision",
            "request_id": "perm-1",
            "behavior": "allow",
            "agent_id": 42,
            "decided_by": 7,
        },
        {
            "type": "permission_decision",
            "request_id": "perm-2",
            "behavior": "deny",
            "agent_id": 42,
            "decided_by": 7,
        },
    ]


def test_fanout_slice_event_posts_its_slice_and_removes_a_gone_sibling(sample: Sample) -> None:
    # The worker runs the 410 path too: its policy must allow those calls.
    sample.run("connect.json")
    sibling = load_event("connect.json")
    sibling["requestContext"]["connectionId"] = "Gone9cOFvHcCIhw="
    sibling["requestContext"]["authorizer"]["session_id"] = "desktop-2"
    assert invoke("connect", sibling, sample.recorder)["statusCode"] == 200
    sample.recorder.gone.add("Gone9cOFvHcCIhw=")
    sample.clock.advance(settings().connect_window_seconds)

    answer = sample.run("fanout_slice.json")

    assert answer == {
        "ok": True,
        "stream": "agent:user:42",
        "delivered": 1,
        "gone": 1,
        "failed": 0,
    }
    assert sample.posted() == [{"type": "broadcast", "text": "maintenance at noon"}]
    presence = sample.presence()
    assert [lease.connection_id for lease in presence.leases] == [CONNECTION_ID]


def test_replay_event_removes_a_gone_sibling_as_disconnect_would(sample: Sample) -> None:
    # The 410 path runs $disconnect's path inside the replay function: its
    # policy must allow those calls too (the recorder checks every one).
    sample.run("connect.json")
    sibling = load_event("connect.json")
    sibling["requestContext"]["connectionId"] = "Gone9cOFvHcCIhw="
    sibling["requestContext"]["authorizer"]["session_id"] = "desktop-2"
    assert invoke("connect", sibling, sample.recorder)["statusCode"] == 200
    decisions.record_decision(
        wiring.decision_store(),
        agent_id=AGENT_ID,
        request_id="perm-1",
        behavior="allow",
        decided_by=7,
    )
    sample.recorder.gone.add("Gone9cOFvHcCIhw=")
    # Open longer than the connect window: a 410 now proves the socket gone.
    sample.clock.advance(settings().connect_window_seconds)
    assert sample.run("replay_permissions.json")["statusCode"] == 200
    presence = sample.presence()
    assert presence.routing_on
    assert [lease.connection_id for lease in presence.leases] == [CONNECTION_ID]
    (schedule,) = sample.schedules().values()
    assert json.loads(schedule["Target"]["Input"])["session_id"] == "desktop-2"
    operations = {call.operation for call in sample.recorder.calls}
    assert {"GetItem", "TransactWriteItems", "DeleteItem", "CreateSchedule"} <= operations


def test_default_event_answers_with_an_error_message(sample: Sample) -> None:
    sample.run("connect.json")
    assert sample.run("default.json")["statusCode"] == 200
    (message,) = sample.posted()
    assert message["type"] == "error"
    assert message["error"] == "unknown_action"


def test_disconnect_event_clears_routing_and_schedules_grace(sample: Sample) -> None:
    sample.run("connect.json")
    assert sample.run("disconnect.json")["statusCode"] == 200
    presence = sample.presence()
    assert not presence.routing_on
    assert presence.leases == ()
    (schedule,) = sample.schedules().values()
    assert schedule["Target"]["Arn"] == os.environ["CANCEL_OFFLINE_FUNCTION_ARN"]
    assert schedule["Target"]["RoleArn"] == os.environ["SCHEDULER_ROLE_ARN"]
    assert json.loads(schedule["Target"]["Input"])["agent_id"] == AGENT_ID
    # A duplicate $disconnect changes nothing and schedules nothing.
    assert sample.run("disconnect.json")["statusCode"] == 200
    assert not [c for c in sample.recorder.calls if c.service == "scheduler"]


def test_sweeper_event_settles_an_agent_whose_plugin_died(sample: Sample) -> None:
    sample.run("connect.json")
    sample.clock.advance(settings().stale_after_seconds + 1)
    result = sample.run("sweeper.json")
    assert result["outcomes"]
    presence = sample.presence()
    assert not presence.routing_on
    assert presence.leases == ()
    assert list(sample.schedules()) == [f"grace-{AGENT_ID}"]


def test_cancel_offline_agent_event_cancels_delegated_tasks(sample: Sample) -> None:
    shared = sample.delegated_task(sample.other_topic_id)
    private = sample.delegated_task(sample.session_topic_id)
    result = sample.run("cancel_offline_agent.json")
    assert result["ok"] is True
    assert sorted(result["cancelled"]) == sorted([shared, private])
    for task_id in (shared, private):
        task = tasks.get(task_id)
        assert task is not None
        assert task.status == Status.CANCELLED
    # The function publishes nothing: the task-event pipe derives the events from
    # the table's stream (tests/behaviour/test_task_event_pipe.py).
    assert [c for c in sample.recorder.calls if c.service == "events"] == []
    # Run twice (Scheduler invokes at least once): nothing is cancelled twice.
    assert sample.run("cancel_offline_agent.json")["cancelled"] == []


def test_cancel_offline_session_event_cancels_only_that_sessions_topic(sample: Sample) -> None:
    shared = sample.delegated_task(sample.other_topic_id)
    private = sample.delegated_task(sample.session_topic_id)
    result = sample.run("cancel_offline_session.json")
    assert result["ok"] is True
    assert result["cancelled"] == [private]
    shared_task = tasks.get(shared)
    assert shared_task is not None
    assert shared_task.status == Status.DELEGATED


def test_backend_decide_permission_event_records_and_pushes(sample: Sample) -> None:
    sample.run("connect.json")
    result = sample.run("backend_decide_permission.json")
    assert result["ok"] is True
    (pushed,) = sample.posted()
    # Numbered in the agent stream's history: the first message of the stream.
    assert pushed.pop("epoch")
    assert pushed == {
        "type": "permission_decision",
        "request_id": "perm-3",
        "behavior": "allow",
        "agent_id": 42,
        "decided_by": 7,
        "seq": 1,
    }


def test_backend_unregister_agent_event_closes_the_agent(sample: Sample) -> None:
    sample.run("connect.json")
    delegated = sample.delegated_task(sample.other_topic_id)
    result = sample.run("backend_unregister_agent.json")
    assert result["ok"] is True, result
    assert result["cancelled"] == [delegated]
    assert len(result["closed_connections"]) == 1
    closes = [c for c in sample.recorder.calls if c.operation == "DeleteConnection"]
    assert len(closes) == 1


def test_backend_dispatch_event_delegates_to_the_routed_agent(sample: Sample) -> None:
    sample.run("connect.json")
    now = clock.now()
    pk, sk = schema.task_key(DISPATCH_TASK_ID)
    TaskRecord(
        pk,
        sk,
        task_id=DISPATCH_TASK_ID,
        topic_id=sample.other_topic_id,
        agent_id=AGENT_ID,
        status=Status.RUNNING.value,
        content="Please summarise the design review.",
        created_at=now,
        updated_at=now,
        gsi1pk=schema.task_status_index(AGENT_ID, Status.RUNNING.value),
        gsi1sk=schema.task_status_sort(sample.other_topic_id, DISPATCH_TASK_ID),
    ).save()
    result = sample.run("backend_dispatch.json")
    assert result["ok"] is True, result
    assert result["status"] == Status.DELEGATED
    (message,) = sample.posted()
    assert message["type"] == "dispatch"
    assert message["task_id"] == DISPATCH_TASK_ID
    assert message["comment"]["content"] == "Please summarise the design review."


def test_admin_events_create_an_agent_and_mint_a_token(sample: Sample) -> None:
    agent = sample.run("admin_create_agent.json")
    assert agent["ok"] is True and agent["owner_id"] == OWNER_ID, agent
    token = sample.run("admin_issue_token.json")
    assert token["ok"] is True and token["token"], token
    assert accounts.get_user(agent["agent_id"]) is not None


def _dispatch_sample_task(sample: Sample) -> None:
    sample.run("connect.json")
    now = clock.now()
    pk, sk = schema.task_key(DISPATCH_TASK_ID)
    TaskRecord(
        pk,
        sk,
        task_id=DISPATCH_TASK_ID,
        topic_id=sample.other_topic_id,
        agent_id=AGENT_ID,
        status=Status.RUNNING.value,
        content="Please summarise the design review.",
        created_at=now,
        updated_at=now,
        gsi1pk=schema.task_status_index(AGENT_ID, Status.RUNNING.value),
        gsi1sk=schema.task_status_sort(sample.other_topic_id, DISPATCH_TASK_ID),
    ).save()
    assert sample.run("backend_dispatch.json")["ok"] is True


def test_ack_event_acknowledges_the_dispatch(sample: Sample) -> None:
    _dispatch_sample_task(sample)
    assert sample.run("ack.json")["statusCode"] == 200
    assert sample.posted()[-1] == {"type": "acked", "task_id": DISPATCH_TASK_ID, "generation": 1}
    task = tasks.get(DISPATCH_TASK_ID)
    assert task is not None and task.acknowledged


def test_resume_event_of_another_epoch_answers_a_history_gap(sample: Sample) -> None:
    _dispatch_sample_task(sample)
    assert sample.run("resume.json")["statusCode"] == 200
    assert sample.posted()[-1] == {"type": "history_gap", "after": 1, "epoch": "5e1f2a3b"}


def test_resync_event_sends_the_delegated_tasks_and_the_offset(sample: Sample) -> None:
    _dispatch_sample_task(sample)
    assert sample.run("resync.json")["statusCode"] == 200
    *dispatches, answer = sample.posted()[1:]
    assert [m["task_id"] for m in dispatches] == [DISPATCH_TASK_ID]
    assert answer["type"] == "resynced" and answer["seq"] == 1
    assert answer["task_ids"] == [DISPATCH_TASK_ID]


def test_redeliver_event_sends_an_unacknowledged_dispatch_again(sample: Sample) -> None:
    _dispatch_sample_task(sample)
    sample.clock.advance(settings().redelivery_seconds)
    assert sample.run("heartbeat.json")["statusCode"] == 200
    assert sample.run("redeliver.json") == {"redelivered": 1, "given_up": 0}
    again = sample.posted()[-1]
    assert again["task_id"] == DISPATCH_TASK_ID and again["redelivery"] == 1


def test_the_iam_check_refuses_what_a_policy_does_not_grant() -> None:
    table = _table_arn(os.environ["TABLE_NAME"])
    assert allowed("heartbeat", "dynamodb:UpdateItem", table, {})
    assert not allowed("heartbeat", "dynamodb:Query", table, {})
    assert not allowed("sweeper", "dynamodb:UpdateItem", _table_arn("another-table"), {})
    assert not allowed("default", "dynamodb:GetItem", table, {})
    role = os.environ["SCHEDULER_ROLE_ARN"]
    assert allowed(
        "disconnect", "iam:PassRole", role, {"iam:PassedToService": "scheduler.amazonaws.com"}
    )
    assert not allowed(
        "disconnect", "iam:PassRole", role, {"iam:PassedToService": "ec2.amazonaws.com"}
    )
    other_group = f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/default/grace-42"
    assert not allowed("disconnect", "scheduler:CreateSchedule", other_group, {})
