"""Users, agents, tokens and topics: the directory the channel authorizes against."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from pynamodb.exceptions import DeleteError, UpdateError

from agent_channel import clock
from agent_channel.config import CHANNEL_AGENT_MODEL
from agent_channel.identity.tokens import mint_bearer_token, token_digest
from agent_channel.storage import schema
from agent_channel.storage.counters import next_id
from agent_channel.storage.records import (
    Record,
    TokenRecord,
    TokenSocketRecord,
    TopicRecord,
    UserRecord,
)
from agent_channel.storage.transactions import condition_failed

if TYPE_CHECKING:
    from collections.abc import Iterable


class User(NamedTuple):
    """A human, or an AI agent (``created_by`` names its owner)."""

    user_id: int
    name: str
    created_by: int | None = None
    model: str | None = None
    unregistered: bool = False
    """An agent closed for work by unregister_agent: no connect, no new task."""

    @property
    def is_agent(self) -> bool:
        return self.created_by is not None

    @property
    def is_channel_agent(self) -> bool:
        return self.is_agent and self.model == CHANNEL_AGENT_MODEL


class Topic(NamedTuple):
    """A conversation. ``session_id`` set makes it private to one session of its agent."""

    topic_id: int
    owner_id: int
    title: str = ""
    reader_ids: frozenset[int] = frozenset()
    primary_agent_id: int | None = None
    session_id: str | None = None
    archived: bool = False
    """Archived when its agent was unregistered: it takes no new task."""

    def readable_by(self, user_id: int) -> bool:
        return self.owner_id == user_id or user_id in self.reader_ids


def user_from(record: UserRecord) -> User:
    return User(
        user_id=int(record.user_id),
        name=record.name,
        created_by=None if record.created_by is None else int(record.created_by),
        model=record.model,
        unregistered=record.unregistered_at is not None,
    )


def topic_from(record: TopicRecord) -> Topic:
    return Topic(
        topic_id=int(record.topic_id),
        owner_id=int(record.owner_id),
        title=record.title or "",
        reader_ids=frozenset(int(reader) for reader in record.reader_ids or ()),
        primary_agent_id=(
            None if record.primary_agent_id is None else int(record.primary_agent_id)
        ),
        session_id=record.session_id,
        archived=record.archived_at is not None,
    )


def create_user(name: str) -> User:
    user_id = next_id("user")
    record = UserRecord(
        *schema.user_key(user_id), user_id=user_id, name=name, created_at=clock.now()
    )
    record.save(condition=UserRecord.pk.does_not_exist())
    return user_from(record)


def create_agent(name: str, owner_id: int, model: str = CHANNEL_AGENT_MODEL) -> User:
    """An AI agent owned by ``owner_id``; ``model`` claude-code makes it a channel agent."""
    owner = get_user(owner_id)
    if owner is None or owner.is_agent:
        raise ValueError(f"user {owner_id} is not a human user")
    agent_id = next_id("user")
    record = UserRecord(
        *schema.user_key(agent_id),
        user_id=agent_id,
        name=name,
        created_by=owner_id,
        model=model,
        created_at=clock.now(),
    )
    record.save(condition=UserRecord.pk.does_not_exist())
    return user_from(record)


def get_user(user_id: int) -> User | None:
    try:
        record = UserRecord.get(*schema.user_key(user_id), consistent_read=True)
    except UserRecord.DoesNotExist:
        return None
    return user_from(record)


def issue_token(user_id: int, label: str = "") -> str:
    """Mint a bearer token for a user; only its digest is stored. Shown once."""
    if get_user(user_id) is None:
        raise ValueError(f"no user {user_id}")
    token = mint_bearer_token()
    TokenRecord(
        *schema.token_key(token_digest(token)),
        user_id=user_id,
        label=label,
        created_at=clock.now(),
    ).save(condition=TokenRecord.pk.does_not_exist())
    return token


def revoke_token(token: str) -> bool:
    """Forget a token. New connections with it are refused at once."""
    try:
        TokenRecord(*schema.token_key(token_digest(token))).delete(
            condition=TokenRecord.pk.exists()
        )
    except DeleteError:
        return False
    return True


def sockets_opened_with(token: str) -> list[str]:
    """The connection ids of every socket opened with ``token`` (some may be closed
    already), read consistently from the token's partition."""
    return [
        record.connection_id
        for record in Record.query(
            schema.token_partition(token_digest(token)), consistent_read=True
        )
        if isinstance(record, TokenSocketRecord)
    ]


def create_topic(
    owner_id: int,
    title: str = "",
    *,
    reader_ids: Iterable[int] = (),
    primary_agent_id: int | None = None,
    session_id: str | None = None,
) -> Topic:
    topic_id = next_id("topic")
    record = TopicRecord(
        *schema.topic_key(topic_id),
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
        record.gsi1pk = schema.session_topics_index(primary_agent_id)
        record.gsi1sk = schema.session_topic_sort(session_id)
    record.save(condition=TopicRecord.pk.does_not_exist())
    return topic_from(record)


def get_topic(topic_id: int) -> Topic | None:
    try:
        record = TopicRecord.get(*schema.topic_key(topic_id), consistent_read=True)
    except TopicRecord.DoesNotExist:
        return None
    return topic_from(record)


def session_topics(agent_id: int) -> list[Topic]:
    """Every session topic of the agent not yet archived, from the index (may lag a
    topic created a moment ago)."""
    return [
        topic_from(record)
        for record in TopicRecord.gsi1.query(schema.session_topics_index(agent_id))
        if isinstance(record, TopicRecord)
    ]


def archive_topic(topic_id: int, now: float) -> bool:
    """Archive a topic: stamped (the first stamp stays) and out of the session index,
    so no grace finds it again. False if there is no such topic."""
    try:
        TopicRecord(*schema.topic_key(topic_id)).update(
            actions=[
                TopicRecord.archived_at.set(TopicRecord.archived_at | now),
                TopicRecord.gsi1pk.remove(),
                TopicRecord.gsi1sk.remove(),
            ],
            # Never create a topic item by archiving one that is gone.
            condition=TopicRecord.pk.exists(),
        )
    except UpdateError as error:
        if condition_failed(error):
            return False
        raise
    return True
