"""The task-event pipe, run locally from its definition in template.yaml.

On AWS an EventBridge Pipe (``TaskEventPipe``) reads the table's DynamoDB stream,
keeps the records its filter matches, renders each through its input template
and puts the result on the bus. moto has a DynamoDB stream (``dynamodbstreams``:
describe_stream, get_shard_iterator, get_records) but no pipe that runs, so this
module runs the same definition against moto's stream: the same filter (matched
by moto's own EventBridge pattern matcher), the same input template, the same
source and detail-type.

Delivery is as a pipe's: in stream order, at least once. A batch the bus refuses
(an outage: the call fails, or some entries fail) is retried from the first
undelivered record on the next ``pump``; nothing after it is skipped. A restart
(a new LocalPipe) begins at the stream's trim horizon, as the template's
``StartingPosition`` says, so it redelivers: each event carries the stream
record's id as ``event_id``, which is what consumers de-duplicate on.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from moto.events.models import EventPattern

from agent_channel.observability import logger
from agent_channel_dev.local import stack_template

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_events import EventBridgeClient

TASK_EVENT_PIPE = "TaskEventPipe"
READ_LIMIT = 1000
"""Records read per GetRecords (its maximum); delivered in batches of BatchSize."""
SHARD_DISCOVERY_SECONDS = 60.0
"""How often the stream is described again for new shards."""
_PLACEHOLDER = re.compile(r'("?)<\$\.([A-Za-z0-9_.]+)>("?)')


class PipeDefinitionError(ValueError):
    """The template's pipe has a shape this runner does not support."""


@dataclass(frozen=True)
class PipeDefinition:
    name: str
    source_table: str
    """Logical id of the table whose stream is the source."""
    target_bus: str
    """Logical id of the bus that is the target."""
    patterns: tuple[str, ...]
    starting_position: str
    batch_size: int
    source: str
    detail_type: str
    input_template: str

    @classmethod
    def from_template(
        cls, logical_id: str = TASK_EVENT_PIPE, path: Path | None = None
    ) -> PipeDefinition:
        found = stack_template.pipes(path)
        if logical_id not in found:
            raise PipeDefinitionError(f"no pipe {logical_id} in the template")
        properties = found[logical_id]
        source = properties.get("Source", {}).get("Fn::GetAtt", [])
        target = properties.get("Target", {}).get("Fn::GetAtt", [])
        if len(source) != 2 or source[1] != "StreamArn":
            raise PipeDefinitionError(f"{logical_id}: Source must be a table's StreamArn")
        if len(target) != 2 or target[1] != "Arn":
            raise PipeDefinitionError(f"{logical_id}: Target must be a bus's Arn")
        source_parameters = properties.get("SourceParameters", {})
        stream = source_parameters.get("DynamoDBStreamParameters", {})
        filters = source_parameters.get("FilterCriteria", {}).get("Filters", [])
        target_parameters = properties.get("TargetParameters", {})
        bus = target_parameters.get("EventBridgeEventBusParameters", {})
        return cls(
            name=logical_id,
            source_table=str(source[0]),
            target_bus=str(target[0]),
            patterns=tuple(str(item["Pattern"]) for item in filters),
            starting_position=str(stream.get("StartingPosition", "LATEST")),
            batch_size=int(stream.get("BatchSize", 10)),
            source=str(bus["Source"]),
            detail_type=str(bus["DetailType"]),
            input_template=str(target_parameters["InputTemplate"]),
        )

    def matches(self, record: dict[str, Any]) -> bool:
        """A pipe's filter criteria: a record passes if any pattern matches it."""
        if not self.patterns:
            return True
        return any(
            _event_pattern(pattern).matches_event(record)  # type: ignore[arg-type]
            for pattern in self.patterns
        )

    def render(self, record: dict[str, Any]) -> str:
        """The input template with each ``<$.path>`` replaced from the record.

        Inside quotes a value is inserted as string content; outside, as JSON. A
        path the record lacks renders as an empty string (quoted) or null.
        """

        def value(match: re.Match[str]) -> str:
            opening, path, closing = match.groups()
            found: Any = record
            for part in path.split("."):
                found = found.get(part) if isinstance(found, dict) else None
            if opening and closing:
                text = (
                    "" if found is None else found if isinstance(found, str) else json.dumps(found)
                )
                return json.dumps(text)
            return f"{opening}{json.dumps(found)}{closing}"

        rendered = _PLACEHOLDER.sub(value, self.input_template)
        json.loads(rendered)  # a template that renders to invalid JSON is a template bug
        return rendered


@dataclass
class LocalPipe:
    """Runs a PipeDefinition from a table's stream to a bus, one ``pump`` at a time."""

    definition: PipeDefinition
    table_name: str
    bus_name: str
    dynamodb: DynamoDBClient = field(default_factory=lambda: boto3.client("dynamodb"))
    # No stubs package for dynamodbstreams among the dev dependencies.
    streams: Any = field(default_factory=lambda: streams_client())
    events: EventBridgeClient = field(default_factory=lambda: boto3.client("events"))
    checkpoints: dict[str, str] = field(default_factory=dict)
    """Shard id -> sequence number of the last record handled (delivered or filtered out)."""
    delivered: int = 0
    failed_batches: int = 0
    stream_arn: str = ""
    _iterators: dict[str, str] = field(default_factory=dict)
    """Shard id -> the iterator the last GetRecords returned, to read on from."""
    _shards: list[str] = field(default_factory=list)
    _shards_described_at: float | None = None

    def _stream_arn(self) -> str:
        # A pipe is bound to one stream: its ARN is looked up once.
        if not self.stream_arn:
            table = self.dynamodb.describe_table(TableName=self.table_name)["Table"]
            arn = table.get("LatestStreamArn")
            if not arn:
                raise PipeDefinitionError(f"table {self.table_name} has no stream")
            self.stream_arn = arn
        return self.stream_arn

    def pump(self) -> int:
        """Move every record the stream has now; how many events went on the bus.
        Stops at the first batch the bus refuses (it is retried next time)."""
        arn = self._stream_arn()
        moved = 0
        for shard_id in self._shard_ids(arn):
            while True:
                records = self._read(arn, shard_id)
                size = self.definition.batch_size
                for start in range(0, len(records), size):
                    sent, complete = self._deliver(shard_id, records[start : start + size])
                    moved += sent
                    if not complete:
                        # Read again from the first undelivered record next time.
                        self._iterators.pop(shard_id, None)
                        return moved
                if len(records) < READ_LIMIT:
                    break  # the shard had no more when read: the next poll reads on
        return moved

    def _shard_ids(self, arn: str) -> list[str]:
        """The stream's shards, described again every SHARD_DISCOVERY_SECONDS (a pipe
        discovers new shards by describing its stream now and then, not per poll)."""
        if self._shards_described_at is None or (
            time.monotonic() - self._shards_described_at >= SHARD_DISCOVERY_SECONDS
        ):
            description = self.streams.describe_stream(StreamArn=arn)["StreamDescription"]
            self._shards = [shard["ShardId"] for shard in description["Shards"]]
            self._shards_described_at = time.monotonic()
        return self._shards

    def _read(self, arn: str, shard_id: str) -> list[dict[str, Any]]:
        """The shard's next records. A poll reads on from the iterator the last one
        returned, as a pipe does: one GetRecords, not a GetShardIterator first. An
        iterator is cut from the checkpoint at the start, after a batch the bus
        refused (what was read past it must be read again) and when the one held
        is refused (expired, after 15 minutes)."""
        iterator = self._iterators.pop(shard_id, None)
        if iterator is not None:
            try:
                return self._records(shard_id, iterator)
            except Exception:
                logger.debug("stream iterator refused: cut again", exc_info=True)
        after = self.checkpoints.get(shard_id)
        if after is None:
            cut = self.streams.get_shard_iterator(
                StreamArn=arn, ShardId=shard_id, ShardIteratorType=self.definition.starting_position
            )
            if self.definition.starting_position == "LATEST":
                # LATEST means "from when the pipe started": remember that point.
                self.checkpoints[shard_id] = ""
        elif after == "":
            return []
        else:
            cut = self.streams.get_shard_iterator(
                StreamArn=arn,
                ShardId=shard_id,
                ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                SequenceNumber=after,
            )
        return self._records(shard_id, cut["ShardIterator"])

    def _records(self, shard_id: str, iterator: str) -> list[dict[str, Any]]:
        response = self.streams.get_records(ShardIterator=iterator, Limit=READ_LIMIT)
        if response.get("NextShardIterator"):
            self._iterators[shard_id] = response["NextShardIterator"]
        return [dict(record) for record in response.get("Records", [])]

    def _deliver(self, shard_id: str, records: list[dict[str, Any]]) -> tuple[int, bool]:
        """Put the batch's matching records on the bus; advance the checkpoint past
        every record up to the first one the bus refused. (sent, whole batch done)."""
        chosen = [record for record in records if self.definition.matches(_plain(record))]
        outcome: list[bool] = []
        if chosen:
            outcome = self._put(chosen)
        refused = {id(record) for record, ok in zip(chosen, outcome, strict=True) if not ok}
        sent = 0
        for record in records:
            if id(record) in refused:
                self.failed_batches += 1
                return sent, False
            self.checkpoints[shard_id] = str(record["dynamodb"]["SequenceNumber"])
            if any(record is c for c in chosen):
                sent += 1
                self.delivered += 1
        return sent, True

    def _put(self, records: list[dict[str, Any]]) -> list[bool]:
        entries = [
            {
                "Source": self.definition.source,
                "DetailType": self.definition.detail_type,
                "Detail": self.definition.render(_plain(record)),
                "EventBusName": self.bus_name,
            }
            for record in records
        ]
        try:
            response = self.events.put_events(Entries=entries)  # type: ignore[arg-type]
        except Exception as error:
            logger.warning("pipe target refused a batch", extra={"error": str(error)})
            return [False] * len(records)
        return ["ErrorCode" not in entry for entry in response["Entries"]]


@cache
def _event_pattern(text: str) -> EventPattern:
    """A filter pattern, parsed once (not per record: the pipe reads every write)."""
    return EventPattern.load(text)


def streams_client() -> Any:
    """A DynamoDB Streams client that reaches moto, in-process or served.

    Recent botocore sends Streams requests to an account-based host
    (``<account>.streams-ddb.<region>...``) that moto's in-process mock does not
    recognise; the regional host it does is named explicitly. A served moto
    (``AWS_ENDPOINT_URL``, the local stack) routes by the request's target instead.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        region = boto3.session.Session().region_name or "us-east-1"
        endpoint = f"https://streams.dynamodb.{region}.amazonaws.com/"
    return boto3.client("dynamodbstreams", endpoint_url=endpoint)


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """A stream record as a pipe's filter and template see it (JSON, no datetimes)."""
    plain: dict[str, Any] = json.loads(json.dumps(record, default=str))
    return plain


POLL_SECONDS = 0.25
"""How often the local pipe reads the stream (a pipe polls about 4 times a second)."""


def run_in_background(
    pipe: LocalPipe,
    trim: Callable[[str], object] | None = None,
    upkeep: Callable[[], object] | None = None,
) -> threading.Thread:
    """Poll ``pipe`` for the life of the process (the local stack's), on a daemon
    thread; a failed poll leaves the records on the stream for the next one.

    ``trim(sequence_number)``, when given, is told after each poll how far the
    pipe has handled the stream, so the records it will never read again can go
    (``MotoServer.trim_stream``: the pipe is the stream's only reader); then
    ``upkeep()``, when given, runs (``MotoServer.upkeep``)."""

    def loop() -> None:
        while True:
            try:
                pipe.pump()
                if trim is not None:
                    for sequence_number in pipe.checkpoints.values():
                        if sequence_number:
                            trim(sequence_number)
                if upkeep is not None:
                    upkeep()
            except Exception:
                logger.debug("task-event pipe poll failed", exc_info=True)
            time.sleep(POLL_SECONDS)

    thread = threading.Thread(target=loop, name="task-event-pipe", daemon=True)
    thread.start()
    return thread
