"""One log schema: every line of an invocation carries its own function name and
request id, also while other functions' invocations run at once in the same
process (as the local stack runs them)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from agent_channel.lambda_kit.invocation import lambda_handler
from agent_channel.observability import INVOCATION_KEYS, logger
from agent_channel_dev.instruments.lambda_context import LocalContext
from agent_channel_dev.local.apigw_events import route_event
from tests.support.fixtures import World
from tests.support.gateway import ROUTE_FUNCTIONS, Gateway, function
from tests.support.interleave import random_chooser, run_once
from tests.support.logs import captured_log_lines

Decorator = Callable[[Callable[[Any, Any], Any]], Callable[[Any, Any], Any]]


def _interleaved_pair(decorate: Decorator) -> list[dict[str, Any]]:
    """Invocation "first" logs, then "second" (another function) runs entirely,
    then "first" logs again: the moment a process-wide context would be overwritten."""
    second_done = threading.Event()

    @decorate
    def first(event: Any, context: Any) -> None:
        logger.info("before")
        threading.Thread(target=run_second).start()
        assert second_done.wait(10)
        logger.info("after")

    @decorate
    def second(event: Any, context: Any) -> None:
        logger.info("meanwhile")

    def run_second() -> None:
        second({}, LocalContext(function_name="second", aws_request_id="req-second"))
        second_done.set()

    with captured_log_lines() as lines:
        first({}, LocalContext(function_name="first", aws_request_id="req-first"))
    return lines


def test_each_line_carries_its_own_invocation_while_another_runs() -> None:
    lines = _interleaved_pair(lambda_handler)
    by_message = {line["message"]: line for line in lines}
    assert set(by_message) == {"before", "meanwhile", "after"}
    for message, name in (("before", "first"), ("meanwhile", "second"), ("after", "first")):
        assert by_message[message]["function_name"] == name
        assert by_message[message]["function_request_id"] == f"req-{name}"
        assert by_message[message]["cold_start"] in (True, False)


def test_the_process_wide_context_of_inject_lambda_context_is_what_leaked() -> None:
    # The cause, kept as a test: Powertools' decorator writes the context into the
    # formatter's process-wide keys, so the first invocation's last line is stamped
    # with the second's function name and request id.
    logger.thread_safe_clear_keys()
    try:
        lines = _interleaved_pair(logger.inject_lambda_context)
    finally:
        logger.remove_keys(INVOCATION_KEYS)
    after = next(line for line in lines if line["message"] == "after")
    assert after["function_name"] == "second"
    assert after["function_request_id"] == "req-second"


@pytest.mark.parametrize("seed", range(12))
def test_route_functions_running_at_once_keep_their_own_context(world: World, seed: int) -> None:
    gateway = Gateway()
    query = {"agent_id": str(world.agent_id)}
    one = gateway.connect({**query, "session_id": "s1"}, token=world.owner_token)
    two = gateway.connect({**query, "session_id": "s2"}, token=world.owner_token)
    invocations: dict[str, tuple[str, str | None]] = {}

    def actor(folder: str, route: str, connection_id: str, body: str | None = None) -> Any:
        context = LocalContext(function_name=folder)
        invocations[context.aws_request_id] = (folder, connection_id)
        event = route_event(
            route, connection_id, authorizer=gateway.contexts[connection_id], body=body
        )
        return lambda: function(folder).handler(event, context)

    def backend() -> Any:
        # An unknown agent: refused, and the refusal is logged.

        context = LocalContext(function_name="backend")
        invocations[context.aws_request_id] = ("backend", None)
        return lambda: function("backend").handler(
            {"op": "presence", "agent_id": world.agent_id + 1000}, context
        )

    actors = [
        ("heartbeat", actor("heartbeat", "heartbeat", one.connection_id, '{"action":"heartbeat"}')),
        ("disconnect", actor(ROUTE_FUNCTIONS["$disconnect"], "$disconnect", two.connection_id)),
        ("backend", backend()),
    ]
    with captured_log_lines() as lines:
        run_once(actors, random_chooser(seed))
    assert {line["function_name"] for line in lines} >= {"disconnect", "backend"}
    for line in lines:
        folder, connection_id = invocations[line["function_request_id"]]
        assert line["function_name"] == folder, line
        if connection_id is not None:
            assert line["connection_id"] == connection_id, line
        else:
            assert "connection_id" not in line, line
