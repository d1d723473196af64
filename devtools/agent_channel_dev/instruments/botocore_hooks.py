"""Wrap every AWS request made through any botocore client (boto3's and
PynamoDB's alike), for counting, fault injection and interleaving.

Wrappers nest: each wraps whatever stood before it, and puts it back on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from botocore.client import BaseClient

ApiCall = Callable[[BaseClient, str, dict[str, Any]], Any]
Wrapper = Callable[[BaseClient, str, dict[str, Any], ApiCall], Any]


def service_of(client: BaseClient) -> str:
    return str(client.meta.service_model.service_name)


@contextmanager
def wrapping_api_calls(wrapper: Wrapper) -> Iterator[None]:
    """Inside the block, every request goes through ``wrapper(client, operation,
    params, call)``, where ``call`` sends it on."""
    inner: ApiCall = BaseClient._make_api_call  # type: ignore[attr-defined]

    def wrapped(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        return wrapper(client, operation, params, inner)

    BaseClient._make_api_call = wrapped  # type: ignore[attr-defined]
    try:
        yield
    finally:
        BaseClient._make_api_call = inner  # type: ignore[attr-defined]
