"""Who is connecting, and to what: the $connect authorizer's rules.

One consistent BatchGetItem reads the token's digest and the target (agent or
topic) together, so authorizing costs a single round trip.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

from agent_channel.identity.accounts import topic_from, user_from
from agent_channel.identity.caller import Caller, Target
from agent_channel.identity.tokens import token_digest
from agent_channel.storage import schema
from agent_channel.storage.records import Record, TokenRecord, TopicRecord, UserRecord

_ID = re.compile(r"[1-9][0-9]{0,17}")
_SESSION_ID = re.compile(r"[\x21-\x7e]{1,128}")
_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")


class BadConnectRequest(ValueError):
    """The connect parameters are missing or malformed (answered with 400)."""


class ConnectRequest(NamedTuple):
    agent_id: int | None
    topic_id: int | None
    session_id: str


def _parse_id(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not _ID.fullmatch(raw):
        raise BadConnectRequest(f"{name} must be a positive integer")
    return int(raw)


def parse_connect_query(query: dict[str, str]) -> ConnectRequest:
    agent_id = _parse_id(query, "agent_id")
    topic_id = _parse_id(query, "topic_id")
    if agent_id is None and topic_id is None:
        raise BadConnectRequest("agent_id or topic_id is required")
    if agent_id is not None and topic_id is not None:
        raise BadConnectRequest("give agent_id or topic_id, not both")
    session_id = query.get("session_id", "")
    if session_id and not _SESSION_ID.fullmatch(session_id):
        raise BadConnectRequest("session_id must be 1-128 printable characters")
    if session_id and agent_id is None:
        raise BadConnectRequest("session_id belongs with agent_id")
    return ConnectRequest(agent_id, topic_id, session_id)


class TokenConflict(ValueError):
    """The header and the query carry different tokens."""


def bearer_token(headers: dict[str, str], query: dict[str, str]) -> str | None:
    """The token from ``Authorization: Bearer T`` or the ``token`` query parameter.

    Many WebSocket clients cannot set headers, hence the query. When both are
    present they must agree: a mismatch is a sign of a confused or forged client.
    """
    header_token: str | None = None
    authorization = headers.get("authorization", "")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise TokenConflict("Authorization must be 'Bearer <token>'")
        header_token = value.strip()
    query_token = query.get("token") or None
    if header_token and query_token and header_token != query_token:
        raise TokenConflict("header and query tokens differ")
    token = header_token or query_token
    if token is not None and not _TOKEN.fullmatch(token):
        raise TokenConflict("malformed token")
    return token


class AuthVerdict(enum.StrEnum):
    ALLOW = "allow"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"


class Authorization(NamedTuple):
    verdict: AuthVerdict
    caller: Caller | None = None


def authorize(headers: dict[str, str], query: dict[str, str]) -> Authorization:
    """401 without a valid token; 403 for a target that is not the caller's (the
    same answer whether or not it exists); otherwise allow, with the caller.

    Malformed or missing ids are allowed through with target ``none``: the
    $connect function answers them with 400, which an authorizer cannot.
    """
    try:
        token = bearer_token(headers, query)
    except TokenConflict:
        return Authorization(AuthVerdict.UNAUTHORIZED)
    if token is None:
        return Authorization(AuthVerdict.UNAUTHORIZED)
    try:
        request: ConnectRequest | None = parse_connect_query(query)
    except BadConnectRequest:
        request = None

    digest = token_digest(token)
    keys: list[schema.Key] = [schema.token_key(digest)]
    if request is not None and request.agent_id is not None:
        keys.append(schema.user_key(request.agent_id))
    elif request is not None and request.topic_id is not None:
        keys.append(schema.topic_key(request.topic_id))
    records = {(r.pk, r.sk): r for r in Record.batch_get(keys, consistent_read=True)}

    token_record = records.get(keys[0])
    if not isinstance(token_record, TokenRecord):
        return Authorization(AuthVerdict.UNAUTHORIZED)
    user_id = int(token_record.user_id)
    if request is None:
        return Authorization(AuthVerdict.ALLOW, Caller(user_id, Target.NONE, token_digest=digest))
    target = records.get(keys[1]) if len(keys) > 1 else None

    if request.agent_id is not None:
        agent = user_from(target) if isinstance(target, UserRecord) else None
        if agent is None or agent.created_by != user_id or agent.unregistered:
            # An unregistered agent is closed for good: the same 403 as a foreign one.
            return Authorization(AuthVerdict.FORBIDDEN)
        kind = Target.CHANNEL_AGENT if agent.is_channel_agent else Target.AGENT
        routed = isinstance(target, UserRecord) and target.routing_expression == "true"
        return Authorization(
            AuthVerdict.ALLOW,
            Caller(
                user_id,
                kind,
                agent_id=request.agent_id,
                session_id=request.session_id,
                siblings=kind is Target.CHANNEL_AGENT and routed,
                token_digest=digest,
                grace_scheduled=bool(isinstance(target, UserRecord) and target.grace_scheduled),
            ),
        )

    if not isinstance(target, TopicRecord) or not topic_from(target).readable_by(user_id):
        return Authorization(AuthVerdict.FORBIDDEN)
    return Authorization(
        AuthVerdict.ALLOW,
        Caller(user_id, Target.TOPIC, topic_id=request.topic_id, token_digest=digest),
    )
