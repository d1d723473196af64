"""A function whose policy lacks execute-api:ManageConnections: it records the
error code its post gets."""

import os
import time

import boto3
from botocore.exceptions import ClientError

events = boto3.resource("dynamodb").Table(os.environ["EVENTS_TABLE"])


def handler(event, context):
    context_ = event["requestContext"]
    endpoint = f"https://{context_['domainName']}/{context_['stage']}"
    api = boto3.client("apigatewaymanagementapi", endpoint_url=endpoint)
    try:
        api.post_to_connection(ConnectionId=context_["connectionId"], Data=b"should not arrive")
        outcome = "posted"
    except ClientError as error:
        outcome = error.response["Error"]["Code"]
    at = f"{time.time():.6f}"
    events.put_item(Item={"connectionId": context_["connectionId"], "at": at, "outcome": outcome})
    return {"statusCode": 200}
