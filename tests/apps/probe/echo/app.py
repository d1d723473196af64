"""Message routes: answer through @connections (the client sees what was sent)."""

import json
import os
import time

import boto3

events = boto3.resource("dynamodb").Table(os.environ["EVENTS_TABLE"])


def management(event):
    context = event["requestContext"]
    endpoint = f"https://{context['domainName']}/{context['stage']}"
    return boto3.client("apigatewaymanagementapi", endpoint_url=endpoint)


def handler(event, context):
    context_ = event["requestContext"]
    connection_id = context_["connectionId"]
    at = f"{time.time():.6f}"
    events.put_item(Item={"connectionId": connection_id, "at": at, "event": json.dumps(event)})
    probe = (json.loads(event.get("body") or "{}") or {}).get("probe") or {}
    route = context_["routeKey"]
    if route == "boom":
        raise RuntimeError("boom")
    if route in ("sleep", "slow"):
        time.sleep(float(probe.get("seconds", 1)))
    if route == "big":
        data = ("x" * int(probe["size"])).encode()
    elif route == "env":
        data = json.dumps(sorted(os.environ)).encode()
    else:
        data = json.dumps({"route": route, "tag": probe.get("tag"), "event": event}).encode()
    management(event).post_to_connection(ConnectionId=connection_id, Data=data)
    return {"statusCode": 200}
