"""Inside one worker process: a warm Lambda execution environment for one function.

The process starts with nothing of the local stack's own environment: it is
cleared and replaced by exactly what the template gives the function plus the
variables Lambda's runtime sets itself, so a variable missing from the template
fails here as it would on AWS. The function's folder (and its layers) go on
``sys.path`` as Lambda's task root and ``/opt/python``; its module is imported
once (the init phase) and its handler then serves one invocation at a time.

The API Gateway management endpoint of the served API
(``https://API_ID.execute-api.REGION.amazonaws.com/STAGE``) is routed to the
local gateway, with its ``Host`` kept, so the SigV4 signature the local
``@connections`` API checks is the one AWS would check.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class WorkerSpec:
    function_name: str
    handler: str
    code_dir: str
    layer_dirs: tuple[str, ...]
    environment: dict[str, str]
    memory_mb: int
    execute_api_host: str
    """``API_ID.execute-api.REGION.amazonaws.com``: routed to ``local_origin``."""
    local_origin: str
    """``http://127.0.0.1:PORT``."""


class LambdaContext:
    """The context object of Lambda's Python runtime, with a real deadline."""

    def __init__(self, spec: WorkerSpec, request_id: str, deadline: float) -> None:
        self.function_name = spec.function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = (
            f"arn:aws:lambda:{spec.environment.get('AWS_REGION', 'us-east-1')}:"
            f"000000000000:function:{spec.function_name}"
        )
        self.memory_limit_in_mb = str(spec.memory_mb)
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{spec.function_name}"
        self.log_stream_name = "local"
        self.identity = None
        self.client_context = None
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def _route_execute_api(host: str, origin: str) -> None:
    import botocore.endpoint

    target = urlsplit(origin)
    endpoint: Any = botocore.endpoint.Endpoint
    original = endpoint._send

    def send(self: Any, request: Any) -> Any:
        url = urlsplit(request.url)
        if url.hostname == host:
            request.headers["Host"] = host
            request.url = urlunsplit((target.scheme, target.netloc, url.path, url.query, ""))
        return original(self, request)

    endpoint._send = send


def _error(error: BaseException, kind: str | None = None) -> dict[str, Any]:
    return {
        "errorMessage": str(error),
        "errorType": kind or type(error).__name__,
        "stackTrace": traceback.format_exception(error)[-5:],
    }


def serve(conn: Connection, spec: WorkerSpec) -> None:
    """The worker's main loop: init, say ready, then invocations until EOF."""
    # Ctrl-C reaches the terminal's whole process group; the stack stops its
    # workers itself (a Lambda runtime never sees the developer's keyboard).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(spec.environment)
    sys.path[:0] = [spec.code_dir, *spec.layer_dirs]
    _route_execute_api(spec.execute_api_host, spec.local_origin)
    module_name, _, attribute = spec.handler.rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name), attribute)
    except BaseException as error:
        traceback.print_exc()
        conn.send(("init_error", json.dumps(_error(error, "Runtime.ImportModuleError"))))
        return
    conn.send(("ready", ""))
    while True:
        try:
            request_id, raw_event, deadline = conn.recv()
        except (EOFError, OSError):
            return
        context = LambdaContext(spec, request_id, deadline)
        try:
            result = handler(json.loads(raw_event), context)
        except Exception as error:
            traceback.print_exc()
            conn.send(("error", json.dumps(_error(error))))
            continue
        try:
            conn.send(("ok", json.dumps(result)))
        except (TypeError, ValueError) as error:
            conn.send(("error", json.dumps(_error(error, "Runtime.MarshalError"))))
