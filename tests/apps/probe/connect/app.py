"""$connect: record the event; answer the status the client asks for (?status=)."""

import json
import os
import time

import boto3

events = boto3.resource("dynamodb").Table(os.environ["EVENTS_TABLE"])


def handler(event, context):
    connection_id = event["requestContext"]["connectionId"]
    at = f"{time.time():.6f}"
    events.put_item(Item={"connectionId": connection_id, "at": at, "event": json.dumps(event)})
    status = int((event.get("queryStringParameters") or {}).get("status", "200"))
    return {"statusCode": status}
