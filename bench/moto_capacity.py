"""moto's raw capacity on this machine: how many DynamoDB requests per second the
local stack's moto server (``agent_channel_dev.local.moto_server``, one
request at a time, over loopback HTTP) answers, for each kind of request the
presence routes send (DynamoDB and Scheduler). Printed beside the presence load
figures, so that each is read as a fraction of what the emulator itself can do.

moto runs in a process of its own (``moto_process``, as in the local stack), as
nothing but a server: the client threads that load it would otherwise share its
interpreter lock, and slow it most where its requests are cheapest. Its table is
the project's (``project_table``), stream and index included. TransactWriteItems
is measured at each size the routes send: a transaction's cost grows with its
items (moto copied the whole table once per item; the local stack's once per
table), and a mix is charged for the sizes it sent.

    .venv/bin/python -m bench.moto_capacity [--seconds S] [--items N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stack_accounting import transaction_name, transaction_size

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "lib", ROOT / "devtools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

TABLE = "agent-channel-capacity"
TRANSACTION_SIZES = (1, 2, 6)
"""The sizes the presence routes send: a ``$disconnect``'s one or two, a
``$connect``'s six."""
ITEMS = 500
"""Items in the table before the probe, copied ones included (about what the
presence load leaves): moto's cost per request grows with the table, its
transactions most (each copies the table)."""
TARGETS = 50
"""Items of the probe's own that its requests aim at, put in beside the copied
ones (which make up the rest of ``ITEMS``, or all of a larger table)."""


@dataclass(frozen=True)
class Capacity:
    operation: str
    per_second: float

    @property
    def kind(self) -> str:
        return _kind(self.operation)


def mix_capacity(capacities: list[Capacity], requests: dict[str, int]) -> float:
    """Requests per second moto alone serves for this mix (operation -> count): the
    mix's requests over the seconds moto needs for each at its own rate.

    An operation is charged at the probe's rate for it by name (a transaction by
    its size); a transaction of a size the probe did not send, on the straight
    line through the sizes it did (a cost per request and one per item); another
    operation the probe does not send, at its kind's rate, else as an UpdateItem
    (the cheapest write)."""
    by_name = {c.operation: c.per_second for c in capacities if c.per_second}
    by_kind = {c.kind: c.per_second for c in capacities if c.per_second}
    sizes = {
        size: 1 / c.per_second
        for c in capacities
        if c.per_second and (size := transaction_size(c.operation))
    }

    line = _line(sizes) if len(sizes) >= 2 else None

    def cost(operation: str) -> float:
        """moto's seconds for one request of this operation."""
        if operation in by_name:
            return 1 / by_name[operation]
        size = transaction_size(operation)
        if size and line is not None:
            return max(line(size), min(sizes.values()))
        rate = by_kind.get(_kind(operation)) or by_kind.get("UpdateItem")
        return 1 / rate if rate else 0.0

    seconds = sum(n * cost(op) for op, n in requests.items() if n)
    return sum(requests.values()) / seconds if seconds else 0.0


def _kind(operation: str) -> str:
    """The API operation (``TransactWriteItems`` of ``TransactWriteItems (6 items)``)."""
    return operation.split(" ", 1)[0]


def _line(points: dict[int, float]) -> Callable[[int], float]:
    """The least-squares line through (size, seconds) points."""
    mean_x = statistics.fmean(points)
    mean_y = statistics.fmean(points.values())
    spread = sum((x - mean_x) ** 2 for x in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points.items()) / spread
    return lambda x: mean_y + slope * (x - mean_x)


def measure(
    seconds: float = 3.0,
    threads: int = 8,
    items: int = ITEMS,
    copied: list[dict[str, Any]] | None = None,
) -> list[Capacity]:
    """Each request kind's rate. ``copied``: items (pk/sk keyed, as the project's
    table) put in the table first, so that it holds what a run's table held, and
    not much more: moto's transactions copy the whole table, so their cost is its
    items' size, not only their number. The probe's own items (``TARGETS``, or what
    ``items`` asks beyond the copied ones) are the keys its requests aim at; its
    writes overwrite them, so the table keeps its size."""
    targets = max(TARGETS, items - len(copied or ()))
    agents = max(1, targets * 2 // 5)  # two or three items to an agent's partition
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    import boto3
    from botocore.config import Config

    with moto_process() as url:
        client = boto3.client(
            "dynamodb",
            endpoint_url=url,
            config=Config(max_pool_connections=threads, retries={"total_max_attempts": 1}),
        )
        client.create_table(**project_table())
        for start in range(0, targets, 25):
            client.batch_write_item(
                RequestItems={
                    TABLE: [
                        {
                            "PutRequest": {
                                "Item": {"pk": {"S": f"A#{i % agents}"}, "sk": {"S": f"L#{i}"}}
                            }
                        }
                        for i in range(start, min(start + 25, targets))
                    ]
                }
            )
        for start in range(0, len(copied or ()), 25):
            client.batch_write_item(
                RequestItems={
                    TABLE: [
                        {"PutRequest": {"Item": item}}
                        for item in (copied or [])[start : start + 25]
                    ]
                }
            )
        scheduler = boto3.client(
            "scheduler",
            endpoint_url=url,
            config=Config(max_pool_connections=threads, retries={"total_max_attempts": 1}),
        )

        def update(n: int) -> None:
            item = n % targets
            client.update_item(
                TableName=TABLE,
                Key={"pk": {"S": f"A#{item % agents}"}, "sk": {"S": f"L#{item}"}},
                UpdateExpression="SET seen = :n",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":n": {"N": str(n)}},
            )

        def transaction(size: int) -> Callable[[int], None]:
            def transact(n: int) -> None:
                # The agent item's update and puts over leases already there: the
                # table keeps its size, so every size is measured on the same table.
                writes: list[Any] = [
                    {
                        "Update": {
                            "TableName": TABLE,
                            "Key": {"pk": {"S": f"A#{n % agents}"}, "sk": {"S": "USER"}},
                            "UpdateExpression": "ADD version :one",
                            "ExpressionAttributeValues": {":one": {"N": "1"}},
                        }
                    }
                ]
                for lease in ((n * 3 + j) % targets for j in range(size - 1)):
                    item: dict[str, str | int] = {
                        "pk": f"A#{lease % agents}",
                        "sk": f"L#{lease}",
                        "seen": n,
                    }
                    writes.append({"Put": {"TableName": TABLE, "Item": _typed(item)}})
                client.transact_write_items(TransactItems=writes)

            return transact

        def query(n: int) -> None:
            client.query(
                TableName=TABLE,
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": f"A#{n % agents}"}},
                ConsistentRead=True,
            )

        def batch_get(n: int) -> None:
            # As the authorizer's: the token digest and the target, consistently.
            item = n % targets
            client.batch_get_item(
                RequestItems={
                    TABLE: {
                        "Keys": [
                            {"pk": {"S": f"A#{item % agents}"}, "sk": {"S": f"L#{item}"}},
                            {"pk": {"S": f"A#{(item + 1) % agents}"}, "sk": {"S": "USER"}},
                        ],
                        "ConsistentRead": True,
                    }
                }
            )

        def delete(n: int) -> None:
            # As $disconnect's lease delete: conditional, returning the old item.
            client.delete_item(
                TableName=TABLE,
                Key={"pk": {"S": f"A#{n % agents}"}, "sk": {"S": f"D#{n}"}},
                ReturnValues="ALL_OLD",
            )

        def schedule(n: int) -> None:
            # A grace: created, then withdrawn; two requests, counted as two.
            name = f"probe-{n}"
            scheduler.create_schedule(
                Name=name,
                ScheduleExpression="at(2035-01-01T00:00:00)",
                ScheduleExpressionTimezone="UTC",
                FlexibleTimeWindow={"Mode": "OFF"},
                ActionAfterCompletion="DELETE",
                Target={
                    "Arn": "arn:aws:lambda:us-east-1:123456789012:function:probe",
                    "RoleArn": "arn:aws:iam::123456789012:role/probe",
                    "Input": '{"agent_id": 1}',
                },
            )
            scheduler.delete_schedule(Name=name)

        rates = [
            _rate("UpdateItem", update, seconds, threads),
            _rate("Query (one agent's partition)", query, seconds, threads),
            _rate("BatchGetItem (2 keys)", batch_get, seconds, threads),
            _rate("DeleteItem", delete, seconds, threads),
        ]
        pairs = _rate("Schedule", schedule, seconds, threads).per_second
        rates += [Capacity("CreateSchedule", 2 * pairs), Capacity("DeleteSchedule", 2 * pairs)]
        rates += [
            _rate(transaction_name(size), transaction(size), seconds, threads)
            for size in TRANSACTION_SIZES
        ]
        return rates


@contextlib.contextmanager
def moto_process() -> Iterator[str]:
    """The local stack's moto server, alone in a fresh process (its backends start
    empty), for as long as the block runs; its URL."""
    from agent_channel_dev.local.moto_process import MotoProcess

    process = MotoProcess()
    process.start()
    try:
        yield process.url
    finally:
        process.stop()


def project_table() -> dict[str, Any]:
    """The project's table as the stack creates it (its stream and its index
    included: a write costs moto a stream record, and the rollback copy copies
    the index's definition), under the probe's own name."""
    from agent_channel_dev.local import sam_app

    app = sam_app.load(ROOT / "template.yaml", stack_name="capacity")
    keyed = [
        table.create_kwargs
        for table in app.tables
        if {key["AttributeName"] for key in table.create_kwargs["KeySchema"]} == {"pk", "sk"}
    ]
    return {**keyed[0], "TableName": TABLE}


def table_items(endpoint_url: str) -> list[dict[str, Any]]:
    """Every item of the pk/sk-keyed tables behind ``endpoint_url`` (a local stack's
    moto), as DynamoDB JSON."""
    import boto3

    client = boto3.client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 (the local stack's operator key)
    )
    found: list[dict[str, Any]] = []
    for name in client.list_tables()["TableNames"]:
        keys = {
            k["AttributeName"] for k in client.describe_table(TableName=name)["Table"]["KeySchema"]
        }
        if keys != {"pk", "sk"}:
            continue
        for page in client.get_paginator("scan").paginate(TableName=name):
            found += page["Items"]
    return found


def _typed(item: dict[str, str | int]) -> dict[str, dict[str, str]]:
    """A flat item in DynamoDB JSON."""
    return {k: {"N": str(v)} if isinstance(v, int) else {"S": v} for k, v in item.items()}


def _rate(name: str, call: Callable[[int], Any], seconds: float, threads: int) -> Capacity:
    deadline = time.monotonic() + seconds
    done = [0] * threads

    def loop(worker: int) -> None:
        n = worker
        while time.monotonic() < deadline:
            call(n)
            done[worker] += 1
            n += threads

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    return Capacity(name, sum(done) / (time.monotonic() - started))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--items", type=int, default=ITEMS)
    args = parser.parse_args(argv)
    for capacity in measure(args.seconds, items=args.items):
        print(f"{capacity.operation}: {capacity.per_second:.0f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
