"""Worker processes on this machine. They are started fresh ("spawn": a forked ONNX Runtime
thread pool can hang) on the first job and kept for the next ones (a sweep scores, then
prunes): starting a worker (importing onnx, ONNX Runtime and onnxprune) costs seconds. A job's
payload is written once to a file that every worker reads the first time it takes a chunk of
that job, then keeps with the state built from it. Each worker's ONNX Runtime sessions run on
one thread (``ONNXPRUNE_THREADS`` where set): start as many workers as there are cores.

With ``map_then(..., overlap=True)`` a sweep's timing takes turns with its prunes in the same
pool: whenever a worker is free, a group whose prunes are done is timed there (one group at
a time), else it takes the next chunk of prunes. Chunks are handed out one per free worker, so
a timing never waits behind queued prunes and never makes more busy processes than cores."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import pickle
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from ..heap import keep_freed_memory
from ..progress import task
from .base import (Executor, Failed, InProcess, Then, Turns, chunk_indices, run_chunk,
                   run_item, take_turns, worker_threads)

_STATES: dict[str, object] = {}     # job token → state, in each worker process
KEPT_STATES = 2                     # a sweep's prunes and its timing take turns in a worker


def _start_worker(threads: int) -> None:
    os.environ["ONNXPRUNE_THREADS"] = str(threads)
    keep_freed_memory()


def _state(token: str, path: str, setup):
    """This job's state: built from its payload file the first time this worker meets it; the
    oldest other job's goes first."""
    if token not in _STATES:
        while len(_STATES) >= KEPT_STATES:
            del _STATES[next(iter(_STATES))]
        with open(path, "rb") as f:
            payload = pickle.load(f)
        _STATES[token] = setup(payload) if setup else payload
    return _STATES[token]


def _run_chunk(token: str, path: str, setup, work, items):
    return run_chunk(_state(token, path, setup), work, items)


def _run_one(token: str, path: str, work, item):
    return run_item(_state(token, path, None), work, item)


class LocalProcesses(Executor):
    kind = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._folder: str | None = None
        atexit.register(self.close)

    def map(self, payload, work, items, setup=None, progress=None, description="",
            timing=False, here=False) -> list:
        if timing or len(items) < 2:     # latency is timed by one job at a time
            return InProcess().map(payload, work, items, setup, progress, description)
        token, path = self._payload_file(payload)
        results: list = [None] * len(items)
        todo = chunk_indices(len(items), self.workers)
        try:
            with task(progress, description, len(items)) as step:
                for _ in range(2):       # a pool whose worker died is started again once
                    todo = self._round((token, path, setup, work), items, todo, results, step)
                    if not todo:
                        break
        finally:
            os.unlink(path)
        for part in todo:
            for i in part:
                results[i] = Failed("the worker process died (out of memory?) twice")
        return results

    def _payload_file(self, payload) -> tuple[str, str]:
        """A job's token and the file its payload is written to, once."""
        self._folder = self._folder or tempfile.mkdtemp(prefix="onnxprune-jobs-")
        token = uuid.uuid4().hex
        path = os.path.join(self._folder, f"{token}.pickle")
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
        return token, path

    def map_then(self, payload, work, items, then: Then, progress=None, description="",
                 here=False, overlap=False) -> tuple[list, list]:
        if not overlap or len(items) < 2:
            return super().map_then(payload, work, items, then, progress, description, here)
        job = self._payload_file(payload)
        timing = self._payload_file(then.payload)
        turns = Turns(items, then, self.workers)
        try:
            with task(progress, description, len(items)) as step:
                for _ in range(2):       # a pool whose worker died is started again once
                    if not self._take_turns(job, timing, work, then.work, turns, step):
                        break
        finally:
            os.unlink(job[1])
            os.unlink(timing[1])
        turns.give_up()
        return turns.results, turns.timed

    def _take_turns(self, job, timing, work, timing_work, turns: Turns, step) -> bool:
        """Run ``turns`` on the pool until all is done (False) or a worker died (True: the
        pool is stopped, its lost work back in ``turns``)."""
        pool = self._started()

        def submit(turn):
            kind, what = turn
            if kind == "items":
                return pool.submit(_run_chunk, *job, None, work, [turns.items[i] for i in what])
            return pool.submit(_run_one, *timing, timing_work, turns.prepared[what])
        with self._stopped_on_error():
            died = take_turns(turns, submit, self.workers, step, lost=(BrokenProcessPool,))
        if died:
            self._stop()
        return died

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker, initargs=(worker_threads(),))
        return self._pool

    def _round(self, job, items, todo, results, step) -> list[list[int]]:
        """Run the chunks ``todo``; the chunks a dead worker took down (the pool is then
        started again for the next round)."""
        self._started()
        futures = {self._pool.submit(_run_chunk, *job, [items[i] for i in part]): part
                   for part in todo}
        lost = []
        with self._stopped_on_error():
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    part = futures[future]
                    try:
                        for i, value in zip(part, future.result()):
                            results[i] = value
                        step(len(part))
                    except BrokenProcessPool:
                        lost.append(part)
        if lost:
            self._stop()
        return lost

    @contextmanager
    def _stopped_on_error(self):
        """Ctrl-C (or any error) stops the pool: no worker goes on in the background."""
        try:
            yield
        except BaseException:
            self._stop()
            raise

    def _stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

