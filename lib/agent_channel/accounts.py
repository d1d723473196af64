"""Users, agents, tokens and topics: the directory the channel authorizes against."""

from __future__ import annotations

from collections.abc import Iterable

from pynamodb.exceptions import DeleteError

from agent_channel import clock
from agent_channel.config import CHANNEL_AGENT_MODEL
from agent_channel.models import CounterRecord, TokenRecord, TopicRecord, UserRecord, user_pk
from agent_channel.secrets import mint_bearer_token, token_digest


def next_id(name: str) -> int:
    """An increasing integer id, from an atomic counter item."""
    counter = CounterRecord(f"COUNTER#{name}", "COUNTER")
    counter.update(actions=[CounterRecord.value.add(1)])
    return int(counter.value)


def create_user(name: str) -> UserRecord:
    user_id = next_id("user")
    user = UserRecord(user_pk(user_id), "USER", user_id=user_id, name=name, created_at=clock.now())
    user.save(condition=UserRecord.pk.does_not_exist())
    return user


def create_agent(name: str, owner_id: int, model: str = CHANNEL_AGENT_MODEL) -> UserRecord:
    """An AI agent owned by ``owner_id``; ``model`` claude-code makes it a channel agent."""
    owner = get_user(owner_id)
    if owner is None or owner.is_agent:
        raise ValueError(f"user {owner_id} is not a human user")
    agent_id = next_id("user")
    agent = UserRecord(
        user_pk(agent_id),
        "USER",
        user_id=agent_id,
        name=name,
        created_by=owner_id,
        model=model,
        created_at=clock.now(),
    )
    agent.save(condition=UserRecord.pk.does_not_exist())
    return agent


def get_user(user_id: int) -> UserRecord | None:
    try:
        record = UserRecord.get(user_pk(user_id), "USER", consistent_read=True)
    except UserRecord.DoesNotExist:
        return None
    return record


def issue_token(user_id: int, label: str = "") -> str:
    """Mint a bearer token for a user; only its digest is stored. Shown once."""
    if get_user(user_id) is None:
        raise ValueError(f"no user {user_id}")
    token = mint_bearer_token()
    TokenRecord(
        f"TOKEN#{token_digest(token)}",
        "TOKEN",
        user_id=user_id,
        label=label,
        created_at=clock.now(),
    ).save(condition=TokenRecord.pk.does_not_exist())
    return token


def revoke_token(token: str) -> bool:
    """Forget a token. New connections with it are refused at once."""
    try:
        TokenRecord(f"TOKEN#{token_digest(token)}", "TOKEN").delete(
            condition=TokenRecord.pk.exists()
        )
    except DeleteError:
        return False
    return True


def create_topic(
    owner_id: int,
    title: str = "",
    *,
    reader_ids: Iterable[int] = (),
    primary_agent_id: int | None = None,
    session_id: str | None = None,
) -> TopicRecord:
    topic_id = next_id("topic")
    topic = TopicRecord(
        f"TOPIC#{topic_id}",
        "TOPIC",
        topic_id=topic_id,
        title=title,
        owner_id=owner_id,
        reader_ids=set(reader_ids) or None,
        primary_agent_id=primary_agent_id,
        session_id=session_id,
        created_at=clock.now(),
    )
    if session_id and primary_agent_id is not None:
        # Grace cancellation finds a session's own topic through this index entry.
        topic.gsi1pk = session_topic_key(primary_agent_id, session_id)
        topic.gsi1sk = f"TOPIC#{topic_id}"
    topic.save(condition=TopicRecord.pk.does_not_exist())
    return topic


def session_topic_key(agent_id: int, session_id: str) -> str:
    return f"AGENT#{agent_id}#SESSION#{session_id}"
