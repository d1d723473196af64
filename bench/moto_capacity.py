"""moto's raw capacity on this machine: how many DynamoDB requests per second the
local stack's embedded moto server (``agent_channel_dev.local.moto_server``, one
request at a time, over loopback HTTP) answers from one client thread, for the
requests the presence routes send. Printed beside the presence load figures, so
that each is read as a fraction of what the emulator itself can do.

    .venv/bin/python -m bench.moto_capacity [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
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


@dataclass(frozen=True)
class Capacity:
    operation: str
    per_second: float


def measure(seconds: float = 3.0, threads: int = 8) -> list[Capacity]:
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
        for start in range(0, ITEMS, 25):
            client.batch_write_item(
                RequestItems={
                    TABLE: [
                        {
                            "PutRequest": {
                                "Item": {"pk": {"S": f"A#{i % 200}"}, "sk": {"S": f"L#{i}"}}
                            }
                        }
                        for i in range(start, min(start + 25, ITEMS))
                    ]
                }
            )

        def update(n: int) -> None:
            item = n % ITEMS
            client.update_item(
                TableName=TABLE,
                Key={"pk": {"S": f"A#{item % 200}"}, "sk": {"S": f"L#{item}"}},
                UpdateExpression="SET seen = :n",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":n": {"N": str(n)}},
            )

        def transact(n: int) -> None:
            agent = f"A#{n % 200}"
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
                ExpressionAttributeValues={":pk": {"S": f"A#{n % 200}"}},
                ConsistentRead=True,
            )

        # Transactions last: each adds items, and the table's size is their cost.
        return [
            _rate("UpdateItem", update, seconds, threads),
            _rate("Query (one agent's partition)", query, seconds, threads),
            _rate("TransactWriteItems (4 items)", transact, seconds, threads),
        ]
    finally:
        server.stop()


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
    args = parser.parse_args(argv)
    for capacity in measure(args.seconds):
        print(f"{capacity.operation}: {capacity.per_second:.0f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
