"""One Logger and one Metrics for the process, shared by every module.

Handlers bind the connection, agent and request ids with ``bind_ids`` so that
every line a request logs carries them. Nothing secret is ever a key here.
"""

from __future__ import annotations

import os
import warnings

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

# Powertools would read these variables itself, but an explicit argument wins
# over them; so read them here and keep the project's names as the defaults.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "agent-channel")
logger = Logger(service=SERVICE)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "AgentChannel"), service=SERVICE
)


# Most invocations (a heartbeat that refreshes, a disconnect with a sibling left)
# have nothing to count; Powertools warns on every such flush, which is noise.
warnings.filterwarnings("ignore", message="No application metrics to publish")


def bind_ids(
    *, connection_id: str | None = None, agent_id: int | None = None, request_id: str | None = None
) -> None:
    """Stamp every later log line of this invocation with these ids.

    Thread-local keys: the local stack runs many invocations at once in one
    process, and one request's ids must never stamp another's lines.
    """
    keys = {
        "connection_id": connection_id,
        "agent_id": agent_id,
        "request_id": request_id,
    }
    logger.thread_safe_append_keys(**{k: v for k, v in keys.items() if v is not None})


def clear_ids() -> None:
    logger.thread_safe_clear_keys()


def count(name: str, value: float = 1) -> None:
    """Add to an EMF metric of this invocation (Deliveries, GoneConnections, ...)."""
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
