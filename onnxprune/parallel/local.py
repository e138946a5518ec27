"""Worker processes on this machine. Each is started fresh ("spawn": a forked ONNX Runtime
thread pool can hang), receives the payload once through its initializer, builds its state
once, and then runs chunks of items. Each worker's ONNX Runtime sessions run on one thread
(``ONNXPRUNE_THREADS`` where set): start as many workers as there are cores."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from ..progress import task
from .base import Executor, Failed, InProcess, chunk_indices, run_chunk, worker_threads

_STATE = None


def _start_worker(payload: bytes, setup, threads: int) -> None:
    global _STATE
    os.environ["ONNXPRUNE_THREADS"] = str(threads)
    value = pickle.loads(payload)
    _STATE = setup(value) if setup else value


def _run_chunk(work, items):
    return run_chunk(_STATE, work, items)


class LocalProcesses(Executor):
    kind = "local"

    def __init__(self, workers: int):
        self.workers = workers

    def map(self, payload, work, items, setup=None, progress=None, description="",
            timing=False) -> list:
        if timing or len(items) < 2:     # latency is timed by one job at a time
            return InProcess().map(payload, work, items, setup, progress, description)
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        results: list = [None] * len(items)
        todo = chunk_indices(len(items), self.workers)
        with task(progress, description, len(items)) as step:
            for attempt in range(2):         # a pool whose worker died is started again once
                todo = self._round(data, setup, work, items, todo, results, step)
                if not todo:
                    break
            for part in todo:
                for i in part:
                    results[i] = Failed("the worker process died (out of memory?) twice")
        return results

    def _round(self, data, setup, work, items, todo, results, step) -> list[list[int]]:
        """Run the chunks ``todo`` in a fresh pool; the chunks a dead worker took down."""
        pool = ProcessPoolExecutor(min(self.workers, len(todo)),
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker,
                                   initargs=(data, setup, worker_threads()))
        futures = {pool.submit(_run_chunk, work, [items[i] for i in part]): part
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
            _stop(pool)                     # Ctrl-C: no worker goes on in the background
            raise
        pool.shutdown(wait=True)
        return lost


def _stop(pool: ProcessPoolExecutor) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
