"""Every key, index key and shared condition of the single table, in one place.

The layout puts what one decision needs into one partition:

| item                  | pk                         | sk                  |
| --------------------- | -------------------------- | ------------------- |
| user or agent         | ``USER#<id>``              | ``USER``            |
| lease (presence row)  | ``USER#<agent_id>``        | ``LEASE#<conn_id>`` |
| token (hashed)        | ``TOKEN#<sha256>``         | ``TOKEN``           |
| socket of a token     | ``TOKEN#<sha256>``         | ``CONN#<conn_id>``  |
| connection            | ``CONN#<conn_id>``         | ``CONN``            |
| stream membership     | ``STREAM#<stream>``        | ``CONN#<conn_id>``  |
| topic                 | ``TOPIC#<id>``             | ``TOPIC``           |
| task                  | ``TASK#<id>``              | ``TASK``            |
| permission decision   | ``DECISION#<agent_id>``    | ``REQ#<request_id>``|
| held slot             | ``SLOTS#<agent_id>``       | ``TASK#<task_id>``  |
| id counter            | ``COUNTER#<name>``         | ``COUNTER``         |
| agent stream history  | ``HISTORY#<agent_id>``     | ``SEQ#<seq 20 digits>``|

An agent's user item and its leases share ``USER#<agent_id>``, so one consistent
Query reads routing, the presence version and every lease. One sparse GSI
(``gsi1``) serves the paths that may be eventually consistent:

| gsi1pk                              | gsi1sk                        | finds                   |
| ----------------------------------- | ----------------------------- | ----------------------- |
| ``ROUTED#<agent_id mod 256>``       | ``<agent_id>``                | routed agents (sweeper) |
| ``GRACE_OWED``                      | ``<agent_id>``                | graces owed (sweeper)   |
| ``AGENT#<id>#STATUS#<status>``      | ``TOPIC#<topic>#TASK#<task>`` | an agent's tasks        |
| ``AGENT#<id>#SESSION_TOPICS``       | ``SESSION#<session_id>``      | an agent's session topics |

Stores build keys only through these functions, and share the conditions below,
so a key's shape and a race guard used by two stores are each written once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_channel.storage.records import UserRecord

if TYPE_CHECKING:
    from pynamodb.expressions.condition import Condition

Key = tuple[str, str]
"""A (partition key, sort key) pair."""

MAX_ID = 10**18
"""Ids (users, agents, topics, tasks) are positive integers below this: the
authorizer accepts up to 18 digits, and every input that names an id is held to
the same bound."""

# ---------------------------------------------------------------- base table


def user_key(user_id: int) -> Key:
    return f"USER#{user_id}", "USER"


def user_partition(user_id: int) -> str:
    """An agent's partition: its user item and every lease."""
    return user_key(user_id)[0]


def lease_key(agent_id: int, connection_id: str) -> Key:
    return user_partition(agent_id), f"LEASE#{connection_id}"


def token_partition(digest: str) -> str:
    """A token and the sockets opened with it (so a revocation finds them all)."""
    return f"TOKEN#{digest}"


def token_key(digest: str) -> Key:
    return token_partition(digest), "TOKEN"


def token_socket_key(digest: str, connection_id: str) -> Key:
    return token_partition(digest), f"{MEMBER_PREFIX}{connection_id}"


def connection_key(connection_id: str) -> Key:
    return f"CONN#{connection_id}", "CONN"


MEMBER_PREFIX = "CONN#"
"""Sort-key prefix of a stream's members; the rest of the sort key is the connection id."""


def stream_partition(stream: str) -> str:
    return f"STREAM#{stream}"


def member_key(stream: str, connection_id: str) -> Key:
    return stream_partition(stream), f"{MEMBER_PREFIX}{connection_id}"


def topic_key(topic_id: int) -> Key:
    return f"TOPIC#{topic_id}", "TOPIC"


def task_key(task_id: int) -> Key:
    return f"TASK#{task_id}", "TASK"


def decision_key(agent_id: int, request_id: str) -> Key:
    return f"DECISION#{agent_id}", f"REQ#{request_id}"


def slots_partition(agent_id: int) -> str:
    return f"SLOTS#{agent_id}"


def slot_key(agent_id: int, task_id: int) -> Key:
    return slots_partition(agent_id), f"TASK#{task_id}"


def counter_key(name: str) -> Key:
    return f"COUNTER#{name}", "COUNTER"


HISTORY_PREFIX = "SEQ#"
"""Sort-key prefix of an agent stream's history; zero-padded, so sorted by sequence."""


def history_partition(agent_id: int) -> str:
    """An agent stream's history: one item per message, by sequence number."""
    return f"HISTORY#{agent_id}"


def history_sort(seq: int) -> str:
    return f"{HISTORY_PREFIX}{seq:020d}"


def history_key(agent_id: int, seq: int) -> Key:
    return history_partition(agent_id), history_sort(seq)


# ---------------------------------------------------------------- gsi1

ROUTED_SHARDS = 256
"""The sweeper's index spreads routed agents over this many partitions: the unit
a sweep fans out by (docs/SCALE.md). Raised from 16; an entry written under the
old modulus still lies in one of these partitions, so it is still swept."""

GRACE_OWED = "GRACE_OWED"
"""gsi1 partition of agents whose agent-wide grace is owed (rare, so unsharded)."""


def routed_shard(agent_id: int) -> str:
    return routed_partition(agent_id % ROUTED_SHARDS)


def routed_partition(shard: int) -> str:
    """The index partition of shard number ``shard`` (0 to ROUTED_SHARDS - 1)."""
    return f"ROUTED#{shard}"


def agent_sort(agent_id: int) -> str:
    """gsi1 sort key of an agent's entry in ``ROUTED#n`` or ``GRACE_OWED``."""
    return str(agent_id)


def task_status_index(agent_id: int, status: str) -> str:
    return f"AGENT#{agent_id}#STATUS#{status}"


def topic_tasks_prefix(topic_id: int) -> str:
    """Sorted by topic first, so one topic's tasks are a begins_with away."""
    return f"TOPIC#{topic_id:019d}#"


def task_status_sort(topic_id: int, task_id: int) -> str:
    return f"{topic_tasks_prefix(topic_id)}TASK#{task_id:019d}"


def session_topics_index(agent_id: int) -> str:
    """Every session topic of an agent under one index partition, so unregistering
    the agent finds them all in one Query; a session's own are one sort key of it."""
    return f"AGENT#{agent_id}#SESSION_TOPICS"


def session_topic_sort(session_id: str) -> str:
    # An index sort key need not be unique: each of a session's topics has this one,
    # and an equality condition on it cannot match another session's (no prefix).
    return f"SESSION#{session_id}"


# ---------------------------------------------------------------- shared conditions


def presence_version_is(version: int) -> Condition:
    """Holds while no subscribe or restore has bumped the agent's presence version
    since it was read as ``version``.

    Every lease add bumps the version, and only a lease add can bring an agent (or
    one of its sessions) back. Guarded by this, a last-one-out clear cannot switch
    routing off under a subscribe that landed after its read, and a grace
    cancellation cannot commit after the agent reconnected, however late it runs.
    """
    condition: Condition
    if version:
        condition = UserRecord.presence_version == version
    else:
        condition = UserRecord.presence_version.does_not_exist() | (
            UserRecord.presence_version == 0
        )
    return condition
