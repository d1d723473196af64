"""The parts of the local stack that carry API Gateway's and CloudFormation's
rules: frame counting, a template read as deployed, IAM evaluation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent_channel_dev.local import frames, sam_app, sigv4
from agent_channel_dev.local.stack_template import TemplateError

ROOT = Path(__file__).resolve().parents[2]


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    def feed_data(self, data: bytes) -> Any:
        self.data += data
        return False, b""

    def feed_eof(self) -> Any:
        return None


def client_frame(payload: bytes, opcode: int, *, fin: bool = True) -> bytes:
    """A masked client frame (mask of zeros: the payload reads as is)."""
    header = frames.frame(payload, opcode, fin=fin)
    first, second, rest = header[0], header[1], header[2 : len(header) - len(payload)]
    return bytes([first, second | 0x80]) + rest + b"\0\0\0\0" + payload


def guard() -> tuple[frames.FrameGuard, Collect, list[tuple[int, str]]]:
    violations: list[tuple[int, str]] = []
    inner = Collect()
    return frames.FrameGuard(inner, lambda c, r: violations.append((c, r))), inner, violations


def feed_bytewise(g: frames.FrameGuard, data: bytes) -> None:
    for index in range(len(data)):
        g.feed_data(data[index : index + 1])


def test_frames_within_the_limits_pass_untouched_even_split_byte_by_byte() -> None:
    g, inner, violations = guard()
    stream = (
        client_frame(b"a" * frames.FRAME_LIMIT, frames.OP_TEXT, fin=False)
        + client_frame(b"b" * 100, frames.OP_CONTINUATION)
        + client_frame(b"", frames.OP_CLOSE)
    )
    feed_bytewise(g, stream)
    assert violations == []
    assert bytes(inner.data) == stream
    assert g.closed_without_status


def test_an_oversized_frame_is_refused_by_its_header_and_never_forwarded() -> None:
    g, inner, violations = guard()
    big = client_frame(b"x" * (frames.FRAME_LIMIT + 1), frames.OP_TEXT)
    close = client_frame(b"\x03\xe8", frames.OP_CLOSE)
    g.feed_data(big[:20])
    assert violations == [(1009, "Frame too big")]
    g.feed_data(big[20:] + client_frame(b"later", frames.OP_TEXT) + close)
    assert bytes(inner.data) == close  # only the closing handshake goes on
    assert violations == [(1009, "Frame too big")]


def test_a_message_over_128_kb_in_small_frames_and_a_binary_frame_are_refused() -> None:
    g, _, violations = guard()
    chunk = b"x" * frames.FRAME_LIMIT
    for index in range(5):
        opcode = frames.OP_TEXT if index == 0 else frames.OP_CONTINUATION
        g.feed_data(client_frame(chunk, opcode, fin=index == 4))
    assert violations == [(1009, "Message too big")]
    g, _, violations = guard()
    g.feed_data(client_frame(b"\x00\x01", frames.OP_BINARY))
    assert violations == [(1003, "Binary frames are not supported")]


def test_fragments_split_a_post_into_frames_of_at_most_32_kb() -> None:
    data = b"y" * (2 * frames.FRAME_LIMIT + 5)
    written = frames.fragments(data)
    first = frames.frame(data[: frames.FRAME_LIMIT], frames.OP_TEXT, fin=False)
    assert written.startswith(first)
    assert written.endswith(frames.frame(b"y" * 5, frames.OP_CONTINUATION, fin=True))
    assert frames.fragments(b"short") == frames.frame(b"short", frames.OP_TEXT, fin=True)


def test_the_project_template_reads_as_deployed() -> None:
    app = sam_app.load(ROOT / "template.yaml", stack_name="s", stage="local")
    assert app.api.stage == "local"
    assert app.api.routes["replay_permissions"] == "ReplayFunction"
    assert app.api.authorizer == sam_app.Authorizer("AuthorizeFunction", ())
    replay, connect = app.functions["ReplayFunction"], app.functions["ConnectFunction"]
    assert replay.environment["CALLBACK_URL"].endswith(f"{app.api.domain_name}/local")
    assert replay.environment["MAX_REPLAY_IDS"] == "100"
    assert "MAX_REPLAY_IDS" not in connect.environment  # exactly its own variables
    assert connect.environment["TABLE_NAME"] == "s-Table"  # Globals merged
    assert app.functions["SweeperFunction"].timeout_seconds == 60
    assert app.functions["SweeperFunction"].rate_seconds == 60
    assert app.functions["BackendFunction"].memory_mb == 1024  # !Ref BackendMemorySize
    resized = sam_app.load(
        ROOT / "template.yaml", stack_name="s", parameters={"BackendMemorySize": "512"}
    )
    assert resized.functions["BackendFunction"].memory_mb == 512
    assert connect.timeout_seconds == 15 and connect.memory_mb == 256
    assert connect.layer_dirs == ((ROOT / "lib").resolve(),)


def test_another_apps_template_reads_as_deployed() -> None:
    app = sam_app.load(ROOT / "tests/apps/chat/template.yaml", stack_name="chat")
    assert app.api.stage == "Prod"
    assert app.api.authorizer is None
    assert set(app.api.routes) == {"$connect", "$disconnect", "sendmessage"}
    (table,) = app.tables
    assert table.create_kwargs["TableName"] == "simplechat_connections"
    assert app.functions["SendMessageFunction"].timeout_seconds == 3  # Lambda's default


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "template.yaml"
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """
Parameters:
  Name: {Type: String, Default: n}
Globals:
  Function:
    Runtime: RUNTIME
    Handler: app.handler
    Environment: {Variables: {A: "1"}}
Resources:
  Api: {Type: AWS::ApiGatewayV2::Api, Properties: {ProtocolType: WEBSOCKET}}
  F:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: f/
      Environment: {Variables: {B: !Ref Name}}
"""


def test_globals_merge_and_parameters_resolve(tmp_path: Path) -> None:
    app = sam_app.load(
        write(tmp_path, MINIMAL.replace("RUNTIME", "python3.12")),
        stack_name="x",
        parameters={"Name": "given"},
    )
    assert app.functions["F"].environment == {"A": "1", "B": "given"}
    assert app.api.route_selection_expression == "$request.body.action"


def test_what_cannot_be_served_is_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="only Python runtimes"):
        sam_app.load(write(tmp_path, MINIMAL.replace("RUNTIME", "nodejs20.x")), stack_name="x")
    with pytest.raises(TemplateError, match="unknown template parameters: Nope"):
        sam_app.load(
            write(tmp_path, MINIMAL.replace("RUNTIME", "python3.12")),
            stack_name="x",
            parameters={"Nope": "1"},
        )
    no_api = MINIMAL.replace("RUNTIME", "python3.12").replace("WEBSOCKET", "HTTP")
    with pytest.raises(TemplateError, match="one WebSocket API"):
        sam_app.load(write(tmp_path, no_api), stack_name="x")


def test_iam_evaluation_allows_by_pattern_and_an_explicit_deny_wins() -> None:
    resource = "arn:aws:execute-api:us-east-1:000000000000:abc/prod/POST/@connections/c1="
    allow = {
        "Effect": "Allow",
        "Action": "execute-api:ManageConnections",
        "Resource": "arn:aws:execute-api:us-east-1:000000000000:abc/prod/POST/@connections/*",
    }
    deny = {"Effect": "Deny", "Action": ["execute-api:*"], "Resource": ["*"]}
    action = "execute-api:ManageConnections"
    assert sigv4.allows((allow,), action, resource)
    assert not sigv4.allows((allow,), action, resource.replace("POST", "DELETE"))
    assert not sigv4.allows((allow, deny), action, resource)
    assert not sigv4.allows((), action, resource)


@pytest.mark.parametrize("app_name", ["chat", "probe"])
def test_the_test_apps_are_valid_sam_templates(app_name: str) -> None:
    # The apps the local stack is proven on must be deployable as they are.
    from cfnlint.api import ManualArgs, lint

    template = ROOT / "tests" / "apps" / app_name / "template.yaml"
    matches = lint(template.read_text(encoding="utf-8"), config=ManualArgs(regions=["us-east-1"]))
    assert [str(match) for match in matches] == []


@dataclass(frozen=True)
class ServedMoto:
    server: Any
    dynamodb: Any
    streams: Any

    def table_with_stream(self, name: str) -> str:
        """A table keyed on ``pk`` with a NEW_AND_OLD_IMAGES stream; its stream ARN."""
        self.dynamodb.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        arn: str = self.dynamodb.describe_table(TableName=name)["Table"]["LatestStreamArn"]
        return arn

    def iterator(self, arn: str, kind: str, after: str | None = None) -> str:
        shard = self.streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]
        extra = {"SequenceNumber": after} if after else {}
        cut = self.streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType=kind, **extra
        )
        return str(cut["ShardIterator"])


def keys_of(records: list[dict[str, Any]]) -> list[str]:
    return [record["dynamodb"]["Keys"]["pk"]["S"] for record in records]


@pytest.fixture
def served_moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServedMoto]:
    """The local stack's moto server on a free port, with clients for it."""
    import boto3

    from agent_channel_dev.local.moto_server import MotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    server = MotoServer()
    server.start()
    try:
        kwargs: dict[str, Any] = {"endpoint_url": server.url, "region_name": "us-east-1"}
        yield ServedMoto(
            server, boto3.client("dynamodb", **kwargs), boto3.client("dynamodbstreams", **kwargs)
        )
    finally:
        server.stop()


def test_the_local_stream_is_trimmed_up_to_what_its_reader_handled(
    served_moto: ServedMoto,
) -> None:
    """moto keeps every stream record and copies them in every transaction; the
    local stack trims what the pipe has read, and reading after the trim point
    (and from the new trim horizon) still finds every later record in order."""
    moto, dynamodb, streams = served_moto, served_moto.dynamodb, served_moto.streams
    arn = moto.table_with_stream("trimmed")
    for n in range(10):
        dynamodb.put_item(TableName="trimmed", Item={"pk": {"S": str(n)}})

    def read(kind: str, after: str | None = None) -> list[str]:
        iterator = moto.iterator(arn, kind, after)
        return keys_of(streams.get_records(ShardIterator=iterator, Limit=100)["Records"])

    first = streams.get_records(ShardIterator=moto.iterator(arn, "TRIM_HORIZON"), Limit=6)
    handled = first["Records"][-1]["dynamodb"]["SequenceNumber"]

    assert moto.server.trim_stream("trimmed", handled) == 6
    assert moto.server.trim_stream("trimmed", handled) == 0
    assert read("AFTER_SEQUENCE_NUMBER", handled) == ["6", "7", "8", "9"]
    assert read("TRIM_HORIZON") == ["6", "7", "8", "9"]
    dynamodb.put_item(TableName="trimmed", Item={"pk": {"S": "10"}})
    assert read("AFTER_SEQUENCE_NUMBER", handled) == ["6", "7", "8", "9", "10"]


FAILING_TRANSACTION = [
    {"Put": {"TableName": "{table}", "Item": {"pk": {"S": "written-then-undone"}}}},
    {
        "ConditionCheck": {
            "TableName": "{table}",
            "Key": {"pk": {"S": "missing"}},
            "ConditionExpression": "attribute_exists(pk)",
        }
    },
]


def fail_a_transaction(dynamodb: Any, table: str) -> None:
    items = json.loads(json.dumps(FAILING_TRANSACTION).replace("{table}", table))
    fail_a_transaction_of(dynamodb, items)


def fail_a_transaction_of(dynamodb: Any, items: list[dict[str, Any]]) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as failed:
        dynamodb.transact_write_items(TransactItems=items)
    assert failed.value.response["Error"]["Code"] == "TransactionCanceledException"


def test_a_failed_transaction_leaves_the_stream_as_it_was(served_moto: ServedMoto) -> None:
    """moto rolls a failed transaction back to its copy of the table, stream
    included: the copy shares the records (they never change) in a list of its
    own, so the undone write leaves no record and the copy costs no images."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    moto, dynamodb, streams = served_moto, served_moto.dynamodb, served_moto.streams
    arn = moto.table_with_stream("rolled-back")
    for n in range(3):
        dynamodb.put_item(TableName="rolled-back", Item={"pk": {"S": str(n)}})
    tables = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].tables
    before = list(tables["rolled-back"].stream_shard.items)

    fail_a_transaction(dynamodb, "rolled-back")
    dynamodb.put_item(TableName="rolled-back", Item={"pk": {"S": "3"}})

    shard = tables["rolled-back"].stream_shard
    assert all(kept is record for kept, record in zip(shard.items, before, strict=False))
    assert shard.table is tables["rolled-back"]
    records = streams.get_records(ShardIterator=moto.iterator(arn, "TRIM_HORIZON"))["Records"]
    assert keys_of(records) == ["0", "1", "2", "3"]
    numbers = [int(record["dynamodb"]["SequenceNumber"]) for record in records]
    assert numbers == list(range(numbers[0], numbers[0] + 4))


def test_a_transaction_copies_each_table_once_and_rolls_all_back(
    served_moto: ServedMoto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto copies a transaction's table once per item as its rollback copy; the
    local stack once per table, and a failed transaction still undoes every write
    of every table it touched."""
    from moto.dynamodb.models.table import Table

    moto, dynamodb = served_moto, served_moto.dynamodb
    for name in ("left", "right"):
        moto.table_with_stream(name)
        dynamodb.put_item(TableName=name, Item={"pk": {"S": "kept"}})
    copies: list[int] = []
    copy_table = Table.__deepcopy__  # type: ignore[attr-defined]

    def counted(table: Table, memo: dict[int, Any]) -> Table:
        copied: Table = copy_table(table, memo)
        copies.append(id(copied))
        return copied

    monkeypatch.setattr(Table, "__deepcopy__", counted, raising=False)

    def put(table: str, key: str) -> dict[str, Any]:
        return {"Put": {"TableName": table, "Item": {"pk": {"S": key}}}}

    written = [put("left", "a"), put("right", "b"), put("left", "c"), put("left", "d")]
    dynamodb.transact_write_items(TransactItems=written)
    assert len(copies) == 4 and len(set(copies)) == 2  # asked four times, made twice

    check = {
        "ConditionCheck": {
            "TableName": "right",
            "Key": {"pk": {"S": "missing"}},
            "ConditionExpression": "attribute_exists(pk)",
        }
    }
    fail_a_transaction_of(dynamodb, [put("left", "e"), put("right", "f"), put("left", "g"), check])

    def keys(table: str) -> set[str]:
        return {item["pk"]["S"] for item in dynamodb.scan(TableName=table)["Items"]}

    assert keys("left") == {"kept", "a", "c", "d"}
    assert keys("right") == {"kept", "b"}


def test_a_query_answers_as_moto_does_reading_only_what_it_reaches(
    served_moto: ServedMoto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto's Query sorts every item of the table to keep one partition's (on an
    index, those with its keys); the local stack's reads the partition (every item,
    unsorted, on an index). Every answer is moto's own: on the table and on an
    index, forwards and backwards, with sort key conditions, filters, projections
    and pages; on a table with a sort key and on one without. And the Query no
    longer compares the table's other items."""
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    dynamodb = served_moto.dynamodb
    key = [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
    dynamodb.create_table(
        TableName="ranged",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk", "ix", "ixs")
        ],
        KeySchema=key,
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by_ix",
                "KeySchema": [
                    {"AttributeName": "ix", "KeyType": "HASH"},
                    {"AttributeName": "ixs", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
    dynamodb.create_table(
        TableName="flat",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=key[:1],
    )
    for n in range(120):
        item = {"pk": {"S": f"a{n % 9}"}, "sk": {"S": f"s{(n * 37) % 120:03d}"}, "n": {"N": str(n)}}
        if n % 3 != 1:  # a sparse index, ties in its sort key broken by the table's keys
            item |= {"ix": {"S": f"i{n % 4}"}, "ixs": {"S": f"t{n % 5}"}}
        dynamodb.put_item(TableName="ranged", Item=item)
        dynamodb.put_item(TableName="flat", Item={"pk": {"S": f"f{n}"}, "n": {"N": str(n)}})

    def value(text: str) -> dict[str, Any]:
        return {":v": {"S": text}, ":w": {"S": "s050"}, ":x": {"S": "t3"}, ":n": {"N": "40"}}

    asked: list[dict[str, Any]] = []
    for forward in (True, False):
        for limit in ({}, {"Limit": 4}):
            common = {"ScanIndexForward": forward, **limit}
            asked += [
                {"TableName": "ranged", "KeyConditionExpression": "pk = :v", **common},
                {"TableName": "ranged", "KeyConditionExpression": "pk = :v AND sk > :w", **common},
                {
                    "TableName": "ranged",
                    "KeyConditionExpression": "pk = :v",
                    "FilterExpression": "n > :n",
                    "ProjectionExpression": "sk, n",
                    **common,
                },
                {
                    "TableName": "ranged",
                    "IndexName": "by_ix",
                    "KeyConditionExpression": "ix = :v",
                    **common,
                },
                {
                    "TableName": "ranged",
                    "IndexName": "by_ix",
                    "KeyConditionExpression": "ix = :v AND ixs >= :x",
                    **common,
                },
                {"TableName": "flat", "KeyConditionExpression": "pk = :v", **common},
            ]
    partitions = ["a0", "a4", "a8", "i0", "i3", "f7", "missing"]

    def pages(query: dict[str, Any], partition: str) -> list[Any]:
        used = query["KeyConditionExpression"] + query.get("FilterExpression", "")
        values = {name: v for name, v in value(partition).items() if name in used}
        request = {**query, "ExpressionAttributeValues": values}
        answers: list[Any] = []
        while True:
            page = dynamodb.query(**request)
            answers.append((page["Items"], page["Count"], page["ScannedCount"]))
            if "LastEvaluatedKey" not in page:
                return answers
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    ours = [pages(query, partition) for query in asked for partition in partitions]
    compared: list[int] = []
    original_lt = DynamoType.__lt__

    def counted_lt(self: Any, other: Any) -> bool:
        compared.append(1)
        return bool(original_lt(self, other))

    monkeypatch.setattr(DynamoType, "__lt__", counted_lt)
    dynamodb.query(
        TableName="ranged", KeyConditionExpression="pk = :v", ExpressionAttributeValues=value("a1")
    )
    comparisons_of_ours = len(compared)
    monkeypatch.setattr(Table, "query", Table.query.__wrapped__)  # type: ignore[attr-defined]
    monkeypatch.setattr(Table, "all_items", Table.all_items.__wrapped__)  # type: ignore[attr-defined]
    compared.clear()
    dynamodb.query(
        TableName="ranged", KeyConditionExpression="pk = :v", ExpressionAttributeValues=value("a1")
    )
    assert comparisons_of_ours < 40 < len(compared)  # a partition of 13, a table of 120
    assert [pages(query, partition) for query in asked for partition in partitions] == ours
    assert any(len(answer) > 1 for answer in ours)  # some were paged
    assert sum(len(items) for answer in ours for items, _, _ in answer) > 500  # and found


def test_moto_serves_waiting_requests_in_the_order_they_arrived() -> None:
    """moto's one-request lock passes to the longest waiter: one that asks just as
    it is released (the releasing thread itself, here) queues behind those already
    waiting, as a plain lock would not make it, so no request waits for many."""
    import threading
    import time

    from agent_channel_dev.local.moto_server import ArrivalOrderLock

    lock = ArrivalOrderLock()
    served: list[str] = []
    lock.acquire()

    def request(name: str) -> None:
        with lock:
            served.append(name)

    waiting = []
    for name in ("first", "second", "third"):
        thread = threading.Thread(target=request, args=(name,))
        thread.start()
        waiting.append(thread)
        deadline = time.monotonic() + 5
        while len(lock._waiting) < len(waiting) and time.monotonic() < deadline:
            time.sleep(0.001)
    assert len(lock._waiting) == 3
    lock.release()
    request("the releaser, again")
    for thread in waiting:
        thread.join(5)
    assert served == ["first", "second", "third", "the releaser, again"]
    assert not lock._held and not lock._waiting
    with lock:  # free again: taken at once
        served.append("later")
    assert served[-1] == "later"


def test_a_table_keeps_no_partition_for_keys_it_does_not_store(served_moto: ServedMoto) -> None:
    """moto makes a partition on first access: every key looked up or deleted in a
    partition that holds nothing left an empty one, which every transaction's
    rollback copy then copied. Reads, conditions, deletes and transactions answer
    as before; only the partitions that hold items remain."""
    from botocore.exceptions import ClientError
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    dynamodb = served_moto.dynamodb
    dynamodb.create_table(
        TableName="sparse",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk")],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
    )

    def key(pk: str, sk: str = "s") -> dict[str, Any]:
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    dynamodb.put_item(TableName="sparse", Item=key("kept"))
    dynamodb.put_item(TableName="sparse", Item=key("emptied"))
    assert "Item" not in dynamodb.get_item(TableName="sparse", Key=key("looked-up"))
    found = dynamodb.batch_get_item(
        RequestItems={"sparse": {"Keys": [key("kept"), key("batch-missed")]}}
    )
    assert found["Responses"]["sparse"] == [key("kept")]
    dynamodb.delete_item(TableName="sparse", Key=key("never-there"))
    dynamodb.delete_item(TableName="sparse", Key=key("emptied"))
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):
        dynamodb.update_item(
            TableName="sparse",
            Key=key("conditioned"),
            UpdateExpression="SET n = :n",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":n": {"N": "1"}},
        )
    fail_a_transaction_of(
        dynamodb,
        [
            {"Put": {"TableName": "sparse", "Item": key("undone")}},
            {
                "ConditionCheck": {
                    "TableName": "sparse",
                    "Key": key("checked"),
                    "ConditionExpression": "attribute_exists(pk)",
                }
            },
        ],
    )
    dynamodb.put_item(TableName="sparse", Item=key("kept", "second"))

    table = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].tables["sparse"]
    assert {str(pk.value): len(partition) for pk, partition in table.items.items()} == {"kept": 2}
    scanned = dynamodb.scan(TableName="sparse")["Items"]
    assert sorted(item["sk"]["S"] for item in scanned) == ["s", "second"]


def test_a_stream_read_answers_as_moto_serializes_it(
    served_moto: ServedMoto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local stack writes GetRecords' answer as JSON directly where moto's
    serializer walked the Streams model for every attribute: what a client reads
    is the same, record by record (keys, both images, every attribute type, the
    timestamp to the millisecond), and a record with a binary attribute is still
    moto's own answer."""
    from moto.core.responses import ActionResult
    from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

    moto, dynamodb, streams = served_moto, served_moto.dynamodb, served_moto.streams
    arn = moto.table_with_stream("streamed")
    every_type = {
        "s": {"S": 'text with "quotes", a \u00e9 and a "B": lookalike'},
        "n": {"N": "12.50"},
        "t": {"BOOL": True},
        "z": {"NULL": True},
        "m": {"M": {"inner": {"L": [{"S": "x"}, {"N": "1"}]}}},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "2"]},
    }
    dynamodb.put_item(TableName="streamed", Item={"pk": {"S": "a"}, **every_type})
    dynamodb.update_item(
        TableName="streamed",
        Key={"pk": {"S": "a"}},
        UpdateExpression="SET n = :n REMOVE z",
        ExpressionAttributeValues={":n": {"N": "13"}},
    )
    dynamodb.delete_item(TableName="streamed", Key={"pk": {"S": "a"}})
    serialized: list[str] = []
    serialize = ActionResult.execute_result

    def counted(self: ActionResult, context: Any) -> Any:
        serialized.append(type(self.result).__name__)
        return serialize(self, context)

    monkeypatch.setattr(ActionResult, "execute_result", counted)

    def read(after: str | None = None) -> list[Any]:
        iterator = moto.iterator(arn, "AFTER_SEQUENCE_NUMBER" if after else "TRIM_HORIZON", after)
        serialized.clear()
        answer = streams.get_records(ShardIterator=iterator)
        assert answer["NextShardIterator"]
        return list(answer["Records"])

    ours = read()
    assert not serialized  # written directly
    last = ours[-1]["dynamodb"]["SequenceNumber"]
    dynamodb.put_item(TableName="streamed", Item={"pk": {"S": "b"}, "blob": {"B": b"\x00\xff"}})
    binary = read(last)
    assert serialized  # left to moto's serializer
    monkeypatch.setattr(
        DynamoDBStreamsHandler,
        "get_records",
        DynamoDBStreamsHandler.get_records.__wrapped__,  # type: ignore[attr-defined]
    )
    assert ours == read()[:3]
    assert binary == read(last)
    assert [record["eventName"] for record in ours] == ["INSERT", "MODIFY", "REMOVE"]
    assert ours[1]["dynamodb"]["OldImage"]["z"] == {"NULL": True}
    assert ours[0]["dynamodb"]["ApproximateCreationDateTime"].microsecond  # milliseconds kept
    assert binary[0]["dynamodb"]["NewImage"]["blob"] == {"B": b"\x00\xff"}


def test_stream_iterators_read_the_live_table_and_expire_as_on_aws(
    served_moto: ServedMoto,
) -> None:
    """moto keeps every model object it makes and every iterator it returns, cut
    from one copy of the table: a failed transaction swaps its rollback copy in,
    and an iterator cut before reads a shard no record reaches while keeping the
    replaced table alive. The local stack's upkeep drops moto's tracking, points
    iterators at the live shard and forgets them after DynamoDB's 15 minutes."""
    import gc
    import weakref

    from botocore.exceptions import ClientError
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodbstreams.models import dynamodbstreams_backends

    from agent_channel_dev.local.moto_server import SHARD_ITERATOR_LIFETIME_SECONDS

    moto, dynamodb, streams = served_moto, served_moto.dynamodb, served_moto.streams
    arn = moto.table_with_stream("swapped")
    dynamodb.put_item(TableName="swapped", Item={"pk": {"S": "0"}})
    read = streams.get_records(ShardIterator=moto.iterator(arn, "TRIM_HORIZON"))
    assert keys_of(read["Records"]) == ["0"]
    held = read["NextShardIterator"]

    tables = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].tables
    replaced = weakref.ref(tables["swapped"])
    fail_a_transaction(dynamodb, "swapped")
    assert tables["swapped"] is not replaced()  # moto's rollback copy is the table now
    dynamodb.put_item(TableName="swapped", Item={"pk": {"S": "1"}})

    clock = [0.0]
    assert moto.server.upkeep(now=lambda: clock[0]) == 0
    gc.collect()
    assert replaced() is None  # nothing holds the replaced table or its copies
    backend = dynamodbstreams_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    swapped = [
        it for it in backend.shard_iterators.values() if it.stream_shard.table.name == "swapped"
    ]
    assert swapped and all(it.stream_shard.table is tables["swapped"] for it in swapped)
    read = streams.get_records(ShardIterator=held)
    assert keys_of(read["Records"]) == ["1"]

    clock[0] = 5.0  # the iterator GetRecords just returned is first seen now
    moto.server.upkeep(now=lambda: clock[0])
    clock[0] = 5.0 + SHARD_ITERATOR_LIFETIME_SECONDS - 1
    assert moto.server.upkeep(now=lambda: clock[0]) > 0  # the ones seen at 0
    assert read["NextShardIterator"] in backend.shard_iterators
    clock[0] += 1
    assert moto.server.upkeep(now=lambda: clock[0]) == 1
    with pytest.raises(ClientError):
        streams.get_records(ShardIterator=read["NextShardIterator"])
