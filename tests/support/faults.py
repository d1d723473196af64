"""Fault injection at botocore: chosen requests fail as AWS would fail them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from agent_channel_dev.instruments.botocore_hooks import ApiCall, service_of, wrapping_api_calls


def client_error(code: str, operation: str, status: int = 503) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"injected {code}"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


@contextmanager
def failing_requests(
    service: str, operations: set[str], code: str, *, times: int | None = None, status: int = 503
) -> Iterator[list[str]]:
    """Requests of ``service`` whose operation is in ``operations`` fail with
    ``code`` (at most ``times`` times, if given). Yields the failed operations."""
    failed: list[str] = []

    def failing(client: BaseClient, operation: str, params: dict[str, Any], call: ApiCall) -> Any:
        hit = service_of(client) == service and operation in operations
        if hit and (times is None or len(failed) < times):
            failed.append(operation)
            raise client_error(code, operation, status)
        return call(client, operation, params)

    with wrapping_api_calls(failing):
        yield failed
