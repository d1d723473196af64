"""One Logger, one Metrics and one Tracer for the process, shared by every module.

Handlers bind the connection, agent and request ids with ``bind_ids`` so that
every line a request logs carries them. Nothing secret is ever a key here.

Every key that belongs to one invocation (the Lambda context as well as the
ids) is kept in Powertools' context-local keys, never in the formatter's
process-wide keys: the local stack runs many invocations of different functions
at once in one process, and one invocation's function name or request id must
never stamp another's lines (docs/OPERATIONS.md, "One log schema").
"""

from __future__ import annotations

import contextvars
import os
import warnings
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools import Tracer

Arg = TypeVar("Arg")
Out = TypeVar("Out")

# Powertools would read these variables itself, but an explicit argument wins
# over them; so read them here and keep the project's names as the defaults.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "agent-channel")
logger = Logger(service=SERVICE)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "AgentChannel"), service=SERVICE
)

INVOCATION_KEYS = (
    "function_name",
    "function_memory_size",
    "function_arn",
    "function_request_id",
    "cold_start",
)
"""What every line of an invocation carries about the invocation itself (the
names Powertools' inject_lambda_context uses, so the schema is the usual one)."""

# Most invocations (a heartbeat that refreshes, a disconnect with a sibling left)
# have nothing to count; Powertools warns on every such flush, which is noise.
warnings.filterwarnings("ignore", message="No application metrics to publish")


@cache
def tracer() -> Tracer:
    """The process's X-Ray tracer, built on first use (not at import: a module that
    only logs never pays for the X-Ray SDK). Only botocore is patched: the AWS calls
    (each post to a connection among them) are what a trace must show."""
    from aws_lambda_powertools import Tracer

    return Tracer(service=SERVICE, patch_modules=("botocore",))


_cold = True


def start_invocation(context: Any) -> None:
    """Forget the previous invocation's keys and stamp this one's Lambda context
    on every later line of it (in this thread or task only)."""
    global _cold
    cold_start, _cold = _cold, False
    logger.thread_safe_clear_keys()
    logger.thread_safe_append_keys(
        function_name=getattr(context, "function_name", None),
        function_memory_size=getattr(context, "memory_limit_in_mb", None),
        function_arn=getattr(context, "invoked_function_arn", None),
        function_request_id=getattr(context, "aws_request_id", None),
        cold_start=cold_start,
    )


def bind_ids(
    *,
    connection_id: str | None = None,
    agent_id: int | None = None,
    request_id: str | None = None,
    task_id: int | None = None,
) -> None:
    """Stamp every later log line of this invocation with these ids, and put the
    connection, agent and task ids on its trace as annotations (searchable)."""
    keys: dict[str, Any] = {
        "connection_id": connection_id,
        "agent_id": agent_id,
        "request_id": request_id,
        "task_id": task_id,
    }
    given = {k: v for k, v in keys.items() if v is not None}
    logger.thread_safe_append_keys(**given)
    annotate(**{k: v for k, v in given.items() if k != "request_id"})


def annotate(**ids: Any) -> None:
    """X-Ray annotations of the current trace (no-op while tracing is off)."""
    traced = tracer()
    for name, value in ids.items():
        if value is not None:
            traced.put_annotation(key=name, value=value)


def clear_ids() -> None:
    """Forget the ids bound so far, keeping the invocation's Lambda context."""
    current = logger.thread_safe_get_current_keys()
    kept = {k: v for k, v in current.items() if k in INVOCATION_KEYS}
    logger.thread_safe_clear_keys()
    logger.thread_safe_append_keys(**kept)


def on_worker_threads(work: Callable[[Arg], Out]) -> Callable[[Arg], Out]:
    """``work``, to be run on pool threads, inside this invocation's log keys and
    X-Ray segment. Both are per thread (a context variable, the SDK's thread-local
    entity), and a pool thread starts with neither: without this its lines would
    lack the function name, request id and ids, and its AWS calls the trace."""
    keys = contextvars.copy_context()
    entity = _trace_entity()

    def run(arg: Arg) -> Out:
        # A copy per call: one context cannot be entered by two threads at once.
        return keys.copy().run(_traced, work, arg, entity)

    return run


def _recorder() -> Any:
    """The X-Ray SDK's recorder behind the Tracer (None while tracing is off)."""
    traced = tracer()
    return None if traced.disabled else traced.provider


def _trace_entity() -> Any:
    recorder = _recorder()
    return None if recorder is None else recorder.get_trace_entity()


def _traced(work: Callable[[Arg], Out], arg: Arg, entity: Any) -> Out:
    recorder = _recorder()
    if entity is None or recorder is None:
        return work(arg)
    recorder.set_trace_entity(entity)
    try:
        return work(arg)
    finally:
        recorder.clear_trace_entities()


def count(name: str, value: float = 1) -> None:
    """Add to an EMF metric of this invocation (Deliveries, GoneConnections, ...)."""
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
