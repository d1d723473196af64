"""The reference agent client: what an MCP plugin embeds to serve one session.

It connects with the owner's bearer token, sends a heartbeat every
``heartbeat_seconds``, reconnects with jittered exponential backoff (1 s
doubling to 60 s, reset once a connection has stayed up), and after every
(re)connect replays the permission requests it still holds pending, so a
decision pushed while its socket was down is not lost. Decisions for ids it
does not hold are dropped. Dispatches and decisions reach the embedder through
callbacks. See docs/PROTOCOL.md for the wire protocol.

The agent stream is reliable: after every connect the client resumes from the
last sequence it saw (or resyncs from state when it has none, or when the server
answers ``history_gap``), acknowledges each dispatch it takes, and de-duplicates
by sequence and by (task, generation), so the handler sees each dispatch once
however many times it arrives (a live push, a resume, a redelivery, a resync).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection

from agent_channel.config import API_GATEWAY_FRAME_LIMIT, MAX_REPLAY_IDS

Message = dict[str, Any]
Callback = Callable[[Message], Awaitable[None] | None]

ASK_AGAIN_SECONDS = 5.0
"""A resume or resync unanswered this long was lost with its socket: ask again."""

PERMANENT_REFUSALS = frozenset({400, 401, 403})
"""Upgrade answers that retrying cannot fix: bad parameters, token, or agent."""


def replay_frames(
    request_ids: list[str],
    *,
    max_ids: int = MAX_REPLAY_IDS,
    frame_limit: int = API_GATEWAY_FRAME_LIMIT,
) -> list[str]:
    """``replay_permissions`` frames for ``request_ids``: as few as possible, each
    with at most ``max_ids`` ids and at most ``frame_limit`` bytes (API Gateway
    closes the socket with 1009 on a bigger frame, and the client would reconnect
    and resend it forever)."""
    frames: list[str] = []
    batch: list[str] = []

    def encoded(ids: list[str]) -> str:
        return json.dumps({"action": "replay_permissions", "request_ids": ids})

    for request_id in request_ids:
        candidate = [*batch, request_id]
        if batch and (
            len(candidate) > max_ids or len(encoded(candidate).encode("utf-8")) > frame_limit
        ):
            frames.append(encoded(batch))
            candidate = [request_id]
        batch = candidate
    if batch:
        frames.append(encoded(batch))
    return frames


class ConnectRefused(Exception):
    """The gateway refused the upgrade for good (400, 401 or 403)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"connection refused with HTTP {status}")
        self.status = status


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff: ``first`` doubling up to ``cap``."""

    first: float = 1.0
    cap: float = 60.0
    throttled_cap: float = 300.0
    """The ceiling after a 429 on the upgrade: the account's new-connection rate is
    spent, as in a reconnect storm, where the whole fleet waits for admission and
    admission paces the storm; retrying sooner only adds refused upgrades to the
    account's request quota (docs/SCALE.md)."""

    def delay(self, failures: int, *, throttled: bool = False) -> float:
        cap = self.throttled_cap if throttled else self.cap
        ceiling = min(cap, self.first * 2.0 ** min(failures, 16))
        # Equal jitter: never less than half the step (no hot loop), and spread
        # so many plugins cut off together do not come back in lockstep.
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class ClientConfig:
    url: str
    """``ws://HOST:PORT/STAGE`` or ``wss://API.execute-api.REGION.amazonaws.com/STAGE``."""
    token: str
    agent_id: int
    session_id: str = ""
    heartbeat_seconds: float = 30.0
    """As the server advertises (HEARTBEAT_SECONDS): a lease is stale 45 s after
    the last one, so a heartbeat may come up to 15 s late (docs/SCALE.md)."""
    backoff: Backoff = field(default_factory=Backoff)
    stable_after_seconds: float = 30.0
    """A connection up this long resets the backoff to ``backoff.first``."""
    token_in_query: bool = False
    """Send the token as ``?token=`` instead of ``Authorization: Bearer``."""

    def connect_url(self) -> str:
        query: dict[str, str] = {"agent_id": str(self.agent_id)}
        if self.session_id:
            query["session_id"] = self.session_id
        if self.token_in_query:
            query["token"] = self.token
        return f"{self.url}?{urlencode(query)}"

    def headers(self) -> dict[str, str]:
        return {} if self.token_in_query else {"Authorization": f"Bearer {self.token}"}


async def _call(callback: Callback | None, message: Message) -> None:
    if callback is None:
        return
    result = callback(message)
    if result is not None:
        await result


class AgentClient:
    def __init__(
        self,
        config: ClientConfig,
        *,
        on_dispatch: Callback | None = None,
        on_decision: Callback | None = None,
        on_error: Callback | None = None,
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._on_dispatch = on_dispatch
        self._on_decision = on_decision
        self._on_error = on_error
        self._on_state = on_state or (lambda state: None)
        self._pending: set[str] = set()
        self._socket: ClientConnection | None = None
        self.connected = asyncio.Event()
        self.connections = 0
        """How many times a connection was established (1 + reconnects)."""
        self.offset = StreamOffset()
        self._taken: set[tuple[int, int]] = set()
        """(task_id, generation) of every dispatch handed to the handler."""
        self.duplicates = 0
        """Dispatches that arrived again after being handled (dropped, re-acked)."""

    # -- what the plugin tells the client ------------------------------------

    def hold(self, request_id: str) -> None:
        """A permission request now waits for a human's decision."""
        self._pending.add(request_id)

    def release(self, request_id: str) -> None:
        """The plugin no longer waits for this decision."""
        self._pending.discard(request_id)

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._pending)

    async def send(self, message: Message) -> None:
        """Send a frame on the current connection (dropped when there is none)."""
        if self._socket is not None:
            await self._socket.send(json.dumps(message))

    # -- the connection loop -------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Stay connected until ``stop`` is set. Raises ConnectRefused when the
        gateway refuses for good."""
        stop = stop or asyncio.Event()
        failures = 0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            throttled = False
            try:
                await self._session(stop)
                if not stop.is_set():
                    self._on_state("disconnected by the server")
            except websockets.InvalidStatus as error:
                status = error.response.status_code
                if status in PERMANENT_REFUSALS:
                    self._on_state(f"refused {status}")
                    raise ConnectRefused(status) from error
                throttled = status == 429
                self._on_state(f"refused {status}; retrying")
            except (OSError, websockets.WebSocketException, TimeoutError) as error:
                self._on_state(f"connection lost ({type(error).__name__})")
            if stop.is_set():
                break
            if loop.time() - started >= self.config.stable_after_seconds:
                failures = 0
            delay = self.config.backoff.delay(failures, throttled=throttled)
            failures += 1
            self._on_state(f"reconnecting in {delay:.1f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _session(self, stop: asyncio.Event) -> None:
        async with websockets.connect(
            self.config.connect_url(),
            additional_headers=self.config.headers(),
            open_timeout=10,
        ) as socket:
            self._socket = socket
            self.connections += 1
            self.connected.set()
            self._on_state("connected")
            heartbeat = asyncio.create_task(self._heartbeat(socket))
            stopper = asyncio.create_task(stop.wait())
            try:
                await self._catch_up(socket)
                await self._replay(socket)
                reader = asyncio.create_task(self._read(socket))
                done, _ = await asyncio.wait(
                    {reader, stopper, heartbeat}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in (reader, heartbeat):
                    if task in done:
                        task.result()  # a failure of either ends this connection
                reader.cancel()
            finally:
                self.connected.clear()
                self._socket = None
                heartbeat.cancel()
                stopper.cancel()
            if stop.is_set():
                await socket.close()

    async def _catch_up(self, socket: ClientConnection) -> None:
        # After every (re)connect: what the stream sent while this socket was down
        # comes back only if asked for.
        await socket.send(json.dumps(self.offset.catch_up()))

    async def _replay(self, socket: ClientConnection) -> None:
        # After every (re)connect: a decision pushed while the socket was down
        # comes back only if asked for.
        for frame in replay_frames(sorted(self._pending)):
            await socket.send(frame)

    async def _heartbeat(self, socket: ClientConnection) -> None:
        while True:
            await socket.send(json.dumps({"action": "heartbeat"}))
            await asyncio.sleep(self.config.heartbeat_seconds)

    async def _read(self, socket: ClientConnection) -> None:
        async for frame in socket:
            try:
                message = json.loads(frame)
            except ValueError:
                continue
            if isinstance(message, dict):
                await self._handle(message)

    async def _handle(self, message: Message) -> None:
        kind = message.get("type")
        follow_up = self.offset.see(message)
        if kind == "dispatch":
            await self._take(message)
        elif kind in ("history_gap", "resynced", "resumed"):
            pass  # bookkeeping only (StreamOffset)
        elif kind == "permission_decision":
            request_id = message.get("request_id")
            if not isinstance(request_id, str) or request_id not in self._pending:
                return  # not ours (any more): replay is idempotent by design
            self._pending.discard(request_id)
            await _call(self._on_decision, message)
        elif kind == "error":
            await _call(self._on_error, message)
        if follow_up is not None:
            await self.send(follow_up)

    async def _take(self, message: Message) -> None:
        """Acknowledge the dispatch, then hand it to the handler once."""
        task_id, generation = message.get("task_id"), message.get("generation", 0)
        if not isinstance(task_id, int) or not isinstance(generation, int):
            return
        if generation:
            # Every copy is acknowledged: an ack lost with a dying socket is
            # repaired by the redelivery it causes.
            await self.send({"action": "ack", "task_id": task_id, "generation": generation})
        key = (task_id, generation)
        if key in self._taken:
            self.duplicates += 1
            return
        self._taken.add(key)
        await _call(self._on_dispatch, message)


@dataclass
class StreamOffset:
    """Where this client is in its agent stream: the epoch and the highest sequence
    up to which it has seen every message, plus those seen beyond a hole."""

    epoch: str | None = None
    seq: int | None = None
    """None until the first resync: the client has no place in the stream yet."""
    beyond: set[int] = field(default_factory=set)
    asked_at: float | None = None
    """When a resume or resync was last asked for: don't ask again for the same hole
    until its answer came, or until it must have been lost."""

    @property
    def asked(self) -> bool:
        return self.asked_at is not None and time.monotonic() - self.asked_at < ASK_AGAIN_SECONDS

    @asked.setter
    def asked(self, value: bool) -> None:
        self.asked_at = time.monotonic() if value else None

    def catch_up(self) -> Message:
        """The frame to send after a connect."""
        self.asked = True
        if self.seq is None or self.epoch is None:
            return {"action": "resync"}
        return {"action": "resume", "after": self.seq, "epoch": self.epoch}

    def see(self, message: Message) -> Message | None:
        """Account for a message; the frame to send to fill a hole, if any."""
        kind = message.get("type")
        if kind == "resynced":
            self.epoch, self.seq = message.get("epoch"), int(message.get("seq") or 0)
            self.beyond = {s for s in self.beyond if s > self.seq}
            self.asked = False
            self._advance()
            return None
        if kind == "resumed":
            self.asked = False
            return None
        if kind == "history_gap":
            self.asked = True
            return {"action": "resync"}
        seq, epoch = message.get("seq"), message.get("epoch")
        if not isinstance(seq, int) or not isinstance(epoch, str) or self.seq is None:
            return None  # outside the numbered stream, or no place in it yet
        if epoch != self.epoch:
            # The stream was renumbered (its history expired): start again from state.
            if self.asked:
                return None
            self.asked = True
            return {"action": "resync"}
        if seq > self.seq:
            self.beyond.add(seq)
            self._advance()
        if self.beyond and not self.asked:
            # A hole: something between was lost (a dropped post). Ask for it.
            self.asked = True
            return {"action": "resume", "after": self.seq, "epoch": self.epoch}
        return None

    def _advance(self) -> None:
        assert self.seq is not None
        while self.seq + 1 in self.beyond:
            self.seq += 1
            self.beyond.discard(self.seq)
