"""The admin ops of the backend: accounts and tokens (users, agents, topics,
bearer tokens). Served by the admin function only (``admin_commands``), under
its own invoke permission: a backend that may dispatch cannot mint tokens.

A token is returned only by ``issue_token``, the one moment it exists in clear.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_channel.backend.router import Args, CommandContext, CommandError, OpSet
from agent_channel.config import CHANNEL_AGENT_MODEL
from agent_channel.identity import accounts

if TYPE_CHECKING:
    from mypy_boto3_apigatewaymanagementapi import ApiGatewayManagementApiClient

MAX_NAME = 200

ops = OpSet()


def _not_found(what: str) -> CommandError:
    return CommandError("not_found", f"no {what}")


@ops.op("create_user", "create a human user")
def _create_user(args: Args, context: CommandContext) -> dict[str, Any]:
    user = accounts.create_user(args.string("name", max_length=MAX_NAME))
    return {"user_id": user.user_id, "name": user.name}


@ops.op("issue_token", "mint a bearer token for a user (shown once)", idempotency="never")
def _issue_token(args: Args, context: CommandContext) -> dict[str, Any]:
    user_id = args.integer("user_id")
    try:
        token = accounts.issue_token(
            user_id, args.optional_string("label", max_length=MAX_NAME) or ""
        )
    except ValueError as error:
        raise _not_found(f"user {user_id}") from error
    return {"user_id": user_id, "token": token}


def connection_closer() -> ApiGatewayManagementApiClient:
    """``@connections`` DELETE: boto3's client (the fan-out poster only posts)."""
    from agent_channel.lambda_kit import wiring

    return wiring.connections_admin()


@ops.op("revoke_token", "forget a bearer token and close every socket opened with it")
def _revoke_token(args: Args, context: CommandContext) -> dict[str, Any]:
    from agent_channel.delivery.closing import close_connections

    token = args.string("token", max_length=512)
    revoked = accounts.revoke_token(token)
    # Listed after the delete, consistently: a connect or restore that commits
    # later fails its check on the token, so no socket opened with it is missed.
    # An open socket keeps no access of its own: it is closed here, and its
    # $disconnect releases whatever it held.
    closed, failed = close_connections(
        accounts.sockets_opened_with(token), client=connection_closer()
    )
    return {"revoked": revoked, "closed": len(closed), "not_closed": len(failed)}


@ops.op("create_agent", "create an AI agent owned by a human (model claude-code: a channel agent)")
def _create_agent(args: Args, context: CommandContext) -> dict[str, Any]:
    owner_id = args.integer("owner_id")
    model = args.optional_string("model", max_length=MAX_NAME) or CHANNEL_AGENT_MODEL
    try:
        agent = accounts.create_agent(args.string("name", max_length=MAX_NAME), owner_id, model)
    except ValueError as error:
        raise CommandError("invalid_owner", str(error)) from error
    return {
        "agent_id": agent.user_id,
        "name": agent.name,
        "owner_id": owner_id,
        "model": model,
        "channel_agent": model == CHANNEL_AGENT_MODEL,
    }


@ops.op("create_topic", "create a topic (session_id makes it private to one session of its agent)")
def _create_topic(args: Args, context: CommandContext) -> dict[str, Any]:
    owner_id = args.integer("owner_id")
    if accounts.get_user(owner_id) is None:
        raise _not_found(f"user {owner_id}")
    primary_agent_id = args.optional_integer("primary_agent_id")
    session_id = args.optional_string("session_id", max_length=128)
    if session_id and primary_agent_id is None:
        raise CommandError("invalid_command", "'session_id' needs 'primary_agent_id'")
    topic = accounts.create_topic(
        owner_id,
        args.optional_string("title", max_length=MAX_NAME) or "",
        primary_agent_id=primary_agent_id,
        session_id=session_id,
    )
    return {
        "topic_id": topic.topic_id,
        "owner_id": owner_id,
        "primary_agent_id": primary_agent_id,
        "session_id": session_id,
    }
