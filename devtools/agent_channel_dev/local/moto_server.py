"""The embedded moto server, one request at a time.

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

import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class OneRequestAtATime:
    """WSGI middleware: the wrapped app serves one request at a time."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self._lock:
            # Consume the body inside the lock: moto may build it lazily.
            return list(self._app(environ, start_response))


class MotoServer:
    """moto's server app, atomic per request, on a free loopback port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = OneRequestAtATime(DomainDispatcherApplication(create_backend_app))
        self._server: BaseWSGIServer = make_server(
            host, port, app, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
