"""The admin entry point: accounts and tokens. Invoke this function with a JSON
command ({"op": "create_user" | "create_agent" | "create_topic" | "issue_token" |
"revoke_token", ...}) and get {"ok": true, ...} or {"ok": false, "error": code,
"message": ...}. It never raises to the caller.

Apart from the delivery function (functions/backend) so that the right to
dispatch and the right to mint tokens are granted separately: each function has
its own invoke permission and its own IAM policy.
"""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel.backend import idempotency
from agent_channel.backend.admin_commands import CommandContext, execute
from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.invocation import lambda_handler

context_for_commands = CommandContext()
wiring.dynamodb()


@lambda_handler
def handler(event: Any, context: Any) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    return execute(event, context_for_commands)


cold_start.ready()
