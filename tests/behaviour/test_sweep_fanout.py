"""The sweep fans out: the scheduled invocation starts one asynchronous worker per
shard group (moto's Lambda, without running code), each worker settles only its
shards, and together they settle every crashed agent exactly once. A worker short
of time hands the rest to a continuation, one more asynchronous invocation."""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.core import config as moto_config

from agent_channel.config import CHANNEL_AGENT_MODEL, settings
from agent_channel.identity import accounts
from agent_channel.lambda_kit import wiring
from agent_channel.presence import sweep_plan
from agent_channel.storage import schema
from agent_channel_dev.instruments.botocore_hooks import ApiCall, service_of, wrapping_api_calls
from agent_channel_dev.local.apigw_events import scheduled_event
from tests.support.clock import FakeClock
from tests.support.faults import failing_requests
from tests.support.fixtures import World
from tests.support.gateway import Gateway, function
from tests.support.logs import captured_log_lines

WORKERS = 8
AGENTS = 5


class Context:
    def __init__(self, arn: str, remaining_ms: int = 60_000) -> None:
        self.invoked_function_arn = arn
        self.function_name = arn.rsplit(":", 1)[-1]
        self.aws_request_id = "sweep"
        self.memory_limit_in_mb = 1024
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


SHORT_OF_TIME = int(sweep_plan.SWEEP_MARGIN_SECONDS * 1000) - 1
"""An invocation's remaining time already inside the margin: it settles one agent
(a chain always moves on) and hands the rest on."""


@pytest.fixture
def sweeper_arn(world: World, monkeypatch: pytest.MonkeyPatch) -> str:
    # moto answers Invoke without running any code: the test runs the workers.
    monkeypatch.setitem(moto_config.default_user_config["lambda"], "use_docker", False)
    monkeypatch.setenv("SWEEP_WORKERS", str(WORKERS))
    settings.cache_clear()
    wiring.lambda_client.cache_clear()
    role = boto3.client("iam").create_role(
        RoleName="sweeper", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"})
    )["Role"]["Arn"]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("app.py", "def handler(event, context):\n    return None\n")
    created = boto3.client("lambda").create_function(
        FunctionName="stack-sweeper",
        Runtime="python3.12",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": archive.getvalue()},
    )
    yield created["FunctionArn"]
    settings.cache_clear()
    wiring.lambda_client.cache_clear()


@pytest.fixture
def invokes() -> Iterator[list[dict[str, Any]]]:
    started: list[dict[str, Any]] = []

    def record(client: Any, operation: str, params: dict[str, Any], call: ApiCall) -> Any:
        if service_of(client) == "lambda" and operation == "Invoke":
            started.append(params)
        return call(client, operation, params)

    with wrapping_api_calls(record):
        yield started


def crashed_agents(world: World, clock: FakeClock) -> list[int]:
    gateway = Gateway()
    agents = []
    for index in range(AGENTS):
        agent_id = accounts.create_agent(f"a{index}", world.owner_id, CHANNEL_AGENT_MODEL).user_id
        query = {"agent_id": str(agent_id), "session_id": "s"}
        assert gateway.connect(query, token=world.owner_token).status == 200
        agents.append(agent_id)
    clock.advance(settings().stale_after_seconds + 1)
    return agents


def test_shard_groups_deal_every_shard_exactly_once() -> None:
    for workers in (1, 2, 16, 256, 1000):
        groups = sweep_plan.shard_groups(workers)
        assert len(groups) == min(workers, schema.ROUTED_SHARDS)
        dealt = Counter(shard for group in groups for shard in group)
        assert set(dealt) == set(range(schema.ROUTED_SHARDS))
        assert set(dealt.values()) == {1}
        assert max(map(len, groups)) - min(map(len, groups)) <= 1


def test_the_scheduled_sweep_fans_out_and_the_workers_settle_each_agent_once(
    world: World, fake_clock: FakeClock, sweeper_arn: str, invokes: list[dict[str, Any]]
) -> None:
    agents = crashed_agents(world, fake_clock)
    sweeper = function("sweeper")
    answer = sweeper.handler(scheduled_event(), Context(sweeper_arn))
    assert answer == {"outcomes": {}, "workers": WORKERS}
    assert all(wiring.presence_store().read(a).routing_on for a in agents), "nothing swept yet"
    assert len(invokes) == WORKERS
    assert {params["InvocationType"] for params in invokes} == {"Event"}
    assert {params["FunctionName"] for params in invokes} == {sweeper_arn}
    outcomes: Counter[str] = Counter()
    for params in invokes:
        event = json.loads(params["Payload"])
        outcomes.update(sweeper.handler(event, Context(sweeper_arn))["outcomes"])
        assert len(invokes) == WORKERS, "a worker never fans out again"
    assert outcomes == {"last_out": AGENTS}
    assert not any(wiring.presence_store().read(a).routing_on for a in agents)


def test_a_worker_sweeps_only_its_shards(
    world: World, fake_clock: FakeClock, sweeper_arn: str
) -> None:
    agents = crashed_agents(world, fake_clock)
    mine = agents[0] % schema.ROUTED_SHARDS
    event = sweep_plan.worker_event([mine])
    outcomes = function("sweeper").handler(event, Context(sweeper_arn))["outcomes"]
    in_shard = [a for a in agents if a % schema.ROUTED_SHARDS == mine]
    assert outcomes == {"last_out": len(in_shard)}
    for agent_id in agents:
        routed = wiring.presence_store().read(agent_id).routing_on
        assert routed == (agent_id not in in_shard)


@pytest.mark.parametrize(
    "shards", [[], [-1], [schema.ROUTED_SHARDS], ["1"], [True], "0", None, [0.0]]
)
def test_a_malformed_worker_event_changes_nothing(
    world: World, fake_clock: FakeClock, sweeper_arn: str, shards: Any
) -> None:
    agents = crashed_agents(world, fake_clock)
    answer = function("sweeper").handler({"sweep_shards": shards}, Context(sweeper_arn))
    assert answer == {"outcomes": {}}
    assert all(wiring.presence_store().read(a).routing_on for a in agents)


def test_shards_whose_worker_cannot_start_are_swept_in_place(
    world: World, fake_clock: FakeClock, sweeper_arn: str
) -> None:
    agents = crashed_agents(world, fake_clock)
    with failing_requests("lambda", {"Invoke"}, "TooManyRequestsException", times=3) as failed:
        answer = function("sweeper").handler(scheduled_event(), Context(sweeper_arn))
    assert failed == ["Invoke"] * 3
    assert answer["outcomes"] == {"last_out": sum(1 for a in agents if a % WORKERS < 3)}
    in_place = [a for a in agents if not wiring.presence_store().read(a).routing_on]
    assert sorted(in_place) == sorted(a for a in agents if a % WORKERS < 3)


def test_a_worker_out_of_time_hands_the_rest_to_a_continuation(
    world: World,
    fake_clock: FakeClock,
    sweeper_arn: str,
    invokes: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two index shards, so the worker stops inside one of them.
    monkeypatch.setattr(schema, "ROUTED_SHARDS", 2)
    agents = crashed_agents(world, fake_clock)
    first = min((a for a in agents if a % 2 == 0), key=schema.agent_sort)
    sweeper = function("sweeper")
    event = sweep_plan.worker_event([0, 1])
    capsys.readouterr()
    answer = sweeper.handler(event, Context(sweeper_arn, SHORT_OF_TIME))
    assert answer == {"outcomes": {"last_out": 1}, "continued": True}
    assert not wiring.presence_store().read(first).routing_on
    [params] = invokes
    assert params["InvocationType"] == "Event"
    assert params["FunctionName"] == sweeper_arn
    continuation = sweep_plan.worker_order(json.loads(params["Payload"]))
    assert continuation == sweep_plan.Worker((0, 1), sweep_plan.Resume(0, first), hop=1)
    assert _metric(capsys, "SweepContinuations") == 1
    # The continuation, with time to spare, settles exactly the rest.
    invokes.clear()
    answer = sweeper.handler(json.loads(params["Payload"]), Context(sweeper_arn))
    assert answer == {"outcomes": {"last_out": AGENTS - 1}}
    assert invokes == []
    assert not any(wiring.presence_store().read(a).routing_on for a in agents)


def test_a_chain_of_continuations_settles_each_agent_once(
    world: World, fake_clock: FakeClock, sweeper_arn: str, invokes: list[dict[str, Any]]
) -> None:
    agents = crashed_agents(world, fake_clock)
    assert AGENTS <= sweep_plan.MAX_SWEEP_HOPS + 1, "one agent a hop fits in one chain"
    sweeper = function("sweeper")
    event: dict[str, Any] = sweep_plan.worker_event(sweep_plan.every_shard())
    outcomes: Counter[str] = Counter()
    hops = 0
    while True:
        invokes.clear()
        answer = sweeper.handler(event, Context(sweeper_arn, SHORT_OF_TIME))
        outcomes.update(answer["outcomes"])
        hops += 1
        if not answer.get("continued"):
            break
        event = json.loads(invokes[-1]["Payload"])
        assert event["sweep_hop"] == hops
    assert outcomes == {"last_out": AGENTS}, "each agent settled once"
    assert hops == AGENTS
    assert not any(wiring.presence_store().read(a).routing_on for a in agents)


def test_a_chain_stops_at_its_hop_bound_and_the_next_sweep_covers_the_rest(
    world: World,
    fake_clock: FakeClock,
    sweeper_arn: str,
    invokes: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    agents = crashed_agents(world, fake_clock)
    sweeper = function("sweeper")
    last_hop = sweep_plan.worker_event(sweep_plan.every_shard(), hop=sweep_plan.MAX_SWEEP_HOPS)
    capsys.readouterr()
    with captured_log_lines() as lines:
        answer = sweeper.handler(last_hop, Context(sweeper_arn, SHORT_OF_TIME))
    assert answer == {"outcomes": {"last_out": 1}, "continued": False}
    assert invokes == [], "no hop past the bound"
    assert _metric(capsys, "SweepContinuationFailures") == 1
    assert any("hop bound" in line.get("message", "") for line in lines)
    routed = [a for a in agents if wiring.presence_store().read(a).routing_on]
    assert len(routed) == AGENTS - 1
    answer = sweeper.handler(
        sweep_plan.worker_event(sweep_plan.every_shard()), Context(sweeper_arn)
    )
    assert answer == {"outcomes": {"last_out": AGENTS - 1}}


def test_a_continuation_that_cannot_start_is_left_to_the_next_sweep(
    world: World, fake_clock: FakeClock, sweeper_arn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    agents = crashed_agents(world, fake_clock)
    sweeper = function("sweeper")
    event = sweep_plan.worker_event(sweep_plan.every_shard())
    capsys.readouterr()
    with (
        failing_requests("lambda", {"Invoke"}, "TooManyRequestsException") as failed,
        captured_log_lines() as lines,
    ):
        answer = sweeper.handler(event, Context(sweeper_arn, SHORT_OF_TIME))
    assert failed == ["Invoke"]
    assert answer == {"outcomes": {"last_out": 1}, "continued": False}
    assert _metric(capsys, "SweepContinuationFailures") == 1
    assert any(line.get("message") == "could not start a sweep continuation" for line in lines)
    answer = sweeper.handler(event, Context(sweeper_arn))
    assert answer == {"outcomes": {"last_out": AGENTS - 1}}
    assert not any(wiring.presence_store().read(a).routing_on for a in agents)


def test_under_an_emulator_the_sweep_ignores_the_clock_and_sweeps_in_place(
    world: World,
    fake_clock: FakeClock,
    sweeper_arn: str,
    invokes: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agents = crashed_agents(world, fake_clock)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    answer = function("sweeper").handler(scheduled_event(), Context(sweeper_arn, SHORT_OF_TIME))
    assert answer == {"outcomes": {"last_out": AGENTS}}
    assert invokes == []
    assert not any(wiring.presence_store().read(a).routing_on for a in agents)


def test_the_largest_continuation_event_fits_an_asynchronous_invoke() -> None:
    # Every shard, the longest agent id, the last hop: far below the 256 KB an
    # asynchronous invocation's payload may hold, and read back as written.
    after = schema.MAX_ID - 1
    resume = sweep_plan.Resume(after % schema.ROUTED_SHARDS, after)
    event = sweep_plan.worker_event(sweep_plan.every_shard(), resume, sweep_plan.MAX_SWEEP_HOPS)
    payload = json.dumps(event).encode()
    assert len(payload) < 256 * 1024
    worker = sweep_plan.worker_order(json.loads(payload))
    assert worker == sweep_plan.Worker(
        tuple(sweep_plan.every_shard()), resume, sweep_plan.MAX_SWEEP_HOPS
    )


def _metric(capsys: pytest.CaptureFixture[str], name: str) -> float:
    """The value of a metric in the EMF lines printed since the last look."""
    total = 0.0
    for line in capsys.readouterr().out.splitlines():
        if '"_aws"' in line:
            value = json.loads(line).get(name, 0.0)
            total += sum(value) if isinstance(value, list) else float(value)
    return total
