"""The backend's delivery entry point, for backends that are not Python: invoke
this function with a JSON command ({"op": "dispatch" | "decide_permission" |
"claim_reply" | "broadcast" | "create_task" | "list_tasks" | "presence", ...}) and
get {"ok": true, ...} or {"ok": false, "error": code, "message": ...}. It never
raises to the caller. Accounts and tokens are the admin function's
(functions/admin), under another invoke permission."""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel.backend import idempotency
from agent_channel.backend.delivery_commands import CommandContext, execute
from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.invocation import lambda_handler

management = wiring.management_api()
wiring.dynamodb()
context_for_commands = CommandContext(
    management_factory=lambda: management,
    gone_handler_factory=wiring.gone_handler,
    tasks_factory=wiring.task_store,
    decisions_factory=wiring.decision_store,
    presence_factory=wiring.presence_store,
    history_factory=wiring.history,
)


@lambda_handler
def handler(event: Any, context: Any) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    return execute(event, context_for_commands)


cold_start.ready()
