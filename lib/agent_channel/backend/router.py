"""Backend commands: one JSON object in, one JSON object out, for backends that are
not Python (the backend Lambda function) and for the command line.

    {"op": "dispatch", "task_id": 7}
    -> {"ok": true, "op": "dispatch", ...}
    -> {"ok": false, "error": "agent_not_routable", "message": "..."}

``execute`` never raises: a bad command, a refusal of the rules and an
unexpected failure all come back as ``{"ok": false, ...}``.

Adding an op: write a function ``(args: Args, context: CommandContext) -> dict``
that reads its fields through ``args`` (which validates them) and decorate it
with ``@ops.op("name", "what it does")`` of its module's ``OpSet``; the function's
registry module (``delivery_commands`` or ``admin_commands``) serves that set.
Raise ``CommandError`` (or any exception listed in ``EXPECTED_ERRORS``) to
refuse; its ``code`` reaches the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from agent_channel import client_json
from agent_channel.backend import idempotency
from agent_channel.errors import Refusal
from agent_channel.observability import logger
from agent_channel.storage.schema import MAX_ID

if TYPE_CHECKING:
    from types import ModuleType

    from mypy_boto3_apigatewaymanagementapi import ApiGatewayManagementApiClient

    from agent_channel.delivery.decision_store import DecisionStore
    from agent_channel.delivery.fanout import ConnectionPoster, GoneHandler
    from agent_channel.delivery.history import History
    from agent_channel.grace.scheduler import GraceScheduler
    from agent_channel.presence.store import PresenceStore
    from agent_channel.tasks.store import TaskStore


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

    def fields(self) -> dict[str, Any]:
        """The command as given (read-only use: it is the caller's)."""
        return dict(self._raw)

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


def _wiring() -> ModuleType:
    # Imported on first use: the command line's ops never build AWS clients.
    from agent_channel.lambda_kit import wiring

    return wiring


@dataclass
class CommandContext:
    """What ops may need from the process: the stores, the @connections client and
    the Gone handler. Each is built on first use, so an op that does not post never
    builds a management client, and each defaults to the process's wiring."""

    management_factory: Callable[[], ConnectionPoster] = field(
        default=lambda: _wiring().management_api()
    )
    gone_handler_factory: Callable[[], GoneHandler] = field(
        default=lambda: _wiring().gone_handler()
    )
    tasks_factory: Callable[[], TaskStore] = field(default=lambda: _wiring().task_store())
    decisions_factory: Callable[[], DecisionStore] = field(
        default=lambda: _wiring().decision_store()
    )
    presence_factory: Callable[[], PresenceStore] = field(
        default=lambda: _wiring().presence_store()
    )
    closer_factory: Callable[[], ApiGatewayManagementApiClient] = field(
        default=lambda: _wiring().connections_admin()
    )
    scheduler_factory: Callable[[], GraceScheduler] = field(
        default=lambda: _wiring().grace_scheduler()
    )
    history_factory: Callable[[], History] = field(default=lambda: _wiring().history())

    def management(self) -> ConnectionPoster:
        return self.management_factory()

    def on_gone(self) -> GoneHandler:
        return self.gone_handler_factory()

    def tasks(self) -> TaskStore:
        return self.tasks_factory()

    def decisions(self) -> DecisionStore:
        return self.decisions_factory()

    def presence(self) -> PresenceStore:
        return self.presence_factory()

    def closer(self) -> ApiGatewayManagementApiClient:
        """The @connections client that closes sockets (DELETE)."""
        return self.closer_factory()

    def scheduler(self) -> GraceScheduler:
        return self.scheduler_factory()

    def history(self) -> History:
        return self.history_factory()


Handler = Callable[[Args, CommandContext], dict[str, Any]]


class Op(NamedTuple):
    name: str
    summary: str
    handler: Handler
    idempotency: str = "key"
    """"key": a mutating op; with an idempotency key it runs at most once.
    "read": changes nothing, so a key changes nothing either (it is ignored).
    "never": mutating, but its answer is a secret that is never stored anywhere,
    so it cannot be replayed (issue_token); a key is refused."""


class OpSet:
    """The ops one module defines; a Registry serves one or more of them."""

    def __init__(self) -> None:
        self.ops: dict[str, Op] = {}

    def op(
        self, name: str, summary: str, *, idempotency: str = "key"
    ) -> Callable[[Handler], Handler]:
        """Register a handler as ``{"op": name}``."""

        def register(handler: Handler) -> Handler:
            if name in self.ops:
                raise ValueError(f"op {name!r} is already registered")
            self.ops[name] = Op(name, summary, handler, idempotency)
            return handler

        return register


class Registry:
    """The commands one Lambda function serves (its ops, and nothing else: a
    function that may dispatch cannot mint tokens, because it has no such op and
    no permission for it)."""

    def __init__(self, name: str, *sets: OpSet) -> None:
        self.name = name
        self.ops: dict[str, Op] = {}
        for found in sets:
            for op_name, entry in found.ops.items():
                if op_name in self.ops:
                    raise ValueError(f"op {op_name!r} is already registered in {name}")
                self.ops[op_name] = entry

    def parse_command(self, command: Any) -> tuple[Op, Args]:
        """The op and its fields; raises CommandError for anything else."""
        if isinstance(command, str | bytes):
            # A caller that sent a JSON document as a string (some SDKs do).
            try:
                command = client_json.loads(command)
            except ValueError:
                raise CommandError("invalid_command", "the command is not JSON") from None
        if not isinstance(command, dict):
            raise CommandError("invalid_command", "the command must be a JSON object")
        name = command.get("op")
        if not isinstance(name, str) or not name:
            raise CommandError("invalid_command", "'op' is required")
        found = self.ops.get(name)
        if found is None:
            raise CommandError(
                "unknown_op", f"unknown op {name!r}; known: {', '.join(sorted(self.ops))}"
            )
        return found, Args(command)

    def execute(self, command: Any, context: CommandContext | None = None) -> dict[str, Any]:
        """Run one command (at most once per idempotency key). Never raises."""
        name = command.get("op") if isinstance(command, dict) else None
        try:
            found, args = self.parse_command(command)
            key = args.optional_string(idempotency.KEY_FIELD, max_length=idempotency.MAX_KEY_LENGTH)
            if key is None or found.idempotency == "read":
                return self._answer(found, args, context)
            if found.idempotency == "never":
                raise CommandError(
                    "idempotency_not_supported",
                    f"{found.name} takes no idempotency key: its answer is shown once and "
                    "never stored",
                )
            fields = {k: v for k, v in args.fields().items() if k != idempotency.KEY_FIELD}
            return idempotency.run_once(
                self.name, key, fields, lambda: self._answer(found, args, context)
            )
        except EXPECTED_ERRORS as error:
            return _refused(name, error)
        except Exception:
            logger.exception("command failed", extra={"op": name})
            return {"ok": False, "error": "internal_error", "message": "internal error"}

    @staticmethod
    def _answer(found: Op, args: Args, context: CommandContext | None) -> dict[str, Any]:
        """The op's answer; a refusal is an answer. Raises only on unexpected failure."""
        try:
            result = found.handler(args, context or CommandContext())
        except EXPECTED_ERRORS as error:
            return _refused(found.name, error)
        return {"ok": True, "op": found.name, **result}


def _refused(name: object, error: Exception) -> dict[str, Any]:
    code = str(getattr(error, "code", "refused"))
    logger.info("command refused", extra={"op": name, "code": code})
    # A refusal may say more (a reply refusal gives the task's status).
    details = getattr(error, "details", None) or {}
    return {**details, "ok": False, "error": code, "message": str(error)}
