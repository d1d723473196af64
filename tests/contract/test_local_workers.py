"""Functions run as Lambda runs them: each in a process of its own with exactly its
template environment, a Timeout that stops the handler, a warm environment kept
between invocations and reset after a timeout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from agent_channel_dev.local import sam_app
from agent_channel_dev.local.workers import (
    FunctionError,
    Functions,
    FunctionTimedOut,
    lambda_environment,
)

TEMPLATE = """
Globals:
  Function: {Runtime: python3.12, Handler: app.handler, Timeout: 1}
Resources:
  Api: {Type: AWS::ApiGatewayV2::Api, Properties: {ProtocolType: WEBSOCKET}}
  Configured:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: fn/, Environment: {Variables: {GREETING: hello}}}
  Unconfigured:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: fn/}
"""

HANDLER = """
import os, time
GREETING = os.environ["GREETING"]  # read at import, as Lambda code does
STARTED = time.time()

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"greeting": GREETING, "pid": os.getpid(), "started": STARTED,
            "remaining": context.get_remaining_time_in_millis(),
            "leaked": "PYTEST_CURRENT_TEST" in os.environ or "VIRTUAL_ENV" in os.environ}
"""


@pytest.fixture
def app(tmp_path: Path) -> sam_app.SamApp:
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "app.py").write_text(HANDLER, encoding="utf-8")
    (tmp_path / "template.yaml").write_text(TEMPLATE, encoding="utf-8")
    return sam_app.load(tmp_path / "template.yaml", stack_name="w")


def functions(app: sam_app.SamApp, provisioned: dict[str, int] | None = None) -> Functions:
    return Functions(
        app,
        environment=lambda spec: lambda_environment(
            spec, endpoint_url="http://127.0.0.1:9", access_key=("k", "s")
        ),
        local_origin="http://127.0.0.1:9",
        max_concurrency=3,
        provisioned=provisioned,
    )


def test_a_variable_missing_from_the_template_fails_as_on_aws(app: sam_app.SamApp) -> None:
    pool = functions(app)

    async def run() -> None:
        with pytest.raises(FunctionError) as failed:
            await pool.invoke("Unconfigured", {})
        assert failed.value.error_type == "Runtime.ImportModuleError"
        assert "GREETING" in str(failed.value)
        answer = await pool.invoke("Configured", {})
        assert answer["greeting"] == "hello"
        assert answer["leaked"] is False  # nothing of the parent's environment
        assert 0 < answer["remaining"] <= 1000

    try:
        asyncio.run(run())
    finally:
        pool.close()


def test_warm_between_invocations_killed_and_reset_after_its_timeout(app: sam_app.SamApp) -> None:
    pool = functions(app)

    async def run() -> None:
        first = await pool.invoke("Configured", {})
        second = await pool.invoke("Configured", {})
        assert second["pid"] == first["pid"]  # warm: the same environment
        with pytest.raises(FunctionTimedOut) as timed_out:
            await pool.invoke("Configured", {"sleep": 5})
        assert timed_out.value.error_type == "Sandbox.Timedout"
        after = await pool.invoke("Configured", {})
        assert after["pid"] != first["pid"]  # the timed out environment is gone
        assert after["started"] > first["started"]

    try:
        asyncio.run(run())
    finally:
        pool.close()


def test_provisioned_workers_are_started_before_and_serve_concurrent_invocations(
    tmp_path: Path,
) -> None:
    """Provisioned concurrency: warming starts that many workers of the function
    (capped at its concurrency), so concurrent invocations find each one warm; a
    function not named gets one. A name that is no function is refused."""
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "app.py").write_text(HANDLER, encoding="utf-8")
    configured = "    Properties: {CodeUri: fn/, Environment: {Variables: {GREETING: hello}}}"
    template = TEMPLATE.replace("    Properties: {CodeUri: fn/}", configured)
    (tmp_path / "template.yaml").write_text(template, encoding="utf-8")
    app = sam_app.load(tmp_path / "template.yaml", stack_name="w")
    with pytest.raises(ValueError, match="Missing"):
        functions(app, {"Missing": 2})
    pool = functions(app, {"Configured": 5})

    async def at_once(name: str, count: int) -> list[dict[str, Any]]:
        calls = (pool.invoke(name, {"sleep": 0.3}) for _ in range(count))
        return list(await asyncio.gather(*calls))

    async def run() -> None:
        await pool.warm_all()
        warmed = time.time()
        provisioned = await at_once("Configured", 3)
        assert len({answer["pid"] for answer in provisioned}) == 3  # three at once
        assert all(answer["started"] < warmed for answer in provisioned)  # none cold
        other = await at_once("Unconfigured", 2)
        assert sorted(answer["started"] < warmed for answer in other) == [False, True]

    try:
        asyncio.run(run())
    finally:
        pool.close()
