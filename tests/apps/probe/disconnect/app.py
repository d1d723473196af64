"""$disconnect: record the event."""

import json
import os
import time

import boto3

events = boto3.resource("dynamodb").Table(os.environ["EVENTS_TABLE"])


def handler(event, context):
    connection_id = event["requestContext"]["connectionId"]
    at = f"{time.time():.6f}"
    events.put_item(Item={"connectionId": connection_id, "at": at, "event": json.dumps(event)})
    return {"statusCode": 200}
