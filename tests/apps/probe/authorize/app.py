"""The $connect REQUEST authorizer: ?token=allow-NAME allows (NAME in the context),
deny denies, bad raises Unauthorized, anything else fails. Records every event."""

import json
import os
import time

import boto3

events = boto3.resource("dynamodb").Table(os.environ["EVENTS_TABLE"])


def handler(event, context):
    connection_id = event["requestContext"]["connectionId"]
    at = f"{time.time():.6f}"
    events.put_item(Item={"connectionId": connection_id, "at": at, "event": json.dumps(event)})
    token = event["queryStringParameters"]["token"]
    if token == "bad":
        raise Exception("Unauthorized")
    if token == "deny" or token.startswith("allow-"):
        effect = "Deny" if token == "deny" else "Allow"
        return {
            "principalId": token,
            "policyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Action": "execute-api:Invoke",
                        "Effect": effect,
                        "Resource": event["methodArn"],
                    }
                ],
            },
            "context": {"who": token.removeprefix("allow-")},
        }
    raise RuntimeError("the authorizer broke")
