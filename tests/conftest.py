"""Shared fixtures: moto-backed AWS, a controllable clock, and seeded accounts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "lib"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# Before anything builds a client: fake credentials, one region, test settings.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "TABLE_NAME": "agent-channel-test",
        "IDEMPOTENCY_TABLE_NAME": "agent-channel-test-idempotency",
        "SCHEDULE_GROUP_NAME": "agent-channel-test",
        "SCHEDULER_ROLE_ARN": "arn:aws:iam::123456789012:role/agent-channel-scheduler",
        "CANCEL_OFFLINE_FUNCTION_ARN": (
            "arn:aws:lambda:us-east-1:123456789012:function:agent-channel-cancel-offline"
        ),
        "GRACE_DLQ_ARN": "arn:aws:sqs:us-east-1:123456789012:agent-channel-grace-dlq",
        "EVENT_BUS_NAME": "agent-channel-test",
        "CALLBACK_URL": "https://example.execute-api.us-east-1.amazonaws.com/test",
        "POWERTOOLS_METRICS_NAMESPACE": "AgentChannelTest",
        "POWERTOOLS_SERVICE_NAME": "agent-channel",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }
)
for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
    os.environ.pop(name, None)

import moto  # noqa: E402  (moto must hook botocore before any client exists)

from agent_channel_dev.local import moto_costs  # noqa: E402

assert moto  # imported for its side effect

# The local stack's moto (same answers, cheaper) from the first test on, not only
# once a test has started its server, which installs it for the whole process:
# every test, in any order and on any worker, runs against the same moto.
moto_costs.install()

pytest_plugins = ["tests.support.fixtures"]
