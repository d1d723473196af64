"""Closing sockets from the server side: ``@connections`` DELETE.

Used when a token is revoked: every socket opened with it is closed at once, and
API Gateway then runs each one's ``$disconnect`` (which releases its lease and, for
the last session, schedules the grace), exactly as if the client had left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from agent_channel.delivery.fanout import GONE_CODE
from agent_channel.observability import count, logger

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mypy_boto3_apigatewaymanagementapi import ApiGatewayManagementApiClient


def close_connections(
    connection_ids: Iterable[str], *, client: ApiGatewayManagementApiClient
) -> tuple[list[str], list[str]]:
    """DELETE each connection; (closed now or already gone, failed)."""
    closed: list[str] = []
    failed: list[str] = []
    for connection_id in connection_ids:
        try:
            client.delete_connection(ConnectionId=connection_id)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == GONE_CODE:
                closed.append(connection_id)  # closed before we got there
                continue
            logger.warning(
                "could not close a connection",
                extra={"target": connection_id, "code": error.response.get("Error", {})},
            )
            failed.append(connection_id)
            continue
        closed.append(connection_id)
    if closed:
        count("ClosedConnections", len(closed))
    return closed, failed
