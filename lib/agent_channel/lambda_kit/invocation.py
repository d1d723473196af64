"""What every Lambda handler of the stack is wrapped in: its own log context,
its metrics flushed, its trace.

Powertools' ``inject_lambda_context`` is not used: it writes the Lambda context
into the Logger's process-wide keys, so two invocations running at once in one
process (the local stack runs every function in one process, on worker threads)
stamp each other's lines with the wrong function name and request id. Here the
context goes into context-local keys instead (``observability.start_invocation``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from agent_channel.observability import metrics, start_invocation, tracer

Result = TypeVar("Result")
Handler = Callable[[Any, Any], Result]


def lambda_handler(handler: Handler[Result]) -> Handler[Result]:
    """Wrap a Lambda handler: per-invocation log keys, EMF flush, X-Ray segment."""
    # No response in the trace: issue_token's answer carries a token in clear.
    traced = tracer().capture_lambda_handler(handler, capture_response=False)
    flushed = metrics.log_metrics(traced)

    @functools.wraps(handler)
    def invoke(event: Any, context: Any) -> Result:
        start_invocation(context)
        result: Result = flushed(event, context)
        return result

    return invoke
