"""The local stack's moto runs in a process of its own: it serves, answers the
stack's commands, ignores the terminal's Ctrl-C, ends with its stack, and records
(and replays) only the requests that change its state."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from agent_channel_dev.local.moto_process import MotoProcess, MotoProcessError
from agent_channel_dev.local.persistence import LocalState, changes_state


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoProcess]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    process = MotoProcess()
    process.start()
    try:
        yield process
    finally:
        process.stop()


def client(service: str, moto: MotoProcess) -> Any:
    return boto3.client(service, endpoint_url=moto.url, region_name="us-east-1")


def table_with_stream(dynamodb: Any, name: str) -> str:
    dynamodb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )
    arn: str = dynamodb.describe_table(TableName=name)["Table"]["LatestStreamArn"]
    return arn


def read_stream(moto: MotoProcess, arn: str) -> list[dict[str, Any]]:
    streams = client("dynamodbstreams", moto)
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]
    iterator = streams.get_shard_iterator(
        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records: list[dict[str, Any]] = streams.get_records(ShardIterator=iterator)["Records"]
    return records


def test_moto_serves_in_its_own_process_answers_commands_and_ends_with_its_stack(
    moto: MotoProcess,
) -> None:
    dynamodb = client("dynamodb", moto)
    arn = table_with_stream(dynamodb, "t")
    for n in range(3):
        dynamodb.put_item(TableName="t", Item={"pk": {"S": str(n)}})
    records = read_stream(moto, arn)
    assert len(records) == 3
    child = moto._process
    assert child is not None and child.pid != os.getpid()

    assert moto.trim_stream("t", records[1]["dynamodb"]["SequenceNumber"]) == 2
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in read_stream(moto, arn)] == ["2"]
    assert moto.upkeep() == 0
    with pytest.raises(MotoProcessError, match="no command 'forget'"):
        moto.call("forget")
    with pytest.raises(MotoProcessError, match="TypeError"):
        moto.call("trim_stream")  # a failing command is answered, not fatal

    # The terminal's Ctrl-C reaches every process of the group: moto serves on
    # until its stack, which still needs it to stop, closes the pipe.
    os.kill(child.pid, signal.SIGINT)
    assert dynamodb.get_item(TableName="t", Key={"pk": {"S": "2"}})["Item"]

    # The stack gone (kill -9 closes its end of the pipe): moto's process ends.
    assert moto._conn is not None
    moto._conn.close()
    child.join(10)
    assert child.exitcode == 0
    moto._conn = None
    with pytest.raises(MotoProcessError, match="not running"):
        moto.upkeep()


def test_a_hook_that_cannot_be_found_fails_the_start() -> None:
    process = MotoProcess(hooks=("json:no_such_hook",))
    with pytest.raises(MotoProcessError, match="no hook 'json:no_such_hook'"):
        process.start()
    assert process._process is None


def test_only_requests_that_change_state_are_recorded_and_replayed(
    moto: MotoProcess, tmp_path: Path
) -> None:
    state = LocalState(tmp_path)
    state.record(moto.record)
    dynamodb = client("dynamodb", moto)
    arn = table_with_stream(dynamodb, "t")
    dynamodb.put_item(TableName="t", Item={"pk": {"S": "kept"}})
    dynamodb.get_item(TableName="t", Key={"pk": {"S": "kept"}})
    dynamodb.query(
        TableName="t",
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": "kept"}},
    )
    dynamodb.scan(TableName="t")
    read_stream(moto, arn)
    client("scheduler", moto).list_schedules()
    client("sqs", moto).create_queue(QueueName="q")

    recorded = [json.loads(line) for line in state.requests.read_text().splitlines()]
    targets = [entry["headers"].get("X-Amz-Target") for entry in recorded]
    assert targets == [
        "DynamoDB_20120810.CreateTable",
        "DynamoDB_20120810.PutItem",
        "AmazonSQS.CreateQueue",
    ]

    # A recording made before reads were left out: they are dropped, not replayed
    # (a stream read names an iterator the fresh server never issued).
    stale_read = {
        "headers": {"X-Amz-Target": "DynamoDBStreams_20120810.GetRecords"},
        "method": "POST",
        "url": f"{moto.url}/",
        "body": json.dumps({"ShardIterator": "issued-by-a-server-long-gone"}),
        "body_encoded": False,
    }
    with state.requests.open("a", encoding="utf-8") as file:
        file.write(json.dumps(stale_read) + "\n")
        # And a line cut short: the stack killed while it wrote it (it had not
        # served that request yet).
        file.write(json.dumps(stale_read)[:40])
    fresh = MotoProcess()
    fresh.start()
    try:
        assert state.replay(fresh.url) == 3
        replayed = client("dynamodb", fresh).get_item(TableName="t", Key={"pk": {"S": "kept"}})
        assert replayed["Item"] == {"pk": {"S": "kept"}}
    finally:
        fresh.stop()
    assert len(state.requests.read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("method", "target", "changes"),
    [
        ("POST", "DynamoDB_20120810.TransactWriteItems", True),
        ("POST", "DynamoDB_20120810.BatchWriteItem", True),
        ("POST", "DynamoDB_20120810.BatchGetItem", False),
        ("POST", "DynamoDB_20120810.Query", False),
        ("POST", "DynamoDBStreams_20120810.GetShardIterator", False),
        ("POST", "AmazonSQS.ReceiveMessage", True),  # it hides the message it returns
        ("POST", "AWSEvents.PutEvents", True),
        ("GET", None, False),  # Scheduler's GetSchedule and ListSchedules
        ("POST", None, True),  # CreateSchedule
        ("DELETE", None, True),
    ],
)
def test_what_counts_as_a_change_of_state(method: str, target: str | None, changes: bool) -> None:
    assert changes_state(method, target) is changes
