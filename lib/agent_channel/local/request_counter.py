"""Count AWS requests by service and operation, through any botocore client.

Used by the round-trip tests and the benchmarks: the figures they quote are
requests really sent, not calls the code was expected to make.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import botocore.client

_original = botocore.client.BaseClient._make_api_call  # type: ignore[attr-defined]


class RequestCounter:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def of(self, service: str) -> list[str]:
        return [operation for svc, operation in self.requests if svc == service]

    def count(self, service: str) -> int:
        return len(self.of(service))

    def by_operation(self, service: str) -> Counter[str]:
        return Counter(self.of(service))


@contextmanager
def counting_requests() -> Iterator[RequestCounter]:
    counter = RequestCounter()

    def counted(self: botocore.client.BaseClient, operation: str, params: dict[str, Any]) -> Any:
        counter.requests.append((self.meta.service_model.service_name, operation))
        return _original(self, operation, params)

    botocore.client.BaseClient._make_api_call = counted  # type: ignore[attr-defined]
    try:
        yield counter
    finally:
        botocore.client.BaseClient._make_api_call = _original  # type: ignore[attr-defined]
