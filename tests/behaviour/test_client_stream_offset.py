"""The reference client's place in its agent stream: resync without a place,
resume from the highest contiguous sequence, a hole asks for a resume, a new
epoch asks for a resync, and each dispatch reaches the handler once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agent_channel_dev.client import AgentClient, ClientConfig, StreamOffset


def numbered(seq: int, epoch: str = "e1") -> dict[str, Any]:
    return {"type": "permission_decision", "request_id": "r", "seq": seq, "epoch": epoch}


def test_a_client_without_a_place_resyncs_then_resumes_from_its_place() -> None:
    offset = StreamOffset()
    assert offset.catch_up() == {"action": "resync"}
    offset.see({"type": "resynced", "seq": 4, "epoch": "e1", "task_ids": []})
    for seq in (5, 6):
        assert offset.see(numbered(seq)) is None
    assert offset.catch_up() == {"action": "resume", "after": 6, "epoch": "e1"}


def test_a_hole_asks_for_a_resume_once_and_closes_when_filled() -> None:
    offset = StreamOffset(epoch="e1", seq=1)
    assert offset.see(numbered(3)) == {"action": "resume", "after": 1, "epoch": "e1"}
    assert offset.see(numbered(4)) is None, "asked already"
    assert offset.seq == 1
    offset.see(numbered(2))
    offset.see({"type": "resumed", "after": 1, "seq": 4, "epoch": "e1", "sent": 3})
    assert offset.seq == 4 and not offset.beyond


def test_a_new_epoch_or_a_gap_asks_for_a_resync() -> None:
    offset = StreamOffset(epoch="e1", seq=9)
    assert offset.see(numbered(1, epoch="e2")) == {"action": "resync"}
    offset = StreamOffset(epoch="e1", seq=9)
    assert offset.see({"type": "history_gap", "after": 9, "epoch": "e1"}) == {"action": "resync"}


class RecordingSocket:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, frame: str) -> None:
        self.sent.append(json.loads(frame))


def test_each_dispatch_reaches_the_handler_once_and_every_copy_is_acked() -> None:
    handled: list[int] = []
    client = AgentClient(
        ClientConfig(url="ws://unused", token="t", agent_id=1),
        on_dispatch=lambda message: handled.append(message["task_id"]),
    )
    socket = RecordingSocket()
    client._socket = socket  # type: ignore[assignment]
    dispatch = {"type": "dispatch", "task_id": 7, "generation": 1, "seq": 1, "epoch": "e1"}

    async def scenario() -> None:
        await client._handle(dispatch)
        await client._handle({**dispatch, "redelivery": 1})
        await client._handle({k: v for k, v in dispatch.items() if k != "seq"} | {"resync": True})

    asyncio.run(scenario())
    assert handled == [7]
    assert client.duplicates == 2
    assert [frame for frame in socket.sent if frame["action"] == "ack"] == [
        {"action": "ack", "task_id": 7, "generation": 1}
    ] * 3
