"""The presence store on DynamoDB, through the PynamoDB models.

Conditional writes and transactions stand where the reference took row locks.
Each condition names the race it guards against.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache

from pynamodb.connection import Connection
from pynamodb.exceptions import DeleteError, TransactWriteError, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.transactions import TransactWrite

from agent_channel import models
from agent_channel.config import CHANNEL_AGENT_MODEL, Settings
from agent_channel.models import (
    GRACE_OWED,
    ConnectionRecord,
    LeaseRecord,
    Record,
    StreamMemberRecord,
    TopicRecord,
    UserRecord,
    lease_sk,
    routed_shard,
    user_pk,
)
from agent_channel.presence_store import AccessDenied
from agent_channel.presence_types import (
    Attachment,
    GraceCancellation,
    Lease,
    Presence,
    Subscription,
    agent_stream,
)

MAX_STALE_PER_TRANSACTION = 99
"""A transaction holds 100 items: the agent's user item and up to 99 stale leases."""

CONDITION_FAILED = "ConditionalCheckFailed"
GARBAGE_AFTER = timedelta(days=1)


@cache
def _dynamodb() -> Connection:
    # One low-level connection per process for transactions; the models keep theirs.
    return Connection()


def transaction() -> TransactWrite:
    return TransactWrite(connection=_dynamodb())


def _condition_failed(error: UpdateError | DeleteError) -> bool:
    return error.cause_response_code == "ConditionalCheckFailedException"


def _failed_positions(error: TransactWriteError) -> set[int]:
    """Which items of a cancelled transaction failed their condition."""
    reasons = error.cancellation_reasons or []
    return {i for i, reason in enumerate(reasons) if reason and reason.code == CONDITION_FAILED}


def connection_key(connection_id: str) -> tuple[str, str]:
    return f"CONN#{connection_id}", "CONN"


def member_key(stream: str, connection_id: str) -> tuple[str, str]:
    return f"STREAM#{stream}", f"CONN#{connection_id}"


def _lease_from(record: LeaseRecord) -> Lease:
    return Lease(
        agent_id=int(record.agent_id),
        connection_id=record.connection_id,
        token=record.token,
        session_id=record.session_id or "",
        last_seen_at=float(record.last_seen_at),
    )


class DynamoPresenceStore:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def _ttl(self, now: float) -> datetime:
        # Garbage collection only (TTL deletion can lag for days): liveness is
        # always computed from last_seen_at.
        return datetime.fromtimestamp(now, tz=UTC) + GARBAGE_AFTER

    def read(self, agent_id: int) -> Presence | None:
        user: UserRecord | None = None
        leases: list[Lease] = []
        for record in Record.query(user_pk(agent_id), consistent_read=True):
            if isinstance(record, UserRecord):
                user = record
            elif isinstance(record, LeaseRecord):
                leases.append(_lease_from(record))
        if user is None:
            return None
        return Presence(
            agent_id=agent_id,
            routing_on=user.routing_expression == "true",
            subscription_token=user.routing_subscription_token,
            version=int(user.presence_version or 0),
            leases=tuple(leases),
        )

    def _stream_items(self, attachment: Attachment, now: float) -> list[Record]:
        pk, sk = connection_key(attachment.connection_id)
        member_pk, member_sk = member_key(attachment.stream, attachment.connection_id)
        return [
            ConnectionRecord(
                pk,
                sk,
                connection_id=attachment.connection_id,
                user_id=attachment.user_id,
                stream=attachment.stream,
                agent_id=attachment.agent_id,
                topic_id=attachment.topic_id,
                connected_at=now,
                expires_at=self._ttl(now),
            ),
            StreamMemberRecord(
                member_pk,
                member_sk,
                stream=attachment.stream,
                connection_id=attachment.connection_id,
                expires_at=self._ttl(now),
            ),
        ]

    def _lease_writes(
        self, writes: TransactWrite, subscription: Subscription, token: str, now: float
    ) -> None:
        """The lease and routing-on, as one subscribe writes them.

        Bumping presence_version makes any last-one-out clear that read the agent
        before this subscribe fail its condition, so a subscribe that lands between
        a disconnect's read and its clear wins: routing stays on.
        """
        agent_id = subscription.agent_id
        writes.save(
            LeaseRecord(
                user_pk(agent_id),
                lease_sk(subscription.connection_id),
                agent_id=agent_id,
                connection_id=subscription.connection_id,
                token=token,
                session_id=subscription.session_id,
                last_seen_at=now,
                expires_at=self._ttl(now),
            )
        )
        writes.update(
            UserRecord(user_pk(agent_id), "USER"),
            actions=[
                UserRecord.routing_expression.set("true"),
                UserRecord.routing_subscription_token.set(token),
                UserRecord.presence_version.add(1),
                UserRecord.gsi1pk.set(routed_shard(agent_id)),
                UserRecord.gsi1sk.set(str(agent_id)),
                # The agent is back: a grace still owed from its last departure
                # is moot (cancel_offline would find routing on and do nothing).
                UserRecord.grace_owed_token.remove(),
                UserRecord.grace_owed_due.remove(),
            ],
            # The agent may have been deleted or handed to another owner since the
            # authorizer read it.
            condition=(UserRecord.created_by == subscription.user_id)
            & (UserRecord.model == CHANNEL_AGENT_MODEL),
        )

    def subscribe(self, subscription: Subscription, token: str, now: float) -> None:
        attachment = Attachment(
            connection_id=subscription.connection_id,
            user_id=subscription.user_id,
            stream=agent_stream(subscription.agent_id),
            agent_id=subscription.agent_id,
        )
        connection, member = self._stream_items(attachment, now)
        assert isinstance(connection, ConnectionRecord)
        connection.holds_lease = True
        connection.session_id = subscription.session_id
        # One transaction: the stream is attached no later than routing turns on,
        # so a dispatch can never go into a stream nobody holds yet.
        try:
            with transaction() as writes:
                writes.save(connection)
                writes.save(member)
                self._lease_writes(writes, subscription, token, now)
        except TransactWriteError as error:
            if _failed_positions(error):
                raise AccessDenied(f"agent {subscription.agent_id}") from error
            raise

    def restore(self, subscription: Subscription, token: str, now: float) -> bool:
        pk, sk = connection_key(subscription.connection_id)
        try:
            with transaction() as writes:
                # A heartbeat racing its own $disconnect must not resurrect the
                # connection: the restore holds only while the connection item exists,
                # and $disconnect removes that item before it touches the lease.
                writes.condition_check(ConnectionRecord, pk, sk, ConnectionRecord.pk.exists())
                self._lease_writes(writes, subscription, token, now)
        except TransactWriteError as error:
            if _failed_positions(error):
                return False
            raise
        return True

    def touch(self, agent_id: int, connection_id: str, now: float) -> bool:
        lease = LeaseRecord(user_pk(agent_id), lease_sk(connection_id))
        try:
            lease.update(
                actions=[
                    LeaseRecord.last_seen_at.set(now),
                    LeaseRecord.expires_at.set(self._ttl(now)),
                ],
                # Never recreate a lease that a reap or a disconnect deleted: that is
                # restore's job, which rechecks the connection.
                condition=LeaseRecord.pk.exists(),
            )
        except UpdateError as error:
            if _condition_failed(error):
                return False
            raise
        return True

    def attach(self, attachment: Attachment, now: float) -> None:
        condition: Condition
        if attachment.topic_id is not None:
            target_pk, target_sk = f"TOPIC#{attachment.topic_id}", "TOPIC"
            condition = (
                TopicRecord.owner_id == attachment.user_id
            ) | TopicRecord.reader_ids.contains(attachment.user_id)
            target_model: type[Record] = TopicRecord
        elif attachment.agent_id is not None:
            target_pk, target_sk = user_pk(attachment.agent_id), "USER"
            condition = UserRecord.created_by == attachment.user_id
            target_model = UserRecord
        else:
            raise ValueError("an attachment names an agent or a topic")
        connection, member = self._stream_items(attachment, now)
        try:
            with transaction() as writes:
                # Access may have been withdrawn since the authorizer read the target.
                writes.condition_check(target_model, target_pk, target_sk, condition)
                writes.save(connection)
                writes.save(member)
        except TransactWriteError as error:
            if _failed_positions(error):
                raise AccessDenied(attachment.stream) from error
            raise

    def drop_connection(self, connection_id: str, stream: str) -> None:
        pk, sk = connection_key(connection_id)
        member_pk, member_sk = member_key(stream, connection_id)
        with transaction() as writes:
            writes.delete(ConnectionRecord(pk, sk))
            writes.delete(StreamMemberRecord(member_pk, member_sk))

    def drop_lease(self, agent_id: int, connection_id: str) -> Lease | None:
        try:
            response = LeaseRecord._get_connection().delete_item(
                user_pk(agent_id),
                lease_sk(connection_id),
                # A stale or duplicate $disconnect finds its lease already reaped and
                # must then change nothing and schedule nothing.
                condition=LeaseRecord.pk.exists(),
                return_values="ALL_OLD",
            )
        except DeleteError as error:
            if _condition_failed(error):
                return None
            raise
        record = LeaseRecord.from_raw_data(response["Attributes"])
        return _lease_from(record)

    def reap(self, stale: Sequence[Lease], cutoff: float) -> list[Lease]:
        reaped: list[Lease] = []
        for lease in stale:
            try:
                LeaseRecord(user_pk(lease.agent_id), lease_sk(lease.connection_id)).delete(
                    # A heartbeat may have refreshed it since it was read as stale.
                    condition=LeaseRecord.last_seen_at < cutoff
                )
            except DeleteError as error:
                if _condition_failed(error):
                    continue
                raise
            reaped.append(lease)
        return reaped

    def clear_routing(self, seen: Presence, stale: Sequence[Lease], cutoff: float) -> bool:
        if len(stale) > MAX_STALE_PER_TRANSACTION:
            raise ValueError("too many stale leases for one transaction; reap first")
        try:
            with transaction() as writes:
                for lease in stale:
                    writes.delete(
                        LeaseRecord(user_pk(lease.agent_id), lease_sk(lease.connection_id)),
                        # A heartbeat that refreshed this lease since the read makes
                        # the agent live again: the clear must not happen. A lease
                        # someone else already deleted is no obstacle.
                        condition=LeaseRecord.pk.does_not_exist()
                        | (LeaseRecord.last_seen_at < cutoff),
                    )
                writes.update(
                    UserRecord(user_pk(seen.agent_id), "USER"),
                    actions=[
                        UserRecord.routing_expression.set(""),
                        UserRecord.routing_subscription_token.remove(),
                        UserRecord.gsi1pk.remove(),
                        UserRecord.gsi1sk.remove(),
                    ],
                    # A subscribe or restore since the read bumped the version: it wins.
                    condition=(
                        (UserRecord.presence_version == seen.version)
                        if seen.version
                        else UserRecord.presence_version.does_not_exist()
                        | (UserRecord.presence_version == 0)
                    ),
                )
        except TransactWriteError as error:
            if _failed_positions(error):
                return False
            raise
        return True

    def owe_grace(self, cancellation: GraceCancellation, due_at: float) -> bool:
        try:
            UserRecord(user_pk(cancellation.agent_id), "USER").update(
                actions=[
                    UserRecord.grace_owed_token.set(cancellation.subscription_token),
                    UserRecord.grace_owed_due.set(due_at),
                    UserRecord.gsi1pk.set(GRACE_OWED),
                    UserRecord.gsi1sk.set(str(cancellation.agent_id)),
                ],
                # If a subscribe turned routing back on meanwhile, nothing is owed,
                # and its ROUTED index entry must not be overwritten.
                condition=UserRecord.routing_expression != "true",
            )
        except UpdateError as error:
            if _condition_failed(error):
                return False
            raise
        return True

    def owed_graces(self) -> list[tuple[GraceCancellation, float]]:
        owed: list[tuple[GraceCancellation, float]] = []
        for record in Record.gsi1.query(GRACE_OWED):
            if isinstance(record, UserRecord) and record.grace_owed_token is not None:
                cancellation = GraceCancellation(int(record.user_id), record.grace_owed_token)
                owed.append((cancellation, float(record.grace_owed_due or 0)))
        return owed

    def settle_owed_grace(self, cancellation: GraceCancellation) -> None:
        try:
            UserRecord(user_pk(cancellation.agent_id), "USER").update(
                actions=[
                    UserRecord.grace_owed_token.remove(),
                    UserRecord.grace_owed_due.remove(),
                    UserRecord.gsi1pk.remove(),
                    UserRecord.gsi1sk.remove(),
                ],
                # Only the debt we paid: a newer departure may have replaced it.
                condition=UserRecord.grace_owed_token == cancellation.subscription_token,
            )
        except UpdateError as error:
            if not _condition_failed(error):
                raise

    def routed_agents(self) -> list[int]:
        agents: list[int] = []
        for shard in range(models.ROUTED_SHARDS):
            for record in Record.gsi1.query(f"ROUTED#{shard}"):
                if isinstance(record, UserRecord):
                    agents.append(int(record.user_id))
        return agents
