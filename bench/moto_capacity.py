"""moto's raw capacity on this machine: how many DynamoDB requests per second the
local stack's embedded moto server (``agent_channel_dev.local.moto_server``, one
request at a time, over loopback HTTP) answers, for each kind of request the
presence routes send (DynamoDB and Scheduler). Printed beside the presence load
figures, so that each is read as a fraction of what the emulator itself can do.

    .venv/bin/python -m bench.moto_capacity [--seconds S] [--items N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "lib", ROOT / "devtools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

TABLE = "agent-channel-capacity"
ITEMS = 500
"""Items in the table first (about what the presence load leaves): moto's cost per
request grows with the table, its transactions most (each copies the table)."""
AGENTS = 200


@dataclass(frozen=True)
class Capacity:
    operation: str
    per_second: float

    @property
    def kind(self) -> str:
        """The API operation (``TransactWriteItems`` of ``TransactWriteItems (4 items)``)."""
        return self.operation.split(" ", 1)[0]


def mix_capacity(capacities: list[Capacity], requests: dict[str, int]) -> float:
    """Requests per second moto alone serves for this mix (operation -> count): the
    mix's requests over the seconds moto needs for each at its own rate. A kind the
    probe does not send is charged as an UpdateItem (the cheapest write)."""
    rates = {c.kind: c.per_second for c in capacities}
    fallback = rates.get("UpdateItem", 0.0)
    seconds = sum(n / (rates.get(op) or fallback) for op, n in requests.items() if n)
    return sum(requests.values()) / seconds if seconds else 0.0


def measure(
    seconds: float = 3.0,
    threads: int = 8,
    items: int = ITEMS,
    copied: list[dict[str, Any]] | None = None,
) -> list[Capacity]:
    """Each request kind's rate. ``copied``: items (pk/sk keyed, as the project's
    table) put in the table first, so that it holds what a run's table held: moto's
    transactions copy the whole table, so their cost is its items' size, not only
    their number."""
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    import logging

    import boto3
    from botocore.config import Config

    from agent_channel_dev.local.moto_server import MotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = MotoServer()
    server.start()
    # moto's backends live in this process, across servers: start from nothing.
    reset = urllib.request.Request(f"{server.url}/moto-api/reset", method="POST")  # noqa: S310
    urllib.request.urlopen(reset, timeout=30).close()  # noqa: S310 (our own loopback server)
    try:
        client = boto3.client(
            "dynamodb",
            endpoint_url=server.url,
            config=Config(max_pool_connections=threads, retries={"total_max_attempts": 1}),
        )
        client.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
        )
        for start in range(0, items, 25):
            client.batch_write_item(
                RequestItems={
                    TABLE: [
                        {
                            "PutRequest": {
                                "Item": {"pk": {"S": f"A#{i % AGENTS}"}, "sk": {"S": f"L#{i}"}}
                            }
                        }
                        for i in range(start, min(start + 25, items))
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
            endpoint_url=server.url,
            config=Config(max_pool_connections=threads, retries={"total_max_attempts": 1}),
        )

        def update(n: int) -> None:
            item = n % items
            client.update_item(
                TableName=TABLE,
                Key={"pk": {"S": f"A#{item % AGENTS}"}, "sk": {"S": f"L#{item}"}},
                UpdateExpression="SET seen = :n",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":n": {"N": str(n)}},
            )

        def transact(n: int) -> None:
            agent = f"A#{n % AGENTS}"
            client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": TABLE,
                            "Item": {"pk": {"S": f"C#{n}"}, "sk": {"S": "C"}},
                        }
                    },
                    {
                        "Put": {
                            "TableName": TABLE,
                            "Item": {"pk": {"S": f"S#{n}"}, "sk": {"S": "M"}},
                        }
                    },
                    {
                        "Put": {
                            "TableName": TABLE,
                            "Item": {"pk": {"S": agent}, "sk": {"S": f"N#{n}"}},
                        }
                    },
                    {
                        "Update": {
                            "TableName": TABLE,
                            "Key": {"pk": {"S": agent}, "sk": {"S": "USER"}},
                            "UpdateExpression": "ADD version :one",
                            "ExpressionAttributeValues": {":one": {"N": "1"}},
                        }
                    },
                ]
            )

        def query(n: int) -> None:
            client.query(
                TableName=TABLE,
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": f"A#{n % AGENTS}"}},
                ConsistentRead=True,
            )

        def batch_get(n: int) -> None:
            # As the authorizer's: the token digest and the target, consistently.
            item = n % items
            client.batch_get_item(
                RequestItems={
                    TABLE: {
                        "Keys": [
                            {"pk": {"S": f"A#{item % AGENTS}"}, "sk": {"S": f"L#{item}"}},
                            {"pk": {"S": f"A#{(item + 1) % AGENTS}"}, "sk": {"S": "USER"}},
                        ],
                        "ConsistentRead": True,
                    }
                }
            )

        def delete(n: int) -> None:
            # As $disconnect's lease delete: conditional, returning the old item.
            client.delete_item(
                TableName=TABLE,
                Key={"pk": {"S": f"A#{n % AGENTS}"}, "sk": {"S": f"D#{n}"}},
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

        # Transactions last: each adds items, and the table's size is their cost.
        rates = [
            _rate("UpdateItem", update, seconds, threads),
            _rate("Query (one agent's partition)", query, seconds, threads),
            _rate("BatchGetItem (2 keys)", batch_get, seconds, threads),
            _rate("DeleteItem", delete, seconds, threads),
        ]
        pairs = _rate("Schedule", schedule, seconds, threads).per_second
        rates += [Capacity("CreateSchedule", 2 * pairs), Capacity("DeleteSchedule", 2 * pairs)]
        rates.append(_rate("TransactWriteItems (4 items)", transact, seconds, threads))
        return rates
    finally:
        server.stop()


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
