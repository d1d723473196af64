"""What moto's DynamoDB costs where DynamoDB's cost does not grow: same answers,
cheaper, for the whole process (``install``; moto has one class of each).

Under load, the local stack's moto served its requests one at a time, each
paying for the whole table: a transaction copied the table once per item as its
rollback copy, every record of its stream with it, and every partition any key
ever named, empty or not; a Query sorted every item of the table to keep one
partition's; a stream read walked the Streams model for every attribute of every
image it returned. DynamoDB's cost per request grows with what the request reads
and writes; these bring moto's closer to that without changing what any request
answers (``tests/contract/test_local_stack_parts.py`` compares each with moto's
own).
"""

from __future__ import annotations

import copy
import datetime
import functools
import inspect
import json
import threading
from collections.abc import Callable
from typing import Any

from moto.core.responses import ActionResult
from moto.core.serialize import TimestampSerializer
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import StreamShard, Table
from moto.dynamodbstreams.responses import DynamoDBStreamsHandler


def install() -> None:
    """Patch moto's classes, once however often called."""
    StreamShard.__deepcopy__ = _rollback_copy_of_shard  # type: ignore[attr-defined]
    Table.__deepcopy__ = _rollback_copy_of_table  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = _copying_each_table_once(  # type: ignore[method-assign,assignment]
        DynamoDBBackend.transact_write_items
    )
    Table.query = _reading_what_it_reaches(Table.query)  # type: ignore[method-assign]
    Table.all_items = _items_a_query_reaches(Table.all_items)  # type: ignore[method-assign,assignment]
    Table.get_item = _leaving_no_empty_partition(Table.get_item)  # type: ignore[method-assign]
    Table.delete_item = _leaving_no_empty_partition(Table.delete_item)  # type: ignore[method-assign]
    DynamoDBStreamsHandler.get_records = _records_as_stored(  # type: ignore[method-assign,assignment]
        DynamoDBStreamsHandler.get_records
    )


def _rollback_copy_of_shard(shard: StreamShard, memo: dict[int, Any]) -> StreamShard:
    """A stream shard as a table's rollback copy needs it: the same records in a
    list of its own.

    moto deep-copies the table before every TransactWriteItems (here once per
    table of the transaction: ``_copying_each_table_once``), its stream with it,
    every record's old and new images included. A record never changes once
    added, so the copy may share them; only the list must be its own, so that a
    failed transaction's records go with it.
    Deep-copied, the records made a transaction's cost grow with the stream's
    backlog, which grows while transactions are slow: under load, a spiral.
    """
    copied: StreamShard = object.__new__(StreamShard)
    memo[id(shard)] = copied
    copied.__dict__.update(shard.__dict__)
    copied.table = copy.deepcopy(shard.table, memo)
    copied.items = list(shard.items)
    return copied


_transaction = threading.local()
"""The rollback copies made so far by the TransactWriteItems this thread serves."""


def _copying_each_table_once(
    transact_write_items: Callable[[DynamoDBBackend, list[dict[str, Any]]], None],
) -> Callable[[DynamoDBBackend, list[dict[str, Any]]], None]:
    """moto's TransactWriteItems, making one rollback copy per table, not per item.

    Before it writes anything, moto deep-copies a transaction's table once for
    each item, keeping the last copy: a 6-item transaction (a ``$connect``'s)
    copied the whole table six times, nearly all of the transaction's cost, and
    the copies are alike since nothing is written between them. The first copy
    of each table stands for the rest: the same rollback, a sixth of the cost.
    """
    if getattr(transact_write_items, "copies_each_table_once", False):
        return transact_write_items

    @functools.wraps(transact_write_items)
    def transact(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        _transaction.copies = {}
        try:
            transact_write_items(backend, transact_items)
        finally:
            _transaction.copies = None

    transact.copies_each_table_once = True  # type: ignore[attr-defined]
    return transact


def _rollback_copy_of_table(table: Table, memo: dict[int, Any]) -> Table:
    """A deep copy of the table, as ``copy.deepcopy`` makes one, made once per
    transaction (``_copying_each_table_once``). The copy is not tracked for moto's
    dashboard (``object.__new__``): the stack does not serve it."""
    copies: dict[int, Table] | None = getattr(_transaction, "copies", None)
    if copies is not None and id(table) in copies:
        return copies[id(table)]
    copied: Table = object.__new__(type(table))
    memo[id(table)] = copied
    copied.__dict__.update(copy.deepcopy(table.__dict__, memo))
    if copies is not None:
        copies[id(table)] = copied
    return copied


_query = threading.local()
"""What the Query this thread serves reads: (table, index name, partition key)."""


def _reading_what_it_reaches(query: Callable[..., Any]) -> Callable[..., Any]:
    """moto's ``Table.query``, telling ``all_items`` what the Query can reach.

    moto's Query starts from every item of the table, sorted by key (n log n
    comparisons of moto's typed values, nearly all of a Query's cost on a table of
    a few hundred items), and then keeps one partition's, or on an index those
    with the index's keys, which it sorts again. DynamoDB's Query reads one
    partition, however large the table: the sweeper's and redelivery's one Query
    per routed agent every minute cost moto the whole table each.
    """
    if getattr(query, "reads_what_it_reaches", False):
        return query
    signature = inspect.signature(query)

    @functools.wraps(query)
    def reaching(table: Table, *args: Any, **kwargs: Any) -> Any:
        asked = signature.bind(table, *args, **kwargs).arguments
        _query.scope = (table, asked.get("index_name"), asked.get("hash_key"))
        try:
            return query(table, *args, **kwargs)
        finally:
            _query.scope = None

    reaching.reads_what_it_reaches = True  # type: ignore[attr-defined]
    return reaching


def _items_a_query_reaches(
    all_items: Callable[[Table], list[Item]],
) -> Callable[[Table], list[Item]]:
    """moto's ``Table.all_items``, inside a Query only the items it can reach.

    The same items in another order, which the Query's own sort makes the same
    answer: on the table moto sorts its partition by the sort key, on an index by
    the index's keys and then the table's (a total order either way). Outside a
    Query (a Scan, an export) every item of the table, sorted, as moto has it.
    """
    if getattr(all_items, "reads_what_a_query_reaches", False):
        return all_items

    @functools.wraps(all_items)
    def reached(table: Table) -> list[Item]:
        scope: tuple[Table, str | None, DynamoType | None] | None = getattr(_query, "scope", None)
        if scope is None or scope[0] is not table:
            return all_items(table)
        _, index_name, partition_key = scope
        if index_name:
            return list(_every_item(table))
        if partition_key is None:
            return all_items(table)
        partition = table.items.get(partition_key)
        if isinstance(partition, dict):
            return list(partition.values())
        return [partition] if isinstance(partition, Item) else []

    reached.reads_what_a_query_reaches = True  # type: ignore[attr-defined]
    return reached


def _every_item(table: Table) -> list[Item]:
    if not table.range_key_attr:
        return list(table.items.values())  # type: ignore[arg-type]
    return [item for partition in table.items.values() for item in partition.values()]


def _leaving_no_empty_partition(method: Callable[..., Any]) -> Callable[..., Any]:
    """moto's ``Table.get_item`` or ``Table.delete_item``, leaving no empty partition.

    moto keeps a table's items in a dict of partitions that makes a partition on
    first access: reading a key whose partition holds nothing (a GetItem, a
    BatchGetItem, a write's condition) left an empty one behind, and so did
    deleting a partition's last item. DynamoDB keeps nothing for a key it does not
    store; moto's table grew by every partition key ever named (each connection's,
    each token's, each agent's), and every transaction's rollback copy copied them
    all: its cost grew with every key ever looked up, not with what the table holds.
    """
    if getattr(method, "leaves_no_empty_partition", False):
        return method

    @functools.wraps(method)
    def leaving(table: Table, hash_key: DynamoType, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(table, hash_key, *args, **kwargs)
        finally:
            # Only a table with a sort key keeps partitions (dicts); a hash-only
            # table keeps each key's item itself.
            if table.range_key_attr and table.items.get(hash_key) == {}:
                del table.items[hash_key]

    leaving.leaves_no_empty_partition = True  # type: ignore[attr-defined]
    return leaving


def _records_as_stored(get_records: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """moto's GetRecords, its answer written as JSON directly.

    moto keeps each stream record as the JSON DynamoDB Streams answers with, but
    its response serializer walked the Streams model for every attribute of both
    images of every record, nearly all of a GetRecords' cost (14-16 ms each in the
    stack under load), and the task-event pipe polls four times a second, each
    poll holding moto's one-request lock. The same JSON, the record's timestamp written as
    moto's serializer writes it; a record with a binary attribute is still left
    to the serializer (moto keeps it as bytes, which the serializer encodes).
    """
    if getattr(get_records, "answers_as_stored", False):
        return get_records

    @functools.wraps(get_records)
    def answering(handler: Any) -> Any:
        answer = get_records(handler)
        if not isinstance(answer, ActionResult) or not isinstance(answer.result, dict):
            return answer
        try:
            return json.dumps(answer.result, default=_unix_timestamp)
        except TypeError:  # bytes: a binary attribute
            return answer

    answering.answers_as_stored = True  # type: ignore[attr-defined]
    return answering


def _unix_timestamp(value: object) -> int | float:
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return TimestampSerializer._timestamp_unixtimestamp(value)
