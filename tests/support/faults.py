"""Fault injection at botocore: chosen requests fail as AWS would fail them."""

from __future__ import annotations

import threading
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
    service: str,
    operations: set[str],
    code: str,
    *,
    times: int | None = None,
    status: int = 503,
    threads: set[str] | None = None,
) -> Iterator[list[str]]:
    """Requests of ``service`` whose operation is in ``operations`` fail with
    ``code`` (at most ``times`` times, if given; only in the named ``threads``, if
    given: an interleaving's actors run in threads named after them). Yields the
    failed operations."""
    failed: list[str] = []

    def failing(client: BaseClient, operation: str, params: dict[str, Any], call: ApiCall) -> Any:
        hit = service_of(client) == service and operation in operations
        if threads is not None:
            hit = hit and threading.current_thread().name in threads
        if hit and (times is None or len(failed) < times):
            failed.append(operation)
            raise client_error(code, operation, status)
        return call(client, operation, params)

    with wrapping_api_calls(failing):
        yield failed


SCHEDULER_UNAVAILABLE = ("InternalServerException", 500)
"""One of the errors EventBridge Scheduler documents for CreateSchedule and
UpdateSchedule (also: ThrottlingException 429, ServiceQuotaExceededException 402,
ValidationException 400, ConflictException 409, ResourceNotFoundException 404)."""


@contextmanager
def scheduler_down(threads: set[str] | None = None) -> Iterator[list[str]]:
    """Scheduler refuses to create or update schedules (for the named threads only,
    if given), as during an outage that outlasts the client's retries."""
    code, status = SCHEDULER_UNAVAILABLE
    with failing_requests(
        "scheduler", {"CreateSchedule", "UpdateSchedule"}, code, status=status, threads=threads
    ) as failed:
        yield failed
