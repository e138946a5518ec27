"""Worker processes on this machine. They are started fresh ("spawn": a forked ONNX Runtime
thread pool can hang) on the first job and kept for the next ones (a sweep scores, then
prunes): starting a worker (importing onnx, ONNX Runtime and onnxprune) costs seconds. A job's
payload is written once to a file that every worker reads the first time it takes a chunk of
that job, then keeps with the state built from it. Each worker's ONNX Runtime sessions run on
one thread (``ONNXPRUNE_THREADS`` where set): start as many workers as there are cores."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import pickle
import shutil
import tempfile
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from ..progress import task
from .base import Executor, Failed, InProcess, chunk_indices, run_chunk, worker_threads

_STATE: tuple[str, object] | None = None     # (job token, state), in each worker process


def _start_worker(threads: int) -> None:
    os.environ["ONNXPRUNE_THREADS"] = str(threads)


def _run_chunk(token: str, path: str, setup, work, items):
    global _STATE
    if _STATE is None or _STATE[0] != token:
        _STATE = None                   # the previous job's state goes first
        with open(path, "rb") as f:
            payload = pickle.load(f)
        _STATE = (token, setup(payload) if setup else payload)
    return run_chunk(_STATE[1], work, items)


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
        self._folder = self._folder or tempfile.mkdtemp(prefix="onnxprune-jobs-")
        token = uuid.uuid4().hex
        path = os.path.join(self._folder, f"{token}.pickle")
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
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

    def _round(self, job, items, todo, results, step) -> list[list[int]]:
        """Run the chunks ``todo``; the chunks a dead worker took down (the pool is then
        started again for the next round)."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker, initargs=(worker_threads(),))
        futures = {self._pool.submit(_run_chunk, *job, [items[i] for i in part]): part
                   for part in todo}
        lost = []
        try:
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
        except BaseException:
            self._stop()                    # Ctrl-C: no worker goes on in the background
            raise
        if lost:
            self._stop()
        return lost

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
