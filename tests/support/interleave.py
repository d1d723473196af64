"""Run handlers "at once", as many Lambda instances would, one storage call at a time.

Each actor runs in its own thread. Every DynamoDB, EventBridge Scheduler and
``@connections`` request an actor makes (through any botocore client: PynamoDB's or
boto3's), and every ``checkpoint`` it passes (a step outside AWS, such as API
Gateway completing a handshake), first pauses the actor; a controller then lets
exactly one paused actor proceed to its next request. So an
interleaving is a sequence of choices of which actor goes next, and every
sequence can be replayed.

``explore`` enumerates the interleavings depth-first (stateless model checking):
after each run it backtracks to the latest choice that still has an untried
option. Sleep sets (Godefroid's partial-order reduction) skip an option when it
only reorders independent requests (see footprint.py) relative to an option
already explored, so each class of equivalent interleavings runs once.
``random_chooser`` draws interleavings at random for larger scenarios.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import botocore.client

from agent_channel_dev.instruments.botocore_hooks import ApiCall, service_of, wrapping_api_calls
from tests.support.footprint import Footprint, footprint

Chooser = Callable[[list[tuple[str, Footprint]]], int]
ActorFn = Callable[[], Any]

_current = threading.local()
INTERLEAVED_SERVICES = frozenset({"dynamodb", "scheduler", "apigatewaymanagementapi"})
"""Every request that another Lambda instance could observe or be affected by is a
point where the actors may interleave: the table, grace schedules, and posts to
sockets (a post is what a client sees, and a Gone answer starts a disconnect)."""
TABLE_ONLY = frozenset({"dynamodb"})
QUIESCENCE_TIMEOUT = 20.0


class InterleavingError(AssertionError):
    """An actor raised, hung, or an invariant failed; carries the trace."""


@dataclass
class _Actor:
    name: str
    fn: ActorFn
    state: str = "new"  # running, paused, done
    pending_operation: str = ""
    pending_footprint: Footprint | None = None
    grant: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass
class Run:
    trace: list[tuple[str, str]]
    results: dict[str, Any]
    other_calls: list[tuple[str, str, str, dict[str, Any]]]

    def calls(
        self, service: str, operations: tuple[str, ...] = (), actor: str | None = None
    ) -> list[dict[str, Any]]:
        """Non-DynamoDB requests made, by service, operation and actor."""
        return [
            params
            for who, svc, op, params in self.other_calls
            if svc == service
            and (not operations or op in operations)
            and (actor is None or who == actor)
        ]


class Controller:
    def __init__(self, services: frozenset[str] = INTERLEAVED_SERVICES) -> None:
        self.services = services
        self.lock = threading.Condition()
        self.actors: list[_Actor] = []
        self.trace: list[tuple[str, str]] = []
        self.other_calls: list[tuple[str, str, str, dict[str, Any]]] = []

    def pause(
        self, actor: _Actor, operation: str, params: dict[str, Any], service: str = "dynamodb"
    ) -> None:
        with self.lock:
            actor.state = "paused"
            actor.pending_operation = operation
            actor.pending_footprint = footprint(operation, params, service)
            actor.grant.clear()
            self.lock.notify_all()
        actor.grant.wait()
        with self.lock:
            actor.state = "running"

    def _body(self, actor: _Actor) -> None:
        _current.actor = actor
        _current.controller = self
        try:
            actor.result = actor.fn()
        except BaseException as error:
            actor.error = error
        finally:
            with self.lock:
                actor.state = "done"
                self.lock.notify_all()

    def _quiesce(self) -> None:
        settled = self.lock.wait_for(
            lambda: all(a.state in ("new", "paused", "done") for a in self.actors),
            QUIESCENCE_TIMEOUT,
        )
        if not settled:
            raise InterleavingError(f"actors hung; trace so far: {self.trace}")

    def run(self, actors: list[tuple[str, ActorFn]], choose: Chooser) -> Run:
        self.actors = [_Actor(name, fn) for name, fn in actors]
        threads = [
            threading.Thread(target=self._body, args=(a,), name=a.name, daemon=True)
            for a in self.actors
        ]
        with self.lock:
            for actor, thread in zip(self.actors, threads, strict=True):
                actor.state = "running"
                thread.start()
                # Start actors one at a time so each reaches its first storage call
                # before the next begins: the start order is not a free choice.
                self._quiesce()
            while True:
                paused = [a for a in self.actors if a.state == "paused"]
                if not paused:
                    break
                options = [(a.name, a.pending_footprint or footprint("?", {})) for a in paused]
                chosen = paused[choose(options)]
                self.trace.append((chosen.name, chosen.pending_operation))
                chosen.state = "running"
                chosen.grant.set()
                self._quiesce()
        for thread in threads:
            thread.join(QUIESCENCE_TIMEOUT)
        failed = [a for a in self.actors if a.error is not None]
        if failed:
            raise InterleavingError(
                f"actor {failed[0].name} raised {failed[0].error!r}; trace: {self.trace}"
            ) from failed[0].error
        return Run(self.trace, {a.name: a.result for a in self.actors}, self.other_calls)


def checkpoint(operation: str, *resources: str) -> None:
    """A step of the current actor that is not an AWS request (API Gateway finishing
    a handshake, say): it pauses here like a request, and conflicts with requests
    that touch the same ``resources`` (a connection's ``@connections/<id>``)."""
    actor: _Actor | None = getattr(_current, "actor", None)
    controller: Controller | None = getattr(_current, "controller", None)
    if actor is not None and controller is not None:
        controller.pause(actor, operation, {"_resources": list(resources)})


def _intercept(
    client: botocore.client.BaseClient, operation: str, params: dict[str, Any], call: ApiCall
) -> Any:
    actor: _Actor | None = getattr(_current, "actor", None)
    controller: Controller | None = getattr(_current, "controller", None)
    service = service_of(client)
    if actor is not None and controller is not None:
        if service != "dynamodb":
            with controller.lock:
                controller.other_calls.append((actor.name, service, operation, dict(params)))
        if service in controller.services:
            controller.pause(actor, operation, params, service)
    return call(client, operation, params)


@contextmanager
def explaining(run: Run) -> Iterator[None]:
    """Checks of a finished run: a failed assertion becomes an InterleavingError
    carrying the run's trace, so the interleaving can be replayed."""
    try:
        yield
    except AssertionError as error:
        raise InterleavingError(f"{error}\ntrace: {run.trace}") from error


def run_once(
    actors: list[tuple[str, ActorFn]],
    choose: Chooser,
    services: frozenset[str] = INTERLEAVED_SERVICES,
) -> Run:
    """One interleaving; ``services`` are the ones whose requests are interleaving
    points (all by default; a scenario too big to explore exhaustively with every
    point may narrow it, and is then also run under random interleavings with all)."""
    with wrapping_api_calls(_intercept):
        return Controller(services).run(actors, choose)


@dataclass
class _Node:
    """A choice point on the current path of the depth-first search."""

    options: dict[str, Footprint]
    sleep: set[str]
    done: set[str] = field(default_factory=set)
    chosen: str = ""

    def untried(self) -> list[str]:
        return [name for name in self.options if name not in self.sleep | self.done]


def explore(run_one: Callable[[Chooser], None], *, limit: int = 20_000) -> int:
    """Run ``run_one`` under every interleaving (up to equivalence); return how many ran.

    ``run_one`` builds fresh state, runs its actors with the chooser it is given,
    and checks invariants (raising on a violation). Runs are deterministic, so a
    path of choices replays exactly.
    """
    path: list[_Node] = []
    runs = 0
    while True:
        depth = 0

        def choose(options: list[tuple[str, Footprint]]) -> int:
            nonlocal depth
            names = [name for name, _ in options]
            if depth < len(path):
                node = path[depth]
            else:
                sleep: set[str] = set()
                if path:
                    parent = path[-1]
                    chosen_op = parent.options[parent.chosen]
                    # An actor asleep (or already explored) at the parent stays
                    # asleep while what ran since is independent of its request.
                    sleep = {
                        name
                        for name in (parent.sleep | parent.done)
                        if name in dict(options) and dict(options)[name].independent_of(chosen_op)
                    }
                node = _Node(dict(options), sleep)
                untried = node.untried()
                node.chosen = untried[0] if untried else names[0]
                path.append(node)
            depth += 1
            return names.index(node.chosen)

        run_one(choose)
        runs += 1
        if runs >= limit:
            raise InterleavingError(f"more than {limit} interleavings; the scenario is too big")
        del path[depth:]
        while path:
            node = path[-1]
            node.done.add(node.chosen)
            untried = node.untried()
            if untried:
                node.chosen = untried[0]
                break
            path.pop()
        if not path:
            return runs


def random_chooser(seed: int) -> Chooser:
    rng = random.Random(seed)
    return lambda options: rng.randrange(len(options))
