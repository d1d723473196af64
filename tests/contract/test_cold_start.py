"""What a function's initialisation does, checked in a fresh interpreter per
function: no garbage collection during init, everything built by init frozen out
of later collections, one botocore session for every client (PynamoDB's
included), few dataclasses made, and nothing imported that the route never needs.
The timings themselves are benchmarks (bench/cold_start.py), not tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from agent_channel.lambda_kit import wiring
from agent_channel.storage.records import LeaseRecord, Record, TaskRecord

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = sorted(p.parent.name for p in (ROOT / "functions").glob("*/app.py"))

_PROBE = """
import gc, json, sys
collections = []
def record(phase, info):
    # Only collections once the function's first import (cold_start) is done count.
    if phase == "start" and "agent_channel.lambda_kit.cold_start" in sys.modules:
        collections.append(info["generation"])
gc.callbacks.append(record)
import dataclasses
made = []
process = dataclasses._process_class
def making(cls, *args, **kwargs):
    made.append(cls.__module__ + "." + cls.__qualname__)
    return process(cls, *args, **kwargs)
dataclasses._process_class = making
import app
print(json.dumps({
    "collections": collections,
    "dataclasses": made,
    "enabled": gc.isenabled(),
    "frozen": gc.get_freeze_count(),
    "modules": sorted(
        m for m in sys.modules if m.split(".")[0] in ("boto3", "pynamodb", "agent_channel")
    ),
}))
"""


@cache
def probe(function: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "functions" / function), str(ROOT / "lib")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT / "functions" / function,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("function", FUNCTIONS)
def test_init_runs_no_garbage_collection_and_freezes_what_it_built(function: str) -> None:
    found = probe(function)
    # Without cold_start, importing boto3 alone triggers dozens of collections.
    assert found["collections"] == []
    assert found["enabled"] is True
    assert found["frozen"] > 50_000
    # Clients come from botocore's session: boto3's import (about 12 ms) buys nothing.
    assert not {m for m in found["modules"] if m.split(".")[0] == "boto3"}


MAX_OWN_DATACLASSES = 3
"""The project's dataclasses a function's init may make: those a tuple cannot be,
mutable or with a ``__post_init__`` (the backend's ``CommandContext``, ``Caller``
and ``Redelivered``). The other value types are NamedTuples: on Python 3.12 each
frozen dataclass costs about 0.5 ms of CPU to make (presence/model.py)."""


@pytest.mark.parametrize("function", FUNCTIONS)
def test_init_makes_few_dataclasses(function: str) -> None:
    made = probe(function)["dataclasses"]
    own = [name for name in made if name.startswith("agent_channel.")]
    assert len(own) <= MAX_OWN_DATACLASSES, own
    # The libraries' own (botocore's plugin and client contexts, PynamoDB's
    # cancellation reason) come on top.
    assert len(made) <= MAX_OWN_DATACLASSES + 3, made


def test_routes_import_only_what_they_use() -> None:
    # $default answers on its own socket: no DynamoDB, no presence, no grace.
    modules = set(probe("default")["modules"])
    assert not {m for m in modules if m.startswith("pynamodb")}
    assert "agent_channel.presence.dynamodb" not in modules
    assert "agent_channel.grace.eventbridge" not in modules
    # Presence routes never post: no fan-out, no @connections client.
    for function in ("connect", "disconnect", "heartbeat"):
        modules = set(probe(function)["modules"])
        assert "agent_channel.delivery.poster" not in modules, function
        assert "agent_channel.delivery.fanout" not in modules, function


def test_every_client_shares_one_botocore_session(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions: list[botocore.session.Session] = []
    create_client = botocore.session.Session.create_client

    def recording(self: botocore.session.Session, *args: Any, **kwargs: Any) -> Any:
        sessions.append(self)
        return create_client(self, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "create_client", recording)
    for factory in (
        wiring.lambda_client,
        wiring.events_client,
        wiring.connections_admin,
        wiring.grace_scheduler,
    ):
        factory.cache_clear()
        factory()
        factory.cache_clear()
    assert len(sessions) == 4
    assert all(session is wiring.botocore_session() for session in sessions)
    # As at a cold start: no record class holds a connection yet (earlier tests'
    # requests may have given one to a class of its own; restored after).
    monkeypatch.setattr(Record, "_connection", None)
    for record_class in _subclasses(Record):
        if "_connection" in vars(record_class):
            monkeypatch.delattr(record_class, "_connection")
    wiring.dynamodb.cache_clear()
    wiring.dynamodb()
    connection = Record._get_connection().connection
    assert connection.session is wiring.botocore_session()
    # Record classes inherit the base's connection: one DynamoDB client in all.
    assert LeaseRecord._get_connection() is Record._get_connection()
    assert TaskRecord._get_connection().connection.client is connection.client


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]
