"""The stepped presence load benchmark (bench/presence_steps.py), tiny: one short
step of a few agents and a busy agent of four sessions, with short timings, so
that the report's shape, the server-side accounting and the invariant checks are
exercised in seconds. The full run is ``make bench-load``. Its checker is tested
first on states made up here: it must see a violation when there is one."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from bench import presence_steps
from bench.moto_capacity import TABLE, Capacity, mix_capacity, project_table
from bench.presence_steps import ServerView, check_agent
from bench.stack_accounting import MotoCounts, transaction_size

TINY = presence_steps.Plan(
    rates=(2.0,),
    step_seconds=4.0,
    lifetime=(2.0, 4.0),
    heartbeat_seconds=1,
    stale_after_seconds=10,
    grace_seconds=3,
    busy_sessions=4,
    probe_seconds=0.3,
    provisioned_workers=1,
)


def lease(connection_id: str, session_id: str, live: bool = True) -> dict[str, object]:
    return {"connection_id": connection_id, "session_id": session_id, "live": live}


def test_the_checker_passes_a_consistent_state() -> None:
    presence = {"routing": True, "leases": [lease("c1", "s0"), lease("c2", "s1")]}
    server = ServerView({"c1": (7, "s0"), "c2": (7, "s1"), "c9": (8, "s0")})

    found = check_agent(7, presence, server, {"s0", "s1"}, heartbeating=True)

    assert (found.protocol, found.abandoned, found.unexplained) == ([], [], [])
    closed = check_agent(7, {"routing": False, "leases": []}, ServerView({}), set(), False)
    assert (closed.protocol, closed.abandoned, closed.unexplained) == ([], [], [])


@pytest.mark.parametrize(
    ("presence", "server", "client_open", "expected"),
    [
        pytest.param(
            {"routing": True, "leases": []},
            ServerView({}),
            set(),
            "agent 7: routed without a lease",
            id="routed-without-a-lease",
        ),
        pytest.param(
            {"routing": False, "leases": [lease("c1", "s0")]},
            ServerView({"c1": (7, "s0")}),
            {"s0"},
            "agent 7: live lease c1 but not routed",
            id="live-lease-not-routed",
        ),
        pytest.param(
            # c1 closed and its $disconnect ran (not a dropped connect): the lease
            # outlived its connection.
            {"routing": True, "leases": [lease("c1", "s0", live=False)]},
            ServerView({}),
            set(),
            "agent 7: lease s0 outlives its connection",
            id="lease-outlives-its-connection",
        ),
        pytest.param(
            {"routing": True, "leases": [lease("c1", "s0", live=False), lease("c2", "s1")]},
            ServerView({"c1": (7, "s0"), "c2": (7, "s1")}),
            {"s0", "s1"},
            "agent 7: session s0 open and heartbeating, no live lease",
            id="heartbeating-session-stale",
        ),
    ],
)
def test_the_checker_reports_a_protocol_violation(
    presence: dict[str, object], server: ServerView, client_open: set[str], expected: str
) -> None:
    found = check_agent(7, presence, server, client_open, heartbeating=True)

    assert found.protocol == [expected]


def test_an_abandoned_connect_is_a_disagreement_not_a_violation() -> None:
    # The client gave up on c1 at its timeout, then reused s0 for c2; the gateway
    # dropped c1 after $connect's 200 (no $disconnect), so c1's lease waits for
    # the sweeper. It also still holds c3, another connect of s1 the client left.
    presence = {"routing": True, "leases": [lease("c1", "s0"), lease("c2", "s0")]}
    server = ServerView({"c2": (7, "s0"), "c3": (7, "s1")}, dropped=frozenset({"c1"}))

    found = check_agent(7, presence, server, {"s0"}, heartbeating=True)

    assert found.protocol == [] and found.unexplained == []
    assert len(found.abandoned) == 2, found.abandoned
    # The same lease with no dropped connect behind it is a violation.
    strict = check_agent(7, presence, ServerView(server.open), {"s0"}, heartbeating=True)
    assert strict.protocol == ["agent 7: lease s0 outlives its connection"]


def test_a_lease_a_failed_connect_or_disconnect_left_is_the_sweepers() -> None:
    presence = {"routing": True, "leases": [lease("c1", "s0", live=False)]}
    server = ServerView({}, disconnect_failed=frozenset({"c1"}))

    found = check_agent(7, presence, server, set(), heartbeating=False)

    assert found.protocol == [] and found.missed == ["agent 7: lease s0 of a failed $disconnect"]
    refused = check_agent(
        7, presence, ServerView({}, connect_failed=frozenset({"c1"})), set(), heartbeating=False
    )
    assert refused.protocol == [] and refused.missed == ["agent 7: lease s0 of a failed $connect"]


def test_a_session_the_gateway_lost_is_unexplained() -> None:
    found = check_agent(7, {"routing": False, "leases": []}, ServerView({}), {"s0"}, False)

    assert found.unexplained == ["agent 7: client holds s0, the gateway does not"]


@pytest.mark.e2e
@pytest.mark.slow
def test_the_stack_reports_a_connect_its_client_abandoned() -> None:
    """A client that gives up before $connect answers: the server completes the
    connect, then ends it with a $disconnect as API Gateway does for an accepted
    connection, so no lease is left behind and nothing is a violation."""
    import websockets

    stack = presence_steps.start_stack(TINY)
    try:
        [agent] = presence_steps.create_agents(stack, 1, seed=1)
        query = f"agent_id={agent.agent_id}&session_id=s0&token={stack.token}"

        async def abandon() -> None:
            # Far shorter than the authorizer plus $connect: the client gives up.
            with pytest.raises(TimeoutError):
                await websockets.connect(f"{stack.ws_url}?{query}", open_timeout=0.01)

        asyncio.run(abandon())
        found = presence_steps.check_state(stack, [agent], heartbeating=True, label="held")
        presence = stack.command({"op": "presence", "agent_id": agent.agent_id})
    finally:
        stack.stop()

    assert found.idle and "not idle" not in found.idle[0], found.idle
    assert found.protocol == [] and found.unexplained == [], found
    assert presence["leases"] == [] and presence["routing"] is False, presence


def test_a_transaction_is_counted_and_charged_by_its_size() -> None:
    body = json.dumps({"TransactItems": [{"Put": {}}, {"Delete": {}}]}).encode()
    environ = {
        "HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=key/20261126/us-east-1/dynamodb/x",
        "HTTP_X_AMZ_TARGET": "DynamoDB_20120810.TransactWriteItems",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    assert MotoCounts().describe(environ) == ("key", "dynamodb:TransactWriteItems (2 items)")
    assert environ["wsgi.input"].read() == body  # put back for moto to read

    probe = [
        Capacity("UpdateItem", 300.0),
        Capacity("TransactWriteItems (1 item)", 80.0),
        Capacity("TransactWriteItems (2 items)", 40.0),
        Capacity("TransactWriteItems (4 items)", 20.0),
    ]
    assert mix_capacity(probe, {"TransactWriteItems (2 items)": 5}) == pytest.approx(40.0)
    both = mix_capacity(probe, {"UpdateItem": 1, "TransactWriteItems (1 item)": 1})
    assert both == pytest.approx(2 / (1 / 300 + 1 / 80))
    # Sizes the probe did not send lie on the line through those it did.
    assert 20.0 < mix_capacity(probe, {"TransactWriteItems (3 items)": 1}) < 40.0
    assert mix_capacity(probe, {"TransactWriteItems (8 items)": 1}) < 20.0
    # Another operation the probe does not send is charged as an UpdateItem.
    assert mix_capacity(probe, {"GetItem": 3}) == pytest.approx(300.0)


def test_the_probe_writes_a_table_shaped_as_the_projects() -> None:
    """A write to the project's table costs moto a stream record and an index's
    keys: the probe measures the same table, under a name of its own."""
    table = project_table()
    assert table["TableName"] == TABLE
    assert table["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert [index["IndexName"] for index in table["GlobalSecondaryIndexes"]] == ["gsi1"]
    assert {key["AttributeName"] for key in table["KeySchema"]} == {"pk", "sk"}


def test_moto_busy_time_is_shared_by_each_operations_senders() -> None:
    step = presence_steps.StepResult(
        presence_steps.StepRecord("1/s", 1.0, seconds=10.0),
        requests={
            "SweeperFunction|dynamodb:Query": 3,
            "ConnectFunction|dynamodb:Query": 1,
            "ConnectFunction|dynamodb:TransactWriteItems (6 items)": 2,
            "stack|dynamodb:GetRecords": 5,
        },
        invocations={},
        durations={},
        errors={},
        moto_busy=1.5,
        busy_by_operation={
            "dynamodb:Query": 0.4,
            "dynamodb:TransactWriteItems (6 items)": 1.0,
            "dynamodb:GetRecords": 0.1,
        },
        moto_cpu=1.2,
        stack_cpu=2.0,
        moto_process_cpu=1.3,
        worker_cpu=0.5,
    )

    assert step.background_busy == pytest.approx(0.3 + 0.1)
    assert step.mix == {"Query": 1, "TransactWriteItems (6 items)": 2}


@pytest.mark.e2e
@pytest.mark.slow
def test_a_tiny_step_reports_every_figure_and_keeps_the_invariants() -> None:
    result = presence_steps.run(TINY)

    for found in (result.held, result.closed):
        assert found.idle and not any("not idle" in note for note in found.idle), found.idle
        assert not found.protocol, found.protocol
        assert not found.unexplained, found.unexplained
    [step] = result.steps
    assert result.busy is not None
    for measured in (step, result.busy):
        record = measured.record
        assert record.connected > 0 and record.connect
        assert record.heartbeats_sent > 0
        # Counted server-side, where moto serves the workers' requests: each route
        # is seen with its own requests (none of them is visible to this process).
        assert measured.ok(presence_steps.HEARTBEAT_FUNCTION) > 0
        # The authorizer's read and $connect's transaction, plus the reap on
        # subscribe's Query when the agent was already routed (a second session).
        per_connect = measured.per_operation(
            presence_steps.CONNECT_FUNCTIONS, measured.ok("ConnectFunction")
        )
        assert per_connect is not None and 2.0 <= per_connect <= 3.0, per_connect
        assert measured.per_operation(
            (presence_steps.HEARTBEAT_FUNCTION,), measured.calls(presence_steps.HEARTBEAT_FUNCTION)
        ) == pytest.approx(1.0, abs=0.5)
        # Transactions are counted by their size: moto's cost grows with it.
        sizes = [op for op in measured.mix if op.startswith("TransactWriteItems (")]
        assert sizes and all(transaction_size(op) for op in sizes), sizes
        assert measured.moto_busy > 0
    assert {c.kind for c in result.probes[0]} >= {"UpdateItem", "TransactWriteItems", "Query"}
    low, high = result.capacity_range(step)
    assert 0 < low <= high
    # Each step's capacity is probed on a copy of the table as the step left it.
    assert step.table and result.busy.table
    assert {c.kind for c in step.probe} == {c.kind for c in result.probes[0]}
    start, end = result.capacity_bounds(step)
    assert start > 0 and end > 0
    low_share, high_share = result.fraction(step)
    assert 0 < low_share <= high_share

    report = presence_steps.markdown(result)
    assert report.startswith(presence_steps.HEADER)
    assert report.count("\n| 2/s |") == 1 and "| busy agent" in report
    assert "Invariants while held: held: idle after" in report
    assert "protocol violations none" in report
    goals = presence_steps.goals(result)
    assert "Client timeouts below the knee" in goals
    assert "Invariant violations (protocol, checked on the idle stack" in goals
