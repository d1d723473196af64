"""The local stack's moto server, one request at a time.

DynamoDB applies each request atomically (a transaction all or nothing, a
conditional write against the item as it is). moto's in-memory backends take
no locks, so with the local stack's many concurrent workers two requests could
interleave inside moto and break that promise: conditions checked against an
item half-written by another request, transactions answered with 500. The
local stack would then show races AWS never has. Serving moto's requests one
at a time restores per-request atomicity; the handlers still interleave
between requests, which is exactly the concurrency AWS has.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from moto.core.model_instances import reset_model_data
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodbstreams.models import dynamodbstreams_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from agent_channel_dev.local import moto_costs

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

SHARD_ITERATOR_LIFETIME_SECONDS = 15 * 60
"""DynamoDB Streams: a shard iterator expires 15 minutes after it is returned."""


class ArrivalOrderLock:
    """A lock that waiting threads acquire in the order they asked for it.

    ``threading.Lock`` promises no order: a thread that asks just as the lock is
    released (the one releasing it, say) takes it ahead of threads already
    waiting, since they must first be woken, so under a steady stream of new
    requests one that waits may keep waiting. DynamoDB serves a request without
    regard to how many came after it; so does this: the lock passes straight to
    the longest waiter.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held = False
        self._waiting: collections.deque[threading.Lock] = collections.deque()

    def acquire(self) -> None:
        with self._guard:
            if not self._held:
                self._held = True
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        turn.acquire()  # released by the holder's release: the lock is ours

    def release(self) -> None:
        with self._guard:
            if self._waiting:
                self._waiting.popleft().release()  # handed over, still held
            else:
                self._held = False

    def __enter__(self) -> ArrivalOrderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class OneRequestAtATime:
    """WSGI middleware: the wrapped app serves one request at a time, in the order
    they arrived."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = ArrivalOrderLock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self._lock:
            # Consume the body inside the lock: moto may build it lazily.
            return list(self._app(environ, start_response))


class MotoServer:
    """moto's server app, atomic per request, on a free loopback port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        moto_costs.install()
        self._app = OneRequestAtATime(DomainDispatcherApplication(create_backend_app))
        self._server: BaseWSGIServer = make_server(
            host, port, self._app, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)
        self._iterators_issued: dict[str, float] = {}

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def trim_stream(self, table_name: str, through: str, region: str = "us-east-1") -> int:
        """Drop the table's stream records up to sequence number ``through`` (all
        read by the stream's one reader); how many went.

        DynamoDB trims a stream after 24 hours; moto keeps every record for the
        life of the process, and every TransactWriteItems deep-copies the table,
        its stream with it, as its rollback copy. Untrimmed, a transaction's cost
        grows with every write since the stack started (about 100 ms per 2,000
        records on a laptop), whatever the table holds. moto numbers records from
        the shard's ``starting_sequence_number`` (TRIM_HORIZON reads from there), so
        the trim moves it on by what it drops. Under the request lock: no request
        sees a half-trimmed shard.
        """
        with self._app._lock:
            table = dynamodb_backends[DEFAULT_ACCOUNT_ID][region].tables.get(table_name)
            shard = table.stream_shard if table is not None else None
            if shard is None:
                return 0
            dropped = min(len(shard.items), int(through) + 1 - shard.starting_sequence_number)
            if dropped <= 0:
                return 0
            del shard.items[:dropped]
            shard.starting_sequence_number += dropped
            return dropped

    def upkeep(self, region: str = "us-east-1", now: Callable[[], float] = time.monotonic) -> int:
        """What a moto serving for hours needs now and then, under the request lock
        (called after each poll of the task-event pipe); how many stream iterators
        expired.

        - moto keeps every model object it ever made (``BaseModel.__new__`` appends
          it to its class's ``instances_tracked``, for moto's dashboard, which the
          local stack does not serve), the rollback copies of the table every
          TransactWriteItems makes included: four tables per 4-item transaction,
          every item of each. Under load that grew the stack process by millions
          of objects, and each full garbage collection with them, to seconds
          during which every request waited. The tracking is dropped here (moto's
          own ``reset_model_data``: the backends keep their models).
        - Stream iterators: see ``_expire_shard_iterators``.
        """
        with self._app._lock:
            reset_model_data()
            return self._expire_shard_iterators(region, now())

    def _expire_shard_iterators(self, region: str, moment: float) -> int:
        """Forget the stream iterators older than DynamoDB's 15 minutes, and point
        every other one at its table's shard as it is now; how many expired.

        moto keeps every iterator it returned (each GetShardIterator and each
        GetRecords makes one), each holding the shard it was cut from, and the
        shard its table. A TransactWriteItems that fails puts its rollback copy of
        the table in place of the table: an iterator cut before then would keep
        the replaced table alive and read a shard no record reaches any more. An
        iterator names a stream's shard, not a copy of a table: here it reads the
        live one, and lives as long as on AWS. An expired iterator is refused as
        unknown; the pipe then cuts another from its checkpoint. Ages are counted
        from the upkeep that first saw an iterator: accurate to one poll.
        """
        iterators = dynamodbstreams_backends[DEFAULT_ACCOUNT_ID][region].shard_iterators
        tables = dynamodb_backends[DEFAULT_ACCOUNT_ID][region].tables
        issued = {arn: self._iterators_issued.get(arn, moment) for arn in iterators}
        expired = [
            arn for arn, at in issued.items() if moment - at >= SHARD_ITERATOR_LIFETIME_SECONDS
        ]
        for arn in expired:
            del iterators[arn]
            del issued[arn]
        self._iterators_issued = issued
        for iterator in iterators.values():
            live = tables.get(iterator.stream_shard.table.name)
            if live is not None and live.stream_shard is not None:
                iterator.stream_shard = live.stream_shard
        return len(expired)

    def record(self, path: str) -> None:
        """From now on, append every request served that may change state to the
        file at ``path`` (moto's own recorder: ``persistence.py``)."""
        from moto.moto_api import recorder

        from agent_channel_dev.local.persistence import changes_state

        record_request = recorder._record_request

        def record_changes(request: Any, body: bytes | None = None) -> None:
            if changes_state(request.method, request.headers.get("X-Amz-Target")):
                record_request(request, body)

        recorder._record_request = record_changes  # type: ignore[method-assign]
        recorder._location = path
        recorder.start_recording()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
