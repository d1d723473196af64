"""Fault injection at botocore: chosen requests fail as AWS would fail them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import botocore.client
from botocore.exceptions import ClientError

_original = botocore.client.BaseClient._make_api_call  # type: ignore[attr-defined]


@contextmanager
def failing_requests(
    service: str, operations: set[str], code: str, *, times: int | None = None, status: int = 503
) -> Iterator[list[str]]:
    """Requests of ``service`` whose operation is in ``operations`` fail with
    ``code`` (at most ``times`` times, if given). Yields the failed operations."""
    failed: list[str] = []

    def failing(self: botocore.client.BaseClient, operation: str, params: dict[str, Any]) -> Any:
        hit = self.meta.service_model.service_name == service and operation in operations
        if hit and (times is None or len(failed) < times):
            failed.append(operation)
            raise ClientError(
                {
                    "Error": {"Code": code, "Message": f"injected {code}"},
                    "ResponseMetadata": {"HTTPStatusCode": status},
                },
                operation,
            )
        return _original(self, operation, params)

    botocore.client.BaseClient._make_api_call = failing  # type: ignore[method-assign]
    try:
        yield failed
    finally:
        botocore.client.BaseClient._make_api_call = _original  # type: ignore[method-assign]
