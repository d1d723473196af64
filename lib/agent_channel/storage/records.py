"""The PynamoDB records of the single table.

Every item has a partition key ``pk``, a sort key ``sk`` and a ``type``
discriminator. Records are storage detail: each capability's DynamoDB store turns
them into plain values before any rule sees them. Their keys are built only in
``agent_channel.storage.schema``.
"""

from __future__ import annotations

import os

from pynamodb.attributes import (
    BooleanAttribute,
    DiscriminatorAttribute,
    NumberAttribute,
    NumberSetAttribute,
    TTLAttribute,
    UnicodeAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model


def _table_name() -> str:
    return os.environ.get("TABLE_NAME", "agent-channel")


class Gsi1(GlobalSecondaryIndex["Record"]):  # type: ignore[no-untyped-call]
    class Meta:
        index_name = "gsi1"
        projection = AllProjection()

    gsi1pk = UnicodeAttribute(hash_key=True)
    gsi1sk = UnicodeAttribute(range_key=True)


class Record(Model):
    """The base of every item in the table."""

    class Meta:
        table_name = _table_name()
        billing_mode = "PAY_PER_REQUEST"

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    type = DiscriminatorAttribute()
    gsi1pk = UnicodeAttribute(null=True)
    gsi1sk = UnicodeAttribute(null=True)
    gsi1 = Gsi1()
    expires_at = TTLAttribute(null=True)


class UserRecord(Record, discriminator="user"):
    """A human, or an AI agent (``created_by`` set) with its routing state."""

    user_id = NumberAttribute()
    name = UnicodeAttribute()
    created_by = NumberAttribute(null=True)
    model = UnicodeAttribute(null=True)
    routing_expression = UnicodeAttribute(default="")
    routing_subscription_token = UnicodeAttribute(null=True)
    presence_version = NumberAttribute(default=0)
    # A grace cancellation that could not be scheduled (Scheduler unavailable):
    # the sweeper finds it through gsi1 ``GRACE_OWED`` and schedules it again.
    grace_owed_token = UnicodeAttribute(null=True)
    grace_owed_due = NumberAttribute(null=True)
    # Set once by unregister_agent: the agent is closed for work, and no subscribe
    # or restore may turn its routing on again.
    unregistered_at = NumberAttribute(null=True)
    # Set by the last-one-out clear (the agent-wide grace may be scheduled), removed
    # by the subscribe that turns routing back on: $connect withdraws the grace
    # only when the authorizer saw this set, not on every connect.
    grace_scheduled = BooleanAttribute(null=True)
    created_at = NumberAttribute()

    @property
    def is_agent(self) -> bool:
        return self.created_by is not None


class LeaseRecord(Record, discriminator="lease"):
    """One live agent-stream subscription of a channel agent."""

    agent_id = NumberAttribute()
    connection_id = UnicodeAttribute()
    token = UnicodeAttribute()
    session_id = UnicodeAttribute(default="")
    last_seen_at = NumberAttribute()


class TokenRecord(Record, discriminator="token"):
    """A bearer token, stored only as its SHA-256 digest."""

    user_id = NumberAttribute()
    label = UnicodeAttribute(default="")
    created_at = NumberAttribute()


class TokenSocketRecord(Record, discriminator="token_socket"):
    """A socket opened with a token, under the token's partition: revoking the token
    finds every socket to close with one consistent Query."""

    connection_id = UnicodeAttribute()


class ConnectionRecord(Record, discriminator="connection"):
    """An open socket: who opened it and which stream it joined."""

    connection_id = UnicodeAttribute()
    user_id = NumberAttribute()
    stream = UnicodeAttribute()
    agent_id = NumberAttribute(null=True)
    topic_id = NumberAttribute(null=True)
    session_id = UnicodeAttribute(default="")
    holds_lease = BooleanAttribute(default=False)
    connected_at = NumberAttribute()


class StreamMemberRecord(Record, discriminator="member"):
    """A connection's membership of a stream: what fan-out Queries."""

    stream = UnicodeAttribute()
    connection_id = UnicodeAttribute()


class TopicRecord(Record, discriminator="topic"):
    """A conversation. ``session_id`` set makes it private to one session."""

    topic_id = NumberAttribute()
    title = UnicodeAttribute(default="")
    owner_id = NumberAttribute()
    reader_ids = NumberSetAttribute(default=set)
    session_id = UnicodeAttribute(null=True)
    primary_agent_id = NumberAttribute(null=True)
    # Set when its agent is unregistered: no new task; out of the session index.
    archived_at = NumberAttribute(null=True)
    created_at = NumberAttribute()


class TaskRecord(Record, discriminator="task"):
    """Work given to an agent. ``gsi1`` indexes it by agent and status."""

    task_id = NumberAttribute()
    topic_id = NumberAttribute()
    agent_id = NumberAttribute()
    status = UnicodeAttribute()
    content = UnicodeAttribute(default="")
    author_id = NumberAttribute(null=True)
    comment_id = NumberAttribute(null=True)
    pending_tool_call = UnicodeAttribute(null=True)
    created_at = NumberAttribute()
    updated_at = NumberAttribute()
    cancel_reason = UnicodeAttribute(null=True)
    """Why it was cancelled; the task-event pipe carries it into task.cancelled."""
    # At-least-once delivery: how many times the task was delegated (the fencing
    # generation), the dispatch message as sent, the generation a session
    # acknowledged, and the redelivery schedule.
    generation = NumberAttribute(null=True)
    dispatch_message = UnicodeAttribute(null=True)
    acked_generation = NumberAttribute(null=True)
    acked_at = NumberAttribute(null=True)
    delivery_attempts = NumberAttribute(null=True)
    next_delivery_at = NumberAttribute(null=True)


class DecisionRecord(Record, discriminator="decision"):
    """A permission decision, keyed under its agent so no other agent reaches it."""

    agent_id = NumberAttribute()
    request_id = UnicodeAttribute()
    behavior = UnicodeAttribute()
    decided_at = NumberAttribute()
    decided_by = NumberAttribute()
    reason = UnicodeAttribute(null=True)


class HistoryRecord(Record, discriminator="history"):
    """One message of an agent stream, kept for resume until ``expires_at``."""

    agent_id = NumberAttribute()
    seq = NumberAttribute()
    epoch = UnicodeAttribute()
    body = UnicodeAttribute()
    created_at = NumberAttribute()


class SlotRecord(Record, discriminator="slot"):
    """A slot of an agent's resource tracker, held by one running task."""

    agent_id = NumberAttribute()
    task_id = NumberAttribute()
    acquired_at = NumberAttribute()


class CounterRecord(Record, discriminator="counter"):
    """Hands out increasing integer ids."""

    value = NumberAttribute(default=0)
