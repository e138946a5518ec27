"""Ray core tasks, on a cluster (``ray.init(address=...)``) or on a Ray instance started in
this process. Ray is an optional extra (``pip install 'onnxprune[distributed]'``); nothing
else imports this module.

The payload is put in the object store once; a task carries a reference to it (boxed, so
that Ray does not resolve it per task) and each worker process fetches it and builds its
state once per job, then runs chunk after chunk. A task whose worker dies is retried once by
Ray, an item that raises once by the chunk runner. Timing tasks ask for one unit of the
``onnxprune_timing`` resource, which every node must offer exactly once
(``ray start --resources='{"onnxprune_timing": 1}'``): no two time on one node at once. Work
that reads files this process wrote runs on this process's node. With ``map_then(...,
overlap=True)`` a sweep's groups are timed on this node as soon as their prunes are done, in
turn with the prunes (at most ``workers`` tasks at once, a ready group first).
Ctrl-C cancels the job's tasks on the cluster.
"""

from __future__ import annotations

import os
import uuid

from ..errors import UserError
from ..heap import keep_freed_memory
from ..progress import task
from .base import (TIMING_RESOURCE, Executor, Failed, Then, Turns, chunk_indices, run_chunk,
                   take_turns, worker_threads)

_STATES: dict[str, object] = {}     # job token → state, in each worker process
KEPT_STATES = 2                     # a sweep's prunes and its timing take turns in a worker


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'onnxprune[distributed]'") \
            from None
    return ray


def _run_chunk(token: str, boxed: list, setup, work, items, threads: int):
    os.environ["ONNXPRUNE_THREADS"] = str(threads)
    keep_freed_memory()
    if token not in _STATES:
        import ray

        payload = ray.get(boxed[0])
        while len(_STATES) >= KEPT_STATES:  # the oldest other job's state goes first
            del _STATES[next(iter(_STATES))]
        _STATES[token] = setup(payload) if setup else payload
    return run_chunk(_STATES[token], work, items)


def _run_one(token: str, boxed: list, work, item, threads: int):
    return _run_chunk(token, boxed, None, work, [item], threads)[0]


def _blas_threads() -> dict[str, str]:
    """numpy's BLAS threads in the tasks as in this process (Ray would set one per CPU the
    task asks for): a float sum split over another number of threads can differ in its last
    digits, and the results must be the same bytes as a local run."""
    default = str(os.cpu_count() or 1)
    return {name: os.environ.get(name, default)
            for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


class RayExecutor(Executor):
    kind = "ray"

    def __init__(self, workers: int, address: str | None = None):
        ray = _ray()
        self.workers, self.started = workers, False
        address = address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
                else:
                    ray.init(num_cpus=workers, resources={TIMING_RESOURCE: 1},
                             include_dashboard=False, logging_level="ERROR",
                             log_to_driver=False)
                    self.started = True
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                first = str(exc).strip().splitlines()
                raise UserError(f"cannot start or join {where}: "
                                f"{first[0] if first else type(exc).__name__}") from None
        self.address = address

    def describe(self) -> dict:
        ray = _ray()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return {"executor": "ray", "workers": self.workers, "nodes": len(nodes),
                "cluster_cpus": ray.cluster_resources().get("CPU", 0),
                "timing": f"one '{TIMING_RESOURCE}' unit per node: timing tasks never "
                          f"share a node"}

    def on_this_machine(self) -> bool:
        """Only where every live node of the cluster is this process's node (a local Ray
        instance): a sweep's copies then go through this disk, not the object store."""
        ray = _ray()
        here = ray.get_runtime_context().get_node_id()
        return all(node["NodeID"] == here for node in ray.nodes() if node.get("Alive"))

    def _options(self, timing: bool = False, here: bool = False) -> dict:
        """The task options: a worker's threads, one retry, this process's BLAS threads;
        timing tasks ask for the timing unit, ``here`` pins a task to this node."""
        ray = _ray()
        options = {"num_cpus": worker_threads(), "max_retries": 1,
                   "runtime_env": {"env_vars": _blas_threads()}}
        if timing:
            if ray.cluster_resources().get(TIMING_RESOURCE, 0) < 1:
                raise UserError(f"the Ray cluster offers no '{TIMING_RESOURCE}' resource, "
                                f"which timing needs once per node: start each node with "
                                f"ray start --resources='{{\"{TIMING_RESOURCE}\": 1}}'")
            options["resources"] = {TIMING_RESOURCE: 1}
        if here:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False)
        return options

    def map(self, payload, work, items, setup=None, progress=None, description="",
            timing=False, here=False) -> list:
        ray = _ray()
        threads = worker_threads()
        options = self._options(timing, here)
        remote = ray.remote(_run_chunk).options(**options)
        boxed, token = [ray.put(payload)], uuid.uuid4().hex
        parts = chunk_indices(len(items), self.workers)
        refs = {remote.remote(token, boxed, setup, work, [items[i] for i in part], threads): part
                for part in parts}
        results: list = [None] * len(items)
        pending = list(refs)
        try:
            with task(progress, description, len(items)) as step:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                    for ref in done:
                        part = refs[ref]
                        try:
                            values = ray.get(ref)
                        except ray.exceptions.RayError as exc:   # the retry died too
                            text = str(exc).strip().splitlines()
                            values = [Failed(f"Ray task failed: {text[0] if text else exc}")
                                      ] * len(part)
                        for i, value in zip(part, values):
                            results[i] = value
                        step(len(part))
        except BaseException:
            for ref in pending:             # Ctrl-C: stop the cluster's tasks too
                ray.cancel(ref, force=True)
            raise
        return results

    def map_then(self, payload, work, items, then: Then, progress=None, description="",
                 here=False, overlap=False) -> tuple[list, list]:
        if not overlap or len(items) < 2:
            return super().map_then(payload, work, items, then, progress, description, here)
        ray = _ray()
        threads = worker_threads()
        prune = ray.remote(_run_chunk).options(**self._options())
        timer = ray.remote(_run_one).options(**self._options(timing=True, here=True))
        job, timing = ([ray.put(payload)], uuid.uuid4().hex), ([ray.put(then.payload)],
                                                                uuid.uuid4().hex)
        turns = Turns(items, then, self.workers)
        refs = []

        def submit(turn):
            kind, what = turn
            if kind == "items":
                ref = prune.remote(job[1], job[0], None, work, [items[i] for i in what], threads)
            else:
                ref = timer.remote(timing[1], timing[0], then.work, turns.prepared[what],
                                   threads)
            refs.append(ref)
            return ref.future()
        try:
            with task(progress, description, len(items)) as step:
                take_turns(turns, submit, self.workers, step)
        except BaseException:
            ready = ray.wait(refs, num_returns=len(refs), timeout=0)[0] if refs else []
            for ref in set(refs) - set(ready):  # Ctrl-C: stop the cluster's tasks too
                ray.cancel(ref, force=True)
            raise
        return turns.results, turns.timed

    def close(self) -> None:
        if self.started:
            _ray().shutdown()
