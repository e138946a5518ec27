"""The executor interface, the chunked runner every backend shares, and the in-process
executor (one worker: the path that needs nothing but this process)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..progress import task

TIMING_RESOURCE = "onnxprune_timing"   # one per node: latency is never timed twice at once
CHUNKS_PER_WORKER = 4                  # items are cut into this many chunks per worker


@dataclass(frozen=True)
class Failed:
    """An item whose work raised, and raised again when retried: its error, in one line."""

    error: str


Work = Callable[[Any, Any], Any]       # work(state, item) -> result
Setup = Callable[[Any], Any] | None    # setup(payload) -> state, once per worker


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


def chunk_indices(count: int, workers: int) -> list[list[int]]:
    """Item indices cut into at most ``CHUNKS_PER_WORKER`` contiguous chunks per worker (some
    slack for items of unequal cost), none empty."""
    parts = max(1, min(count, workers * CHUNKS_PER_WORKER))
    bounds = [round(k * count / parts) for k in range(parts + 1)]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:]) if b > a]


def worker_threads() -> int:
    """ONNX Runtime threads of each worker's sessions: ``ONNXPRUNE_THREADS`` where it is set,
    else one (a worker per core). Results are the same bytes wherever the sessions have the
    same thread count: ONNX Runtime splits some float sums by thread, so one session on every
    core can differ from one on a single thread in the last digits."""
    value = os.environ.get("ONNXPRUNE_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


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

    def describe(self) -> dict:
        """What the report says about where the work ran."""
        return {"executor": self.kind, "workers": self.workers}

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
