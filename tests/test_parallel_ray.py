"""Ray's executor on a local Ray instance started in the test process
(``ray.init(num_cpus=2)``, with the timing resource): the same results as this process,
failures retried once then reported, timing refused on a cluster without the timing resource,
and Ctrl-C cancelling the cluster's tasks. Skipped without the distributed extra."""

from __future__ import annotations

import threading
import time
from importlib import resources

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from onnxprune import pipeline  # noqa: E402
from onnxprune.errors import UserError  # noqa: E402
from onnxprune.evaluate import BenchOptions, sweep  # noqa: E402
from onnxprune.parallel import TIMING_RESOURCE, Failed, make_executor  # noqa: E402

from .test_parallel import (_interrupt, broken, check_timed_groups, flaky,  # noqa: E402
                            slow)

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, resources={TIMING_RESOURCE: 1}, include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    yield make_executor("ray", 2)
    ray.shutdown()


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_THREADS", "1")    # as in each worker: the same bytes


def test_results_and_failures(cluster):
    assert cluster.map({}, flaky, [1, 2, 3]) == [10, 20, 30]
    got = cluster.map({}, broken, [1, 2, 3])
    assert got == [1, Failed("ValueError: item 2 is bad"), 3]
    assert cluster.describe()["nodes"] == 1
    assert cluster.on_this_machine()          # a sweep's workers write its copies here


def test_distortion_and_sweep_match_this_process(cluster, tmp_path):
    a = pipeline.analyze_model(DEMO)
    strategy = pipeline.Strategy("distortion")
    here = pipeline.score_model(a, strategy, "random", seed=3).scored.scores
    there = pipeline.score_model(a, strategy, "random", seed=3, executor=cluster).scored.scores
    np.testing.assert_array_equal(here, there)
    assert sweep_writes_as_here(cluster, tmp_path)["settings"]["executor"] == "ray"


def sweep_writes_as_here(executor, tmp_path) -> dict:
    """Sweeps with OBS in this process and on ``executor`` write the same models; returns the
    second sweep's result."""
    for name, runner in (("here", None), ("there", executor)):
        options = pipeline.PruneOptions(strategy=pipeline.Strategy("obs"), calib="random",
                                        executor=runner)
        result = sweep(DEMO, (0.3, 0.6), options, bench=BenchOptions(runs=3),
                       out_dir=tmp_path / name)
        assert not any(r["error"] for r in result["rows"])
    for ratio in (0.3, 0.6):
        name = f"demo_digits.r{ratio:g}.onnx"
        assert (tmp_path / "here" / name).read_bytes() == \
            (tmp_path / "there" / name).read_bytes()
    return result


def test_groups_are_timed_on_this_node_as_their_items_finish(cluster):
    """``map_then(..., overlap=True)`` on Ray: each group timed once, after its own items and
    before the last item is done, one group at a time."""
    results, timed = check_timed_groups(cluster, overlap=True)
    assert min(t[1] for t in timed) < max(r[2] for r in results if not isinstance(r, Failed))


def test_timing_needs_the_timing_resource(cluster, monkeypatch):
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(UserError, match=TIMING_RESOURCE):
        cluster.map({}, broken, [1], timing=True)


def test_ctrl_c_cancels_the_cluster_tasks(cluster, ctrl_c):
    threading.Timer(5.0, _interrupt).start()
    with pytest.raises(KeyboardInterrupt):
        cluster.map({}, slow, list(range(8)))
    start = time.perf_counter()         # both CPUs are free again at once
    assert cluster.map({}, flaky, [1, 2]) == [10, 20]
    assert time.perf_counter() - start < 20
