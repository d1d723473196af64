"""Count AWS requests by service and operation, through any botocore client.

Used by the round-trip tests and the benchmarks: the figures they quote are
requests really sent, not calls the code was expected to make.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.client import BaseClient

from agent_channel_dev.instruments.botocore_hooks import ApiCall, service_of, wrapping_api_calls


class RequestCounter:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def of(self, service: str) -> list[str]:
        return [operation for svc, operation in self.requests if svc == service]

    def count(self, service: str) -> int:
        return len(self.of(service))

    def by_operation(self, service: str) -> Counter[str]:
        return Counter(self.of(service))

    def _record(
        self, client: BaseClient, operation: str, params: dict[str, Any], call: ApiCall
    ) -> Any:
        self.requests.append((service_of(client), operation))
        return call(client, operation, params)


@contextmanager
def counting_requests() -> Iterator[RequestCounter]:
    counter = RequestCounter()
    with wrapping_api_calls(counter._record):
        yield counter
