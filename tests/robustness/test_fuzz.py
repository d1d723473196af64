"""Hypothesis throws malformed events and bodies at every function.

Each function must answer (a 4xx, an error message on the socket, or an
``{"ok": false}`` result; the authorizer's one way to answer 401 is to fail with
exactly ``Unauthorized``), never raise, and write nothing: the table, the
schedules and the event bus are compared before and after every example, and
no write request may reach Scheduler or EventBridge.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_channel.config import settings as channel_settings
from agent_channel.identity.authorizer import BadConnectRequest, parse_connect_query
from agent_channel.identity.caller import Target
from agent_channel.storage import schema
from agent_channel.storage.records import Record
from agent_channel_dev.instruments.request_counter import counting_requests
from agent_channel_dev.local.apigw_events import authorizer_event, route_event
from tests.support import management_server
from tests.support.clock import FakeClock
from tests.support.fixtures import World
from tests.support.gateway import Gateway, invoke
from tests.support.logs import captured_log_lines
from tests.support.management_server import ManagementApi, connect_agent

# Local URLs pass through moto: replay and default answer on a real @connections server.
aws = management_server.aws
management = management_server.management

FUZZ = settings(
    max_examples=60,
    deadline=None,
    # The moto account and the world are built once per test and shared by its
    # examples on purpose: each example compares a snapshot, not a fresh table.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

READ_ONLY = {
    "dynamodb": {"BatchGetItem", "GetItem", "Query", "Scan", "TransactGetItems", "DescribeTable"},
    "scheduler": {"GetSchedule", "ListSchedules"},
    "events": set[str](),
}

# -- strategies ---------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=25,
)
"""Whatever a JSON document can hold: events reach Lambda as decoded JSON."""

weird_text = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(min_codepoint=0x80), min_size=1, max_size=60),
    st.sampled_from(
        ["", " ", "\x00", "null", "-1", "0", "1e9", "9" * 40, "\u0661\u0662", "\uff11"]
    ),
    st.integers(min_value=1, max_value=5).map(lambda n: "x" * (1000 * n)),
)

huge_lists = st.integers(min_value=501, max_value=3000).map(lambda n: [f"r{i}" for i in range(n)])


def _json_or(value: Any) -> str:
    return json.dumps(value)


deep_nesting = st.builds(
    lambda depth, shape: shape(depth),
    st.one_of(st.integers(min_value=33, max_value=200), st.sampled_from([1_000, 100_000])),
    st.sampled_from(
        [
            lambda n: "[" * n,
            lambda n: "[" * n + "]" * n,
            lambda n: '{"a":' * n + "1" + "}" * n,
            lambda n: '{"action": "heartbeat", "x": ' + "[" * n + "]" * n + "}",
            lambda n: '{"action": "replay_permissions", "request_ids": ' + "[" * n + "]" * n + "}",
        ]
    ),
)
"""Nesting past the bound, up to far past the parser's recursion limit."""

huge_strings = st.sampled_from([100_000, 1_000_000]).map(
    lambda n: json.dumps({"action": "x" * n, "request_ids": ["r" * n]})
)
"""Megabyte frames: more than API Gateway passes, but a function must not care."""

bodies = st.one_of(
    st.none(),
    weird_text,
    json_values.map(_json_or),
    st.binary(max_size=80).map(lambda raw: raw.decode("latin-1")),
    deep_nesting,
    huge_strings,
)


def _not_a_caller(context: Any) -> bool:
    from agent_channel.identity.caller import Caller

    caller = Caller.from_context(context)
    return caller is None or caller.stream is None


bad_authorizer_contexts = st.one_of(
    json_values.filter(lambda v: not isinstance(v, dict)),
    st.dictionaries(st.sampled_from(["user_id", "target", "agent_id", "topic_id"]), json_values),
    st.fixed_dictionaries(
        {
            "user_id": st.one_of(weird_text, json_values),
            "target": st.sampled_from([Target.CHANNEL_AGENT, Target.AGENT, Target.TOPIC])
            | weird_text,
            "agent_id": st.one_of(weird_text, json_values),
            "topic_id": st.one_of(weird_text, json_values),
        }
    ),
).filter(_not_a_caller)
"""Authorizer contexts from which no caller with a stream can be read."""


def _query_is_malformed(query: Any) -> bool:
    if not isinstance(query, dict):
        return True
    try:
        parse_connect_query({str(k): str(v) for k, v in query.items() if isinstance(v, str)})
    except BadConnectRequest:
        return True
    return False


queries = st.one_of(
    json_values,
    st.dictionaries(
        st.sampled_from(["agent_id", "topic_id", "session_id", "token"]) | st.text(max_size=8),
        weird_text | json_values,
        max_size=5,
    ),
)
headers = st.one_of(
    json_values,
    st.dictionaries(
        st.sampled_from(["Authorization", "authorization", "AUTHORIZATION"]) | st.text(max_size=8),
        weird_text.map(lambda t: f"Bearer {t}") | weird_text | json_values,
        max_size=4,
    ),
)


def _broken(template: dict[str, Any]) -> st.SearchStrategy[Any]:
    """``template`` with its request context missing, replaced, or without a usable
    connection id; or no object at all."""

    def without(key: str) -> dict[str, Any]:
        return {k: v for k, v in template.items() if k != key}

    def with_context(context: Any) -> dict[str, Any]:
        return {**template, "requestContext": context}

    def with_connection(connection_id: Any) -> dict[str, Any]:
        return {
            **template,
            "requestContext": {**template["requestContext"], "connectionId": connection_id},
        }

    return st.one_of(
        json_values.filter(lambda v: not isinstance(v, dict)),
        st.just(without("requestContext")),
        json_values.filter(lambda v: not isinstance(v, dict)).map(with_context),
        (json_values.filter(lambda v: not isinstance(v, str)) | st.just("")).map(with_connection),
    )


def _with_authorizer(template: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    def build(context: Any, body: Any, base64: bool) -> dict[str, Any]:
        request_context = {**template["requestContext"], "authorizer": context}
        return {
            **template,
            "requestContext": request_context,
            "body": body,
            "isBase64Encoded": base64,
        }

    return st.builds(build, bad_authorizer_contexts, bodies, st.booleans())


# -- what "wrote nothing" means --------------------------------------------------------


def snapshot() -> tuple[list[str], list[str]]:
    table = Record.Meta.table_name
    items = boto3.client("dynamodb").scan(TableName=table, ConsistentRead=True)["Items"]
    schedules = boto3.client("scheduler").list_schedules(
        GroupName=channel_settings().schedule_group
    )["Schedules"]
    return (
        sorted(json.dumps(item, sort_keys=True) for item in items),
        sorted(schedule["Name"] for schedule in schedules),
    )


@contextmanager
def writes_nothing() -> Iterator[None]:
    before = snapshot()
    with counting_requests() as counter:
        yield
    for service in ("scheduler", "events"):
        written = [op for op in counter.of(service) if op not in READ_ONLY[service]]
        assert not written, f"{service} writes: {written}"
    assert snapshot() == before, "the table or the schedules changed"


def fuzz_route(name: str, event: Any, statuses: set[int]) -> dict[str, Any]:
    with writes_nothing():
        answer = invoke(name, event)
    assert isinstance(answer, dict) and answer.get("statusCode") in statuses, answer
    return answer


# -- the authorizer --------------------------------------------------------------------

authorizer_events = st.one_of(
    json_values,
    st.builds(
        lambda h, q, arn, ctx: {
            **authorizer_event("fuzz="),
            "headers": h,
            "queryStringParameters": q,
            "methodArn": arn,
            "requestContext": ctx,
        },
        headers,
        queries,
        json_values,
        json_values,
    ),
    st.builds(
        lambda h, q: {**authorizer_event("fuzz="), "headers": h, "queryStringParameters": q},
        headers,
        queries,
    ),
)


@FUZZ
@given(event=authorizer_events)
def test_authorizer_answers_401_to_anything_malformed(world: World, event: Any) -> None:
    with writes_nothing(), pytest.raises(PermissionError, match=r"^Unauthorized$"):
        invoke("authorize", event)


@FUZZ
@given(query=queries, header=headers)
def test_authorizer_with_a_valid_token_never_raises_anything_else(
    world: World, query: Any, header: Any
) -> None:
    # A real token, and everything else malformed: 401, a Deny, or an Allow whose
    # context $connect then answers 400.
    event = {**authorizer_event("fuzz="), "headers": header, "queryStringParameters": query}
    if isinstance(query, dict):
        event["queryStringParameters"] = {**query, "token": world.owner_token}
    refusal: str | None = None
    with writes_nothing():
        try:
            policy = invoke("authorize", event)
        except PermissionError as error:
            refusal = str(error)
    if refusal is not None:
        assert refusal == "Unauthorized"
        return
    effect = policy["policyDocument"]["Statement"][0]["Effect"]
    assert effect in ("Allow", "Deny")
    if effect == "Allow" and _query_is_malformed(query):
        assert policy["context"]["target"] == "none"


# -- the WebSocket routes ----------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_connect_refuses_malformed_events(world: World, data: st.DataObject) -> None:
    template = route_event("$connect", "fuzz=", query={"agent_id": str(world.agent_id)})
    owner_context = {
        "principalId": str(world.owner_id),
        "user_id": str(world.owner_id),
        "target": Target.CHANNEL_AGENT,
        "agent_id": str(world.agent_id),
        "topic_id": "",
        "session_id": "",
    }
    malformed_query = queries.filter(_query_is_malformed).map(
        lambda q: {
            **template,
            "queryStringParameters": q,
            "requestContext": {**template["requestContext"], "authorizer": owner_context},
        }
    )
    event = data.draw(st.one_of(_broken(template), _with_authorizer(template), malformed_query))
    fuzz_route("connect", event, {400, 401})


@FUZZ
@given(data=st.data())
def test_disconnect_ignores_malformed_events(world: World, data: st.DataObject) -> None:
    template = route_event("$disconnect", "fuzz=")
    event = data.draw(st.one_of(_broken(template), _with_authorizer(template)))
    # API Gateway drops $disconnect's answer; without a caller there is nothing to do.
    fuzz_route("disconnect", event, {200, 400})


@FUZZ
@given(data=st.data())
def test_heartbeat_ignores_malformed_events(world: World, data: st.DataObject) -> None:
    template = route_event("heartbeat", "fuzz=", body='{"action": "heartbeat"}')
    event = data.draw(st.one_of(_broken(template), _with_authorizer(template)))
    fuzz_route("heartbeat", event, {200, 400})


def _socket(world: World, management: ManagementApi) -> tuple[str, dict[str, Any]]:
    gateway = Gateway()
    connection_id = connect_agent(gateway, management.sink, world, "fuzz-agent=")
    return connection_id, gateway.contexts[connection_id]


replay_bodies = st.one_of(
    bodies,
    st.builds(
        lambda ids: json.dumps({"action": "replay_permissions", "request_ids": ids}),
        st.one_of(
            json_values.filter(lambda v: not isinstance(v, list)),
            st.lists(json_values, min_size=1, max_size=8).filter(
                lambda ids: any(not isinstance(i, str) for i in ids)
            ),
            huge_lists,
            st.lists(st.text(min_size=257, max_size=300), min_size=1, max_size=2),
        ),
    ),
).filter(lambda body: _replay_body_is_malformed(body))


def _replay_body_is_malformed(body: str | None) -> bool:
    from agent_channel.delivery.decision_store import DecisionError
    from agent_channel.delivery.decisions import parse_replay_body

    try:
        parse_replay_body(body, channel_settings().max_replay_ids)
    except DecisionError:
        return True
    return False


@FUZZ
@given(data=st.data())
def test_replay_answers_malformed_bodies_with_an_error_message(
    world: World, management: ManagementApi, data: st.DataObject
) -> None:
    connection_id, context = _socket(world, management)
    body = data.draw(replay_bodies)
    sent_before = len(management.sink.messages(connection_id))
    event = route_event("replay_permissions", connection_id, authorizer=context, body=body)
    fuzz_route("replay", event, {200})
    [message] = management.sink.json_messages(connection_id)[sent_before:]
    assert message["type"] == "error" and message["error"] and message["message"]


@FUZZ
@given(data=st.data())
def test_replay_refuses_malformed_events(world: World, data: st.DataObject) -> None:
    template = route_event("replay_permissions", "fuzz=", body='{"request_ids": ["r1"]}')
    event = data.draw(st.one_of(_broken(template), _with_authorizer(template)))
    fuzz_route("replay", event, {200, 400})


@FUZZ
@given(body=bodies)
def test_default_answers_any_body_with_an_error_message(
    world: World, management: ManagementApi, body: Any
) -> None:
    connection_id, context = _socket(world, management)
    sent_before = len(management.sink.messages(connection_id))
    fuzz_route(
        "default", route_event("$default", connection_id, authorizer=context, body=body), {200}
    )
    [message] = management.sink.json_messages(connection_id)[sent_before:]
    assert message["type"] == "error"
    assert message["error"] in ("invalid_json", "missing_action", "unknown_action")


@FUZZ
@given(data=st.data())
def test_default_refuses_malformed_events(world: World, data: st.DataObject) -> None:
    template = route_event("$default", "fuzz=", body="{}")
    event = data.draw(_broken(template))
    fuzz_route("default", event, {400})


# -- scheduled and direct invocations -------------------------------------------------------


@FUZZ
@given(event=json_values)
def test_the_sweeper_ignores_its_input(world: World, event: Any) -> None:
    # Its input carries nothing it uses: a junk event is a plain sweep (of an
    # account with nothing to settle, so nothing is written).
    with writes_nothing():
        answer = invoke("sweeper", event)
    assert isinstance(answer["outcomes"], dict)


def _routed_crashed_agent(world: World, clock: FakeClock) -> None:
    """The world's agent routed, its plugin crashed: a sweep would settle it."""
    query = {"agent_id": str(world.agent_id), "session_id": "s"}
    assert Gateway().connect(query, token=world.owner_token).status == 200
    clock.advance(channel_settings().stale_after_seconds + 1)


ALL_SHARDS = list(range(256))
MALFORMED_CONTINUATIONS = {
    "resume shard not listed": {
        "sweep_shards": [1, 2],
        "sweep_resume": {"shard": 3, "after": 3},
        "sweep_hop": 1,
    },
    "resume without a hop": {"sweep_shards": [0], "sweep_resume": {"shard": 0, "after": 256}},
    "resume at hop 0": {
        "sweep_shards": [0],
        "sweep_resume": {"shard": 0, "after": 256},
        "sweep_hop": 0,
    },
    "agent id as text": {
        "sweep_shards": [0],
        "sweep_resume": {"shard": 0, "after": "256"},
        "sweep_hop": 1,
    },
    "agent id a bool": {
        "sweep_shards": [1],
        "sweep_resume": {"shard": 1, "after": True},
        "sweep_hop": 1,
    },
    "agent id a float": {
        "sweep_shards": [0],
        "sweep_resume": {"shard": 0, "after": 256.0},
        "sweep_hop": 1,
    },
    "agent id zero": {
        "sweep_shards": [0],
        "sweep_resume": {"shard": 0, "after": 0},
        "sweep_hop": 1,
    },
    "agent id negative": {
        "sweep_shards": [0],
        "sweep_resume": {"shard": 0, "after": -256},
        "sweep_hop": 1,
    },
    "agent id of 19 digits": {
        "sweep_shards": [0],
        "sweep_resume": {"shard": 0, "after": 10**18},
        "sweep_hop": 1,
    },
    "resume shard as text": {
        "sweep_shards": [0],
        "sweep_resume": {"shard": "0", "after": 256},
        "sweep_hop": 1,
    },
    "resume missing its agent": {"sweep_shards": [0], "sweep_resume": {"shard": 0}, "sweep_hop": 1},
    "resume with more": {
        "sweep_shards": [0],
        "sweep_resume": {"shard": 0, "after": 256, "until": 9},
        "sweep_hop": 1,
    },
    "resume a list": {"sweep_shards": [0], "sweep_resume": [0, 256], "sweep_hop": 1},
    "hop past the bound": {"sweep_shards": ALL_SHARDS, "sweep_hop": 5},
    "hop negative": {"sweep_shards": ALL_SHARDS, "sweep_hop": -1},
    "hop a bool": {"sweep_shards": ALL_SHARDS, "sweep_hop": True},
    "hop as text": {"sweep_shards": ALL_SHARDS, "sweep_hop": "1"},
    "hop without shards": {"sweep_hop": 1},
    "resume without shards": {"sweep_resume": {"shard": 0, "after": 256}, "sweep_hop": 1},
    "an unknown sweep key": {"sweep_shards": ALL_SHARDS, "sweep_until": 3},
}


@pytest.mark.parametrize("event", MALFORMED_CONTINUATIONS.values(), ids=MALFORMED_CONTINUATIONS)
def test_a_malformed_continuation_event_changes_nothing(
    world: World, fake_clock: FakeClock, event: Any
) -> None:
    from agent_channel.presence import sweep_plan

    _routed_crashed_agent(world, fake_clock)
    with pytest.raises(sweep_plan.BadShards):
        sweep_plan.worker_order(event)
    with writes_nothing(), captured_log_lines() as lines:
        answer = invoke("sweeper", event)
    assert answer == {"outcomes": {}}
    assert [line["message"] for line in lines] == ["malformed sweep worker event ignored"]


@FUZZ
@given(
    shards=st.lists(st.integers(min_value=0, max_value=255), min_size=1, max_size=4),
    resume=st.one_of(
        json_values,
        st.fixed_dictionaries({"shard": json_values, "after": json_values}),
        st.fixed_dictionaries(
            {
                "shard": st.integers(min_value=-1, max_value=256),
                "after": st.integers(min_value=-1, max_value=10**19),
            }
        ),
    ),
    hop=st.one_of(json_values, st.integers(min_value=-1, max_value=6)),
)
def test_a_continuation_event_is_read_exactly_or_refused(
    shards: list[int], resume: Any, hop: Any
) -> None:
    # Whatever a continuation event holds, it is either a worker the sweep could
    # have written or BadShards (logged, nothing changed): never another error.
    from agent_channel.presence import sweep_plan

    event = {"sweep_shards": shards, "sweep_resume": resume, "sweep_hop": hop}
    try:
        worker = sweep_plan.worker_order(event)
    except sweep_plan.BadShards:
        return
    assert worker is not None and worker.resume is not None
    assert 1 <= worker.hop <= sweep_plan.MAX_SWEEP_HOPS
    assert worker.resume.shard in worker.shards
    assert 0 < worker.resume.after < schema.MAX_ID
    again = sweep_plan.worker_event(list(worker.shards), worker.resume, worker.hop)
    assert sweep_plan.worker_order(again) == worker


def _grace_input_is_malformed(event: Any) -> bool:
    from functions.cancel_offline.app import BadInput, parse

    try:
        parse(event)
    except BadInput:
        return True
    return False


grace_inputs = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "agent_id": json_values | weird_text,
            "subscription_token": json_values | weird_text,
            "session_id": json_values | weird_text,
        },
    ),
).filter(_grace_input_is_malformed)


@FUZZ
@given(event=grace_inputs)
def test_cancel_offline_answers_bad_input_with_an_error_result(world: World, event: Any) -> None:
    with writes_nothing():
        answer = invoke("cancel_offline", event)
    assert answer["ok"] is False and isinstance(answer["error"], str) and answer["error"]


@FUZZ
@given(agent_id=st.integers(min_value=1, max_value=10**40), token=weird_text)
def test_cancel_offline_survives_extreme_but_well_typed_input(
    world: World, agent_id: int, token: str
) -> None:
    # Well typed, so parsed; an agent that does not exist has nothing to cancel.
    if agent_id == world.agent_id:
        return
    event = {"agent_id": agent_id, "subscription_token": token[:64]}
    with writes_nothing():
        answer = invoke("cancel_offline", event)
    assert isinstance(answer, dict) and "ok" in answer, answer


OPS = [
    "dispatch",
    "decide_permission",
    "claim_reply",
    "broadcast",
    "create_user",
    "issue_token",
    "revoke_token",
    "create_agent",
    "create_topic",
    "create_task",
    "presence",
    "list_tasks",
    "unregister_agent",
]


def test_the_fuzzer_knows_every_backend_op() -> None:
    from agent_channel.backend import admin_commands, delivery_commands

    registered = [*admin_commands.REGISTRY.ops, *delivery_commands.REGISTRY.ops]
    assert sorted(OPS) == sorted(registered)


backend_commands = st.one_of(
    json_values,
    weird_text,
    deep_nesting,
    huge_strings.map(lambda body: body.replace('"action"', '"op"')),
    st.builds(
        lambda op, fields: {**fields, "op": op},
        st.sampled_from(OPS) | weird_text | json_values,
        st.dictionaries(
            st.sampled_from(
                [
                    "task_id",
                    "agent_id",
                    "topic_id",
                    "request_id",
                    "behavior",
                    "decided_by",
                    "reason",
                    "acting_user_id",
                    "payload",
                    "comment",
                    "owner",
                    "token",
                    "name",
                    "user_id",
                    "status",
                ]
            ),
            json_values | weird_text,
            max_size=6,
        ),
    ),
)


@FUZZ
@given(command=backend_commands)
def test_backend_answers_every_command_and_a_refusal_writes_nothing(
    world: World, management: ManagementApi, command: Any
) -> None:
    for folder in ("backend", "admin"):
        answer_one_command(folder, command)


def answer_one_command(folder: str, command: Any) -> None:
    before = snapshot()
    with counting_requests() as counter:
        answer = invoke(folder, command)
    assert isinstance(answer, dict) and isinstance(answer.get("ok"), bool), answer
    # What a non-Python backend receives must be JSON.
    json.dumps(answer)
    if answer["ok"]:
        # A well-formed command (create_user with any name, say) did its job; the
        # other function must not see its writes as a refusal's.
        return
    assert answer["error"] != "internal_error", (command, answer)
    assert isinstance(answer["message"], str)
    assert snapshot() == before, f"a refused command wrote: {command!r}"
    for service in ("scheduler", "events"):
        assert not [op for op in counter.of(service) if op not in READ_ONLY[service]]


# -- nesting past the bound, everywhere a client's bytes are parsed -----------------------

DEEP = ["[" * 100_000, '{"action": "heartbeat", "x": ' + "[" * 5_000 + "]" * 5_000 + "}"]


@pytest.mark.parametrize("body", DEEP, ids=["unclosed", "closed_inside_an_action"])
def test_deep_nesting_gets_an_error_frame_and_writes_nothing(
    world: World, management: ManagementApi, body: str
) -> None:
    from agent_channel_dev.local.gateway import DEFAULT, select_route
    from tests.support.gateway import ROUTE_FUNCTIONS

    connection_id, context = _socket(world, management)
    # The local gateway's route selection: $default, not a RecursionError.
    assert select_route(body, ROUTE_FUNCTIONS) == DEFAULT
    for route, name in (("$default", "default"), ("replay_permissions", "replay")):
        sent_before = len(management.sink.messages(connection_id))
        event = route_event(route, connection_id, authorizer=context, body=body)
        fuzz_route(name, event, {200})
        [message] = management.sink.json_messages(connection_id)[sent_before:]
        assert message["type"] == "error", (name, message)
        assert message["error"] in ("invalid_json", "invalid_request"), (name, message)
    with writes_nothing():
        answer = invoke("backend", body)
    assert answer["ok"] is False and answer["error"] == "invalid_command", answer
