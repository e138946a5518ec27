"""Ray's executor on a cluster of two nodes (``ray.cluster_utils.Cluster`` on this machine: a
head and a second node, one CPU and one timing unit each), joined by its address as a user
joins a real cluster: work goes to both nodes, no two timing tasks run on one node at once,
and a sweep writes the same models as this process. Skipped without the distributed extra."""

from __future__ import annotations

import time
from collections import defaultdict
from importlib import resources

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from onnxprune import pipeline  # noqa: E402
from onnxprune.evaluate import BenchOptions, sweep  # noqa: E402
from onnxprune.parallel import TIMING_RESOURCE, make_executor  # noqa: E402

from .test_parallel_ray import sweep_writes_as_here  # noqa: E402

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))
NODE = {"num_cpus": 1, "resources": {TIMING_RESOURCE: 1}}


@pytest.fixture(scope="module")
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    executor = make_executor("ray", 2, address=cluster.address)
    yield executor
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_THREADS", "1")    # as in each worker: the same bytes


def where_and_when(state, item):
    """A stand-in for a timing job: which node ran it, and from when to when."""
    start = time.time()
    time.sleep(0.5)
    return ray.get_runtime_context().get_node_id(), start, time.time()


def test_timing_jobs_use_both_nodes_and_never_share_one(two_nodes):
    assert two_nodes.describe()["nodes"] == 2
    assert not two_nodes.on_this_machine()     # a sweep's copies come back by the store
    spans = defaultdict(list)
    for node, start, end in two_nodes.map({}, where_and_when, list(range(8)), timing=True):
        spans[node].append((start, end))
    assert len(spans) == 2
    for runs in spans.values():
        runs.sort()
        assert all(later[0] >= earlier[1] for earlier, later in zip(runs, runs[1:]))


def test_a_sweep_on_two_nodes_writes_what_this_process_writes(two_nodes, tmp_path):
    assert sweep_writes_as_here(two_nodes, tmp_path)["settings"]["nodes"] == 2


def test_copies_pruned_on_other_nodes_come_back_to_be_timed_here(two_nodes):
    """Without --out-dir a node's disk is its own: the copies come back through the object
    store, wait in a folder here and are timed on this node; the rows are this process's."""
    rows = {}
    for name, executor in (("here", None), ("there", two_nodes)):
        options = pipeline.PruneOptions(executor=executor)
        result = sweep(DEMO, (0.3, 0.6), options, bench=BenchOptions(runs=3))
        rows[name] = [{k: v for k, v in r.items() if not k.startswith(("latency", "speedup",
                                                                        "efficiency"))}
                      for r in result["rows"]]
    assert rows["there"] == rows["here"]
    assert all(r["error"] is None and r["params"] for r in rows["there"])
