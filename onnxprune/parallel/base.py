"""The executor interface, the chunked runner every backend shares, and the in-process
executor (one worker: the path that needs nothing but this process)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from typing import Any

from ..progress import task

TIMING_RESOURCE = "onnxprune_timing"   # one per node: latency is never timed twice at once
CHUNKS_PER_WORKER = 4                  # items are cut into this many chunks per worker
TURNS_PER_WORKER = 16                  # finer where chunks take turns with timing (map_then)


@dataclass(frozen=True)
class Failed:
    """An item whose work raised, and raised again when retried: its error, in one line."""

    error: str


Work = Callable[[Any, Any], Any]       # work(state, item) -> result
Setup = Callable[[Any], Any] | None    # setup(payload) -> state, once per worker


@dataclass(frozen=True)
class Then:
    """Timing that follows groups of a job's items (a sweep times its pruned copies a group at
    a time): once every item of ``groups[g]`` is done, ``prepare(g, their results)`` (in this
    process) makes one item of them and ``work(payload, item)`` times it, under the timing
    rule (no two at once on a node). ``timed(g)``, where given, is called in this process once
    group ``g`` is timed (what was made for it can go)."""

    payload: Any
    work: Work
    groups: Sequence[Sequence[int]]
    prepare: Callable[[int, list], Any]
    description: str = "timing"
    timed: Callable[[int], None] | None = None


def _time_groups(shared, prepared: list) -> list:
    """Every group's timing, in order, in one job (one node times them all)."""
    payload, work = shared
    return [run_item(payload, work, item) for item in prepared]


def run_item(state, work: Work, item):
    """``work(state, item)``, retried once; a second failure comes back as :class:`Failed`."""
    error = None
    for _ in range(2):
        try:
            return work(state, item)
        except Exception as exc:  # noqa: BLE001 - reported as the item's result
            error = exc
    text = str(error).strip().splitlines()
    return Failed(f"{type(error).__name__}: {text[0]}" if text else type(error).__name__)


def run_chunk(state, work: Work, items: Sequence) -> list:
    return [run_item(state, work, item) for item in items]


def chunk_indices(count: int, workers: int, per_worker: int = CHUNKS_PER_WORKER
                  ) -> list[list[int]]:
    """Item indices cut into at most ``per_worker`` contiguous chunks per worker (some slack
    for items of unequal cost), none empty."""
    parts = max(1, min(count, workers * per_worker))
    bounds = [round(k * count / parts) for k in range(parts + 1)]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:]) if b > a]


def worker_threads() -> int:
    """ONNX Runtime threads of each worker's sessions: ``ONNXPRUNE_THREADS`` where it is set,
    else one (a worker per core). Results are the same bytes wherever the sessions have the
    same thread count: ONNX Runtime splits some float sums by thread, so one session on every
    core can differ from one on a single thread in the last digits."""
    value = os.environ.get("ONNXPRUNE_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


class Turns:
    """What is left of a job whose groups are timed as they complete: chunks of items to run,
    groups ready to be timed (one at a time, before any further chunk), and the results. The
    chunks are finer than ``map``'s (``TURNS_PER_WORKER``): a group is ready sooner, and the
    last chunks leave less of a worker idle while the last groups are timed."""

    def __init__(self, items, then: Then, workers: int):
        self.items, self.then = items, then
        self.results: list = [None] * len(items)
        self.timed: list = [None] * len(then.groups)
        self.prepared: dict[int, object] = {}
        self.chunks = deque(chunk_indices(len(items), workers, TURNS_PER_WORKER))
        self.waiting = [set(group) for group in then.groups]
        self.ready: deque[int] = deque(g for g, group in enumerate(then.groups) if not group)
        self.timing = False
        for g in self.ready:
            self.prepared[g] = then.prepare(g, [])

    def left(self) -> bool:
        return bool(self.chunks or self.ready)

    def next(self):
        """("group", g) when a group is ready and none is being timed, else ("items", chunk),
        else None."""
        if self.ready and not self.timing:
            self.timing = True
            return "group", self.ready.popleft()
        if self.chunks:
            return "items", self.chunks.popleft()
        return None

    def finish(self, turn, value) -> None:
        kind, what = turn
        if kind == "group":
            self.timing = False
            self.timed[what] = value
            self.prepared.pop(what, None)
            if self.then.timed:
                self.then.timed(what)
            return
        for i, result in zip(what, value):
            self.results[i] = result
        for g, waiting in enumerate(self.waiting):
            if waiting and not waiting.isdisjoint(what):
                waiting.difference_update(what)
                if not waiting:
                    group = self.then.groups[g]
                    self.prepared[g] = self.then.prepare(g, [self.results[i] for i in group])
                    self.ready.append(g)

    def lost(self, turn) -> None:
        """A turn whose worker died goes back to be run again (once: see ``give_up``)."""
        kind, what = turn
        if kind == "group":
            self.timing = False
            self.ready.appendleft(what)
        else:
            self.chunks.appendleft(what)

    def give_up(self) -> None:
        """What is still not done after the second pool: failed, not silently missing."""
        error = Failed("the worker process died (out of memory?) twice")
        for part in self.chunks:
            for i in part:
                self.results[i] = error
        self.timed = [error if t is None else t for t in self.timed]
        self.chunks.clear()
        self.ready.clear()


def take_turns(turns: Turns, submit: Callable, workers: int, step, lost: tuple = ()) -> bool:
    """Hand ``turns`` out to at most ``workers`` workers at once (``submit(turn)`` returns a
    concurrent future), one turn per free worker so that a ready group never waits behind
    queued chunks. Returns True when a future raised one of ``lost`` (its worker died: the
    turn went back, nothing more was handed out), else False once all is done. Any other
    error of a future fails its turn's items."""
    running: dict = {}
    died = False
    while turns.left() or running:
        while not died and len(running) < workers:
            turn = turns.next()
            if turn is None:
                break
            running[submit(turn)] = turn
        if not running:
            break
        done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
        for future in done:
            turn = running.pop(future)
            try:
                value = future.result()
            except lost:
                turns.lost(turn)
                died = True
                continue
            except Exception as exc:  # noqa: BLE001 - the turn's items fail, the job goes on
                text = str(exc).strip().splitlines()
                failed = Failed(f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": "))
                value = failed if turn[0] == "group" else [failed] * len(turn[1])
            turns.finish(turn, value)
            if turn[0] == "items":
                step(len(turn[1]))
    return died


class Executor(ABC):
    """Runs ``work(state, item)`` for every item; ``state`` is ``setup(payload)`` (or the
    payload itself), made once per worker. Results come back in the order of ``items``."""

    kind: str = ""
    workers: int = 1

    @abstractmethod
    def map(self, payload, work: Work, items: Sequence, setup: Setup = None, progress=None,
            description: str = "", timing: bool = False, here: bool = False) -> list:
        """``timing``: the work measures latency, so no two such items run on one node at
        once (locally: one after the other, in this process). ``here``: the work reads files
        this process wrote, so it runs on this machine (a cluster's other nodes cannot see
        them)."""

    def map_then(self, payload, work: Work, items: Sequence, then: Then, progress=None,
                 description: str = "", here: bool = False, overlap: bool = False
                 ) -> tuple[list, list]:
        """``map`` the items, then time each of ``then.groups`` (see :class:`Then`): the
        items' results and the groups' results. By default every item is done before the
        first group is timed, and the groups are timed one after the other in one timing job
        (on this machine with ``here``), which runs beside nothing else of this job.
        ``overlap``: a group is timed as soon as its items are done, on this machine, by one
        worker while the others go on with the items (one group at a time; executors that
        cannot overlap ignore it): on a few cores this saves the serial timing at the end,
        at the price of timing beside other work."""
        results = self.map(payload, work, items, progress=progress, description=description)
        prepared = [then.prepare(g, [results[i] for i in group])
                    for g, group in enumerate(then.groups)]
        timed = self.map((then.payload, then.work), _time_groups, [prepared], timing=True,
                         here=here, progress=progress, description=then.description)[0]
        if isinstance(timed, Failed):
            timed = [timed] * len(prepared)
        if then.timed:
            for g in range(len(prepared)):
                then.timed(g)
        return results, timed

    def describe(self) -> dict:
        """What the report says about where the work ran."""
        return {"executor": self.kind, "workers": self.workers}

    def on_this_machine(self) -> bool:
        """Does all work run on this machine, so that a file this process can read is one a
        worker can write (and the other way round)?"""
        return True

    def close(self) -> None:
        return None


class InProcess(Executor):
    """Everything in this process, one item after another."""

    kind = "local"

    def map(self, payload, work, items, setup=None, progress=None, description="",
            timing=False, here=False) -> list:
        state = setup(payload) if setup else payload
        out = []
        with task(progress, description, len(items)) as step:
            for item in items:
                out.append(run_item(state, work, item))
                step()
        return out
