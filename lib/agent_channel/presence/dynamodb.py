"""The presence store on DynamoDB, through the PynamoDB models.

Conditional writes and transactions stand where the reference took row locks.
Each condition names the race it guards against.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

from pynamodb.exceptions import DeleteError, UpdateError

from agent_channel.config import CHANNEL_AGENT_MODEL
from agent_channel.delivery.streams import agent_stream
from agent_channel.grace.scheduler import GraceCancellation
from agent_channel.presence.model import Attachment, Lease, Presence, Subscription
from agent_channel.presence.store import MAX_STALE_PER_CLEAR, AccessDenied
from agent_channel.storage import schema
from agent_channel.storage.records import (
    ConnectionRecord,
    LeaseRecord,
    Record,
    StreamMemberRecord,
    TokenRecord,
    TokenSocketRecord,
    TopicRecord,
    UserRecord,
)
from agent_channel.storage.transactions import Refused, commit, condition_failed, retrying

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from pynamodb.expressions.condition import Condition
    from pynamodb.expressions.update import Action
    from pynamodb.transactions import TransactWrite

GARBAGE_AFTER = timedelta(days=1)


def _lease_from(record: LeaseRecord) -> Lease:
    return Lease(
        agent_id=int(record.agent_id),
        connection_id=record.connection_id,
        token=record.token,
        session_id=record.session_id or "",
        last_seen_at=float(record.last_seen_at),
    )


class DynamoPresenceStore:
    def _ttl(self, now: float) -> datetime:
        # Garbage collection only (TTL deletion can lag for days): liveness is
        # always computed from last_seen_at.
        return datetime.fromtimestamp(now, tz=UTC) + GARBAGE_AFTER

    def read(self, agent_id: int) -> Presence | None:
        user: UserRecord | None = None
        leases: list[Lease] = []
        for record in Record.query(schema.user_partition(agent_id), consistent_read=True):
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
        return [
            ConnectionRecord(
                *schema.connection_key(attachment.connection_id),
                connection_id=attachment.connection_id,
                user_id=attachment.user_id,
                stream=attachment.stream,
                agent_id=attachment.agent_id,
                topic_id=attachment.topic_id,
                connected_at=now,
                expires_at=self._ttl(now),
            ),
            StreamMemberRecord(
                *schema.member_key(attachment.stream, attachment.connection_id),
                stream=attachment.stream,
                connection_id=attachment.connection_id,
                expires_at=self._ttl(now),
            ),
        ]

    def _token_writes(
        self, writes: TransactWrite, digest: str, connection_id: str, now: float
    ) -> None:
        """The socket filed under its token, while the token still exists."""
        if not digest:
            return
        # Race: a revocation deletes the token, then lists its sockets; a connect or
        # restore committing after that delete would be missed, so it must fail.
        writes.condition_check(TokenRecord, *schema.token_key(digest), TokenRecord.pk.exists())
        writes.save(
            TokenSocketRecord(
                *schema.token_socket_key(digest, connection_id),
                connection_id=connection_id,
                expires_at=self._ttl(now),
            )
        )

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
                *schema.lease_key(agent_id, subscription.connection_id),
                agent_id=agent_id,
                connection_id=subscription.connection_id,
                token=token,
                session_id=subscription.session_id,
                last_seen_at=now,
                expires_at=self._ttl(now),
            )
        )
        writes.update(
            UserRecord(*schema.user_key(agent_id)),
            actions=[
                UserRecord.routing_expression.set("true"),
                UserRecord.routing_subscription_token.set(token),
                UserRecord.presence_version.add(1),
                UserRecord.gsi1pk.set(schema.routed_shard(agent_id)),
                UserRecord.gsi1sk.set(schema.agent_sort(agent_id)),
                # The agent is back: a grace still owed from its last departure
                # is moot (cancel_offline would find routing on and do nothing).
                UserRecord.grace_owed_token.remove(),
                UserRecord.grace_owed_due.remove(),
                # Whoever subscribes now withdraws a pending agent-wide grace (the
                # authorizer read this flag): later connects need not.
                UserRecord.grace_scheduled.remove(),
            ],
            # The agent may have been deleted, handed to another owner or
            # unregistered since the authorizer read it (a connect racing an
            # unregister_agent must not turn routing back on).
            condition=(UserRecord.created_by == subscription.user_id)
            & (UserRecord.model == CHANNEL_AGENT_MODEL)
            & UserRecord.unregistered_at.does_not_exist(),
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
        def build(writes: TransactWrite) -> None:
            writes.save(connection)
            writes.save(member)
            self._lease_writes(writes, subscription, token, now)
            self._token_writes(writes, subscription.token_digest, subscription.connection_id, now)

        try:
            commit(build)
        except Refused as refused:
            raise AccessDenied(f"agent {subscription.agent_id}") from refused

    def restore(self, subscription: Subscription, token: str, now: float) -> bool:
        def build(writes: TransactWrite) -> None:
            # A heartbeat racing its own $disconnect must not resurrect the
            # connection: the restore holds only while the connection item exists,
            # and $disconnect removes that item before it touches the lease.
            writes.condition_check(
                ConnectionRecord,
                *schema.connection_key(subscription.connection_id),
                ConnectionRecord.pk.exists(),
            )
            self._lease_writes(writes, subscription, token, now)
            # A revoked token brings nothing back, and the agent must still be the
            # caller's (the condition in _lease_writes).
            self._token_writes(writes, subscription.token_digest, subscription.connection_id, now)

        try:
            commit(build)
        except Refused:
            return False
        return True

    def touch(self, agent_id: int, connection_id: str, now: float) -> bool:
        lease = LeaseRecord(*schema.lease_key(agent_id, connection_id))
        try:
            retrying(
                lambda: lease.update(
                    actions=[
                        LeaseRecord.last_seen_at.set(now),
                        LeaseRecord.expires_at.set(self._ttl(now)),
                    ],
                    # Never recreate a lease that a reap or a disconnect deleted: that
                    # is restore's job, which rechecks the connection.
                    condition=LeaseRecord.pk.exists(),
                )
            )
        except UpdateError as error:
            if condition_failed(error):
                return False
            raise
        return True

    def attach(self, attachment: Attachment, now: float) -> None:
        condition: Condition
        if attachment.topic_id is not None:
            target_key = schema.topic_key(attachment.topic_id)
            condition = (
                TopicRecord.owner_id == attachment.user_id
            ) | TopicRecord.reader_ids.contains(attachment.user_id)
            target_model: type[Record] = TopicRecord
        elif attachment.agent_id is not None:
            target_key = schema.user_key(attachment.agent_id)
            condition = (UserRecord.created_by == attachment.user_id) & (
                UserRecord.unregistered_at.does_not_exist()
            )
            target_model = UserRecord
        else:
            raise ValueError("an attachment names an agent or a topic")
        connection, member = self._stream_items(attachment, now)

        def build(writes: TransactWrite) -> None:
            # Access may have been withdrawn since the authorizer read the target.
            writes.condition_check(target_model, *target_key, condition)
            writes.save(connection)
            writes.save(member)
            self._token_writes(writes, attachment.token_digest, attachment.connection_id, now)

        try:
            commit(build)
        except Refused as refused:
            raise AccessDenied(attachment.stream) from refused

    def drop_connection(self, connection_id: str, stream: str) -> None:
        def build(writes: TransactWrite) -> None:
            writes.delete(ConnectionRecord(*schema.connection_key(connection_id)))
            writes.delete(StreamMemberRecord(*schema.member_key(stream, connection_id)))

        commit(build)

    def drop_lease(self, agent_id: int, connection_id: str) -> Lease | None:
        try:
            response = retrying(
                lambda: LeaseRecord._get_connection().delete_item(
                    *schema.lease_key(agent_id, connection_id),
                    # A stale or duplicate $disconnect finds its lease already reaped
                    # and must then change nothing and schedule nothing.
                    condition=LeaseRecord.pk.exists(),
                    return_values="ALL_OLD",
                )
            )
        except DeleteError as error:
            if condition_failed(error):
                return None
            raise
        record = LeaseRecord.from_raw_data(response["Attributes"])
        return _lease_from(record)

    def reap(self, stale: Sequence[Lease], cutoff: float) -> list[Lease]:
        reaped: list[Lease] = []
        for lease in stale:
            record = LeaseRecord(*schema.lease_key(lease.agent_id, lease.connection_id))
            try:
                # A heartbeat may have refreshed it since it was read as stale.
                retrying(partial(record.delete, condition=LeaseRecord.last_seen_at < cutoff))
            except DeleteError as error:
                if condition_failed(error):
                    continue
                raise
            reaped.append(lease)
        return reaped

    def clear_routing(self, seen: Presence, stale: Sequence[Lease], cutoff: float) -> bool:
        if len(stale) > MAX_STALE_PER_CLEAR:
            raise ValueError("too many stale leases for one transaction; reap first")

        def build(writes: TransactWrite) -> None:
            for lease in stale:
                writes.delete(
                    LeaseRecord(*schema.lease_key(lease.agent_id, lease.connection_id)),
                    # A heartbeat that refreshed this lease since the read makes the
                    # agent live again: the clear must not happen. A lease someone
                    # else already deleted is no obstacle.
                    condition=LeaseRecord.pk.does_not_exist() | (LeaseRecord.last_seen_at < cutoff),
                )
            actions: list[Action] = [
                UserRecord.routing_expression.set(""),
                UserRecord.routing_subscription_token.remove(),
                # The agent-wide grace is scheduled right after this clear.
                UserRecord.grace_scheduled.set(True),
            ]
            # A subscribe or restore since the read bumped the version: it wins.
            condition = schema.presence_version_is(seen.version)
            if seen.routing_on:
                actions += [UserRecord.gsi1pk.remove(), UserRecord.gsi1sk.remove()]
                # Race: a departure that cleared routing since the read may already
                # have recorded an owed grace under GRACE_OWED; clearing again would
                # erase that index entry, and no sweep would pay the debt.
                condition &= UserRecord.routing_expression == "true"
            writes.update(
                UserRecord(*schema.user_key(seen.agent_id)), actions=actions, condition=condition
            )

        try:
            commit(build)
        except Refused:
            return False
        return True

    def close_agent(self, seen: Presence, owner_id: int, now: float) -> bool:
        # Leases beyond one transaction's room go first; the transaction then
        # deletes the rest with routing, so no live lease is left routing-less.
        overflow = list(seen.leases[MAX_STALE_PER_CLEAR:])
        for lease in overflow:
            LeaseRecord(*schema.lease_key(lease.agent_id, lease.connection_id)).delete()

        def build(writes: TransactWrite) -> None:
            for lease in seen.leases[:MAX_STALE_PER_CLEAR]:
                # Deleting a lease a disconnect already took is a no-op.
                writes.delete(LeaseRecord(*schema.lease_key(lease.agent_id, lease.connection_id)))
            writes.update(
                UserRecord(*schema.user_key(seen.agent_id)),
                actions=[
                    UserRecord.unregistered_at.set(UserRecord.unregistered_at | now),
                    UserRecord.routing_expression.set(""),
                    UserRecord.routing_subscription_token.remove(),
                    UserRecord.presence_version.add(1),
                    UserRecord.gsi1pk.remove(),
                    UserRecord.gsi1sk.remove(),
                    UserRecord.grace_owed_token.remove(),
                    UserRecord.grace_owed_due.remove(),
                ],
                # A subscribe or restore since the read added a lease this
                # transaction would not delete: read again. The owner is checked in
                # the write, so an agent handed over meanwhile is not closed.
                condition=schema.presence_version_is(seen.version)
                & (UserRecord.created_by == owner_id),
            )

        try:
            commit(build)
        except Refused:
            return False
        return True

    def owe_grace(self, cancellation: GraceCancellation, due_at: float) -> bool:
        agent = UserRecord(*schema.user_key(cancellation.agent_id))
        try:
            retrying(
                lambda: agent.update(
                    actions=[
                        UserRecord.grace_owed_token.set(cancellation.subscription_token),
                        UserRecord.grace_owed_due.set(due_at),
                        UserRecord.gsi1pk.set(schema.GRACE_OWED),
                        UserRecord.gsi1sk.set(schema.agent_sort(cancellation.agent_id)),
                    ],
                    # If a subscribe turned routing back on meanwhile, nothing is owed,
                    # and its ROUTED index entry must not be overwritten.
                    condition=UserRecord.routing_expression != "true",
                )
            )
        except UpdateError as error:
            if condition_failed(error):
                return False
            raise
        return True

    def owed_graces(self) -> list[tuple[GraceCancellation, float]]:
        owed: list[tuple[GraceCancellation, float]] = []
        for record in Record.gsi1.query(schema.GRACE_OWED):
            if isinstance(record, UserRecord) and record.grace_owed_token is not None:
                cancellation = GraceCancellation(int(record.user_id), record.grace_owed_token)
                owed.append((cancellation, float(record.grace_owed_due or 0)))
        return owed

    def settle_owed_grace(self, cancellation: GraceCancellation) -> None:
        agent = UserRecord(*schema.user_key(cancellation.agent_id))
        try:
            retrying(
                lambda: agent.update(
                    actions=[
                        UserRecord.grace_owed_token.remove(),
                        UserRecord.grace_owed_due.remove(),
                        UserRecord.gsi1pk.remove(),
                        UserRecord.gsi1sk.remove(),
                    ],
                    # Only the debt we paid: a newer departure may have replaced it.
                    condition=UserRecord.grace_owed_token == cancellation.subscription_token,
                )
            )
        except UpdateError as error:
            if not condition_failed(error):
                raise

    def routed_agents(self) -> list[int]:
        shards = range(schema.ROUTED_SHARDS)
        return [agent_id for shard in shards for agent_id in self.routed_in_shard(shard)]

    def routed_in_shard(self, shard: int, after: int | None = None) -> Iterator[int]:
        partition = schema.routed_partition(shard)
        # The sort key is the agent id as a string, so "after" is in string order:
        # the order the Query returns and a resumed sweep must keep.
        condition = None if after is None else Record.gsi1sk > schema.agent_sort(after)
        for record in Record.gsi1.query(partition, condition):
            if isinstance(record, UserRecord):
                yield int(record.user_id)
