"""Backend commands: one JSON object in, one JSON object out, for backends that are
not Python (the backend Lambda function) and for the command line.

    {"op": "dispatch", "task_id": 7}
    -> {"ok": true, "op": "dispatch", ...}
    -> {"ok": false, "error": "agent_not_routable", "message": "..."}

``execute`` never raises: a bad command, a refusal of the rules and an
unexpected failure all come back as ``{"ok": false, ...}``.

Adding an op: write a function ``(args: Args, context: CommandContext) -> dict``
that reads its fields through ``args`` (which validates them) and decorate it
with ``@op("name", "what it does")``. Raise ``CommandError`` (or any exception
listed in ``EXPECTED_ERRORS``) to refuse; its ``code`` reaches the caller.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent_channel import decisions, dispatch, runtime
from agent_channel.broadcast import BroadcastResult, broadcast_to_stream
from agent_channel.errors import Refusal
from agent_channel.observability import logger
from agent_channel.presence_types import agent_stream, topic_stream

if TYPE_CHECKING:
    from mypy_boto3_apigatewaymanagementapi import ApiGatewayManagementApiClient

MAX_ID = 10**18
"""Ids are positive integers below this (the authorizer accepts up to 18 digits)."""


class CommandError(Refusal):
    """A command refused before any rule ran: unknown op, missing or bad field."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


EXPECTED_ERRORS: tuple[type[Exception], ...] = (Refusal,)
"""Refusals the caller can act on: answered with their code, logged as info."""


def _missing(name: str) -> CommandError:
    return CommandError("invalid_command", f"'{name}' is required")


def _wrong(name: str, expected: str) -> CommandError:
    return CommandError("invalid_command", f"'{name}' must be {expected}")


class Args:
    """Typed, validated access to a command's fields."""

    def __init__(self, raw: Mapping[str, Any], prefix: str = "") -> None:
        self._raw = raw
        self._prefix = prefix

    def _name(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def has(self, name: str) -> bool:
        return self._raw.get(name) is not None

    def optional_integer(self, name: str) -> int | None:
        value = self._raw.get(name)
        if value is None:
            return None
        # bool is an int in Python, never in a command.
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < MAX_ID:
            raise _wrong(self._name(name), "a positive integer")
        return value

    def integer(self, name: str) -> int:
        value = self.optional_integer(name)
        if value is None:
            raise _missing(self._name(name))
        return value

    def optional_string(
        self, name: str, *, choices: tuple[str, ...] = (), max_length: int = 65536
    ) -> str | None:
        value = self._raw.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > max_length:
            raise _wrong(self._name(name), f"a string of at most {max_length} characters")
        if choices and value not in choices:
            raise _wrong(self._name(name), " or ".join(repr(choice) for choice in choices))
        return value

    def string(self, name: str, *, choices: tuple[str, ...] = (), max_length: int = 65536) -> str:
        value = self.optional_string(name, choices=choices, max_length=max_length)
        if value is None:
            raise _missing(self._name(name))
        return value

    def flag(self, name: str) -> bool:
        """A boolean field, false when absent."""
        value = self._raw.get(name)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise _wrong(self._name(name), "true or false")
        return value

    def optional_object(self, name: str) -> Args | None:
        value = self._raw.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _wrong(self._name(name), "an object")
        return Args(value, prefix=f"{self._name(name)}.")

    def raw_object(self, name: str) -> dict[str, Any]:
        value = self._raw.get(name)
        if value is None:
            raise _missing(self._name(name))
        if not isinstance(value, dict):
            raise _wrong(self._name(name), "an object")
        return value


@dataclass
class CommandContext:
    """What ops may need from the process, built lazily so ops that do not post
    (the command line's) never build a management client."""

    management_factory: Callable[[], ApiGatewayManagementApiClient] = field(
        default=lambda: runtime.management_api()
    )

    def management(self) -> ApiGatewayManagementApiClient:
        return self.management_factory()


Handler = Callable[[Args, CommandContext], dict[str, Any]]


@dataclass(frozen=True)
class Op:
    name: str
    summary: str
    handler: Handler


OPS: dict[str, Op] = {}


def op(name: str, summary: str) -> Callable[[Handler], Handler]:
    """Register a handler as ``{"op": name}``."""

    def register(handler: Handler) -> Handler:
        if name in OPS:
            raise ValueError(f"op {name!r} is already registered")
        OPS[name] = Op(name, summary, handler)
        return handler

    return register


def parse_command(command: Any) -> tuple[Op, Args]:
    """The op and its fields; raises CommandError for anything else."""
    if isinstance(command, str | bytes):
        # A caller that sent a JSON document as a string (some SDKs do).
        try:
            command = json.loads(command)
        except ValueError:
            raise CommandError("invalid_command", "the command is not JSON") from None
    if not isinstance(command, dict):
        raise CommandError("invalid_command", "the command must be a JSON object")
    name = command.get("op")
    if not isinstance(name, str) or not name:
        raise CommandError("invalid_command", "'op' is required")
    found = OPS.get(name)
    if found is None:
        raise CommandError("unknown_op", f"unknown op {name!r}; known: {', '.join(sorted(OPS))}")
    return found, Args(command)


def execute(command: Any, context: CommandContext | None = None) -> dict[str, Any]:
    """Run one command. Never raises."""
    name = command.get("op") if isinstance(command, dict) else None
    try:
        found, args = parse_command(command)
        result = found.handler(args, context or CommandContext())
    except EXPECTED_ERRORS as error:
        code = str(getattr(error, "code", "refused"))
        logger.info("command refused", extra={"op": name, "code": code})
        return {"ok": False, "error": code, "message": str(error)}
    except Exception:
        logger.exception("command failed", extra={"op": name})
        return {"ok": False, "error": "internal_error", "message": "internal error"}
    return {"ok": True, "op": found.name, **result}


def _delivery(result: BroadcastResult) -> dict[str, Any]:
    return result.as_dict()


# The delivery ops.


@op("dispatch", "hand a running task to its channel agent (running -> delegated)")
def _dispatch(args: Args, context: CommandContext) -> dict[str, Any]:
    task_id = args.integer("task_id")
    pending_tool_call = args.optional_string("pending_tool_call", max_length=1024)
    comment = _comment_patch(args.optional_object("comment"))
    done = dispatch.dispatch(
        task_id,
        comment_fields=comment,
        pending_tool_call=pending_tool_call,
        client=context.management(),
    )
    return {
        "task_id": task_id,
        "status": done.task.status,
        "dispatched": done.message,
        "agent_stream": _delivery(done.to_agent),
        "topic_stream": _delivery(done.to_topic),
    }


def _comment_patch(comment: Args | None) -> dict[str, Any] | None:
    """The comment fields the backend gave, each validated; the rest come from the task."""
    if comment is None:
        return None
    patch: dict[str, Any] = {}
    for name in ("id", "author_id", "topic_id", "creative_id"):
        if comment.has(name):
            patch[name] = comment.optional_integer(name)
    for name in ("content", "author_name", "created_at"):
        if comment.has(name):
            patch[name] = comment.optional_string(name)
    return patch


@op("decide_permission", "record a permission decision (first wins) and push it to the agent")
def _decide(args: Args, context: CommandContext) -> dict[str, Any]:
    decided = decisions.decide(
        agent_id=args.integer("agent_id"),
        request_id=args.string("request_id", max_length=decisions.MAX_REQUEST_ID_LENGTH),
        behavior=args.string("behavior", choices=tuple(b.value for b in decisions.Behavior)),
        decided_by=args.integer("decided_by"),
        client=context.management(),
    )
    record = decided.record
    return {
        "agent_id": int(record.agent_id),
        "request_id": record.request_id,
        "behavior": record.behavior,
        "decided_at": float(record.decided_at),
        "decided_by": int(record.decided_by),
        **_delivery(decided.broadcast),
    }


@op("claim_reply", "complete a delegated task with its agent's reply (at most once)")
def _claim_reply(args: Args, context: CommandContext) -> dict[str, Any]:
    task = dispatch.claim_reply(args.integer("task_id"), agent_id=args.optional_integer("agent_id"))
    return {"task_id": int(task.task_id), "status": task.status}


@op("broadcast", "send a JSON object to an agent's or a topic's stream")
def _broadcast(args: Args, context: CommandContext) -> dict[str, Any]:
    agent_id, topic_id = args.optional_integer("agent_id"), args.optional_integer("topic_id")
    if (agent_id is None) == (topic_id is None):
        raise CommandError("invalid_command", "give exactly one of 'agent_id' and 'topic_id'")
    stream = agent_stream(agent_id) if agent_id is not None else topic_stream(topic_id or 0)
    result = broadcast_to_stream(stream, args.raw_object("payload"), client=context.management())
    return _delivery(result)


# The operator's ops (accounts, tasks, presence) register themselves on import;
# imported last, because they use the decorator defined above.
from agent_channel import operator_commands  # noqa: E402, F401
