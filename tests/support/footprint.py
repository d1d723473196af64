"""Which partitions a DynamoDB request reads or writes (and which schedule or socket
a Scheduler or @connections request touches), to tell independent requests apart:
two requests commute when both only read, or when the partitions they touch are
disjoint. Index Queries are treated as touching every
partition (an index entry moves whenever its item is written)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

READS = {"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"}
EVERYTHING = "*"


@dataclass(frozen=True)
class Footprint:
    partitions: frozenset[str]
    writes: bool
    only_deletes: bool = False
    """A delete that tolerates its target being gone already (DeleteSchedule as a
    withdraw makes it): two such deletes of one target leave the same state in
    either order."""

    def independent_of(self, other: Footprint) -> bool:
        if not self.writes and not other.writes:
            return True
        if self.only_deletes and other.only_deletes:
            return True
        if EVERYTHING in self.partitions or EVERYTHING in other.partitions:
            return False
        return not self.partitions & other.partitions


def _pk(key: Any) -> str:
    if isinstance(key, dict) and isinstance(key.get("pk"), dict):
        return str(key["pk"].get("S", EVERYTHING))
    return EVERYTHING


def _query_partition(params: dict[str, Any]) -> str:
    if params.get("IndexName"):
        return EVERYTHING
    values = params.get("ExpressionAttributeValues") or {}
    names = params.get("ExpressionAttributeNames") or {}
    condition = str(params.get("KeyConditionExpression", ""))
    # PynamoDB writes "#0 = :0" with #0 -> pk.
    for placeholder, attribute in names.items():
        if attribute == "pk" and f"{placeholder} = " in condition:
            value_name = condition.split(f"{placeholder} = ", 1)[1].split()[0].rstrip(")")
            return str(values.get(value_name, {}).get("S", EVERYTHING))
    return EVERYTHING


SCHEDULER_READS = {"GetSchedule", "ListSchedules", "GetScheduleGroup", "ListScheduleGroups"}


def connection_resource(connection_id: str) -> str:
    """What a post to a connection and its handshake both touch."""
    return f"@connections/{connection_id}"


def _other_service(service: str, operation: str, params: dict[str, Any]) -> Footprint:
    """A schedule is its own "partition" (named by group and name), a socket too: two
    requests on different schedules or sockets commute, and neither commutes with a
    request on the same one. None touches the table."""
    if service == "scheduler":
        name = params.get("Name")
        target = f"schedule:{params.get('GroupName', '')}/{name}" if name else EVERYTHING
        return Footprint(
            frozenset({target}),
            operation not in SCHEDULER_READS,
            only_deletes=operation == "DeleteSchedule",
        )
    connection = params.get("ConnectionId")
    target = connection_resource(str(connection)) if connection else EVERYTHING
    # A post changes what the socket (and so its answer to the next post) is.
    return Footprint(frozenset({target}), operation != "GetConnection")


def footprint(operation: str, params: dict[str, Any], service: str = "dynamodb") -> Footprint:
    if "_resources" in params:
        # A harness checkpoint: it changes the named resources.
        return Footprint(frozenset(params["_resources"]), True)
    if service != "dynamodb":
        return _other_service(service, operation, params)
    partitions: set[str] = set()
    if operation in ("GetItem", "DeleteItem", "UpdateItem"):
        partitions.add(_pk(params.get("Key")))
    elif operation == "PutItem":
        partitions.add(_pk(params.get("Item")))
    elif operation == "Query":
        partitions.add(_query_partition(params))
    elif operation == "BatchGetItem":
        for request in (params.get("RequestItems") or {}).values():
            partitions.update(_pk(key) for key in request.get("Keys", []))
    elif operation == "TransactWriteItems":
        for item in params.get("TransactItems", []):
            for body in item.values():
                partitions.add(_pk(body.get("Key") or body.get("Item")))
    else:
        partitions.add(EVERYTHING)
    return Footprint(frozenset(partitions), operation not in READS)
