"""Executors (``onnxprune.parallel``): local worker processes give byte-identical results to
this process for distortion scores, sensitivity and sweeps; an item that fails is retried
once and then reported; Ctrl-C leaves no worker running; the CLI flags and their errors.
Ray's backend is tested in ``test_parallel_ray.py``."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune import pipeline
from onnxprune.cli import main
from onnxprune.errors import UserError
from onnxprune.evaluate import BenchOptions, sweep
from onnxprune.parallel import Failed, InProcess, Then, make_executor
from onnxprune.parallel.base import chunk_indices
from onnxprune.runtime import count_cost

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))
CALIB = "random"


def flaky(state, item):
    """Fails the first time it sees an item in this process, then works."""
    seen = state.setdefault("seen", set())
    if item not in seen:
        seen.add(item)
        raise RuntimeError(f"first try of {item}\nsecond line")
    return item * 10


def broken(state, item):
    if item == 2:
        raise ValueError("item 2 is bad\nmore detail")
    return item


def die_once(state, item):
    """Kills its worker process the first time item 3 comes (a marker file remembers)."""
    marker = Path(state["marker"])
    if item == 3 and not marker.exists():
        marker.write_text("died")
        os._exit(1)
    return item


def slow(state, item):
    time.sleep(30)
    return item


def stamped(state, item):
    """An item that takes a while: its value and when it ran (this machine's clock)."""
    start = time.time()
    time.sleep(state["pause"])
    if item == state.get("bad"):
        raise ValueError(f"item {item} is bad")
    return item, start, time.time()


def timed_group(state, prepared):
    """A 'timing' of a group: what it was given and when it ran."""
    start = time.time()
    time.sleep(state["pause"])
    return prepared, start, time.time()


def group_prepare(group, results):
    return [r if isinstance(r, Failed) else r[0] for r in results]


def check_timed_groups(executor, overlap: bool) -> tuple[list, list]:
    """``map_then`` of 12 items in groups of 3: each group timed once, with its own items'
    results, one group at a time, and told to this process once timed (taking turns: before
    the next group's timing starts); returns (items' results, groups' results)."""
    items = list(range(12))
    groups = [items[i:i + 3] for i in range(0, 12, 3)] + [[]]
    told: list[tuple[int, float]] = []
    then = Then({"pause": 0.3}, timed_group, groups, group_prepare,
                timed=lambda g: told.append((g, time.time())))
    results, timed = executor.map_then({"pause": 0.3, "bad": 4}, stamped, items, then,
                                       overlap=overlap)
    assert sorted(g for g, _ in told) == list(range(len(groups)))
    turns = overlap and executor.workers > 1
    for g, when in told:
        assert when >= timed[g][2]
        assert not turns or all(when <= t[1] for t in timed if t[1] >= timed[g][2])
    assert [r if isinstance(r, Failed) else r[0] for r in results] == \
        [0, 1, 2, 3, Failed("ValueError: item 4 is bad"), *range(5, 12)]
    assert [t[0] for t in timed] == [group_prepare(g, [results[i] for i in group])
                                     for g, group in enumerate(groups)]
    spans = sorted(t[1:] for t in timed)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))   # never two at once
    for t, group in zip(timed, groups):                          # after its own items
        assert all(t[1] >= results[i][2] for i in group if not isinstance(results[i], Failed))
    return results, timed


def _interrupt():
    """Ctrl-C: SIGINT to this process."""
    os.kill(os.getpid(), signal.SIGINT)


def test_chunks_cover_every_item_once_in_order():
    for count, workers in ((1, 4), (7, 2), (100, 3)):
        parts = chunk_indices(count, workers)
        assert [i for p in parts for i in p] == list(range(count))
        assert all(parts) and len(parts) <= workers * 4


@pytest.mark.parametrize("workers", [1, 2])
def test_an_item_is_retried_once_then_reported(workers):
    executor = make_executor("local", workers)
    assert executor.map({}, flaky, [1, 2, 3]) == [10, 20, 30]
    got = executor.map({}, broken, [1, 2, 3])
    executor.close()
    assert got[0] == 1 and got[2] == 3
    assert got[1] == Failed("ValueError: item 2 is bad")


def test_a_dead_worker_is_replaced_and_its_chunk_run_again(tmp_path):
    executor = make_executor("local", 2)
    assert executor.map({"marker": str(tmp_path / "m")}, die_once, list(range(6))) == \
        list(range(6))
    assert (tmp_path / "m").exists()
    assert executor.map({}, flaky, [1, 2]) == [10, 20]     # the pool works on
    executor.close()


@pytest.mark.parametrize("overlap", [False, True])
def test_groups_are_timed_after_their_items_one_at_a_time(overlap):
    """``map_then``: after all the items by default; with ``overlap`` on two local workers
    each group as soon as its items are done, while the other worker goes on with items."""
    executor = make_executor("local", 2)
    try:
        results, timed = check_timed_groups(executor, overlap)
    finally:
        executor.close()
    last_item = max(r[2] for r in results if not isinstance(r, Failed))
    first_timing = min(t[1] for t in timed)
    assert (first_timing < last_item) == overlap
    results, timed = check_timed_groups(InProcess(), overlap)   # one worker: no overlap
    assert min(t[1] for t in timed) >= max(r[2] for r in results if not isinstance(r, Failed))


@pytest.mark.parametrize("overlap", [False, True])
def test_ctrl_c_stops_the_local_workers(ctrl_c, overlap):
    """Ctrl-C stops the pool's workers, in ``map`` and in ``map_then`` taking turns."""
    before = set(multiprocessing.active_children())
    executor = make_executor("local", 2)
    threading.Timer(8.0, _interrupt).start()   # after the workers started
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        if overlap:
            executor.map_then({}, slow, list(range(8)),
                              Then({}, slow, [[0, 1]], group_prepare), overlap=True)
        else:
            executor.map({}, slow, list(range(8)))
    assert time.perf_counter() - start < 25
    deadline = time.perf_counter() + 10
    while set(multiprocessing.active_children()) - before and time.perf_counter() < deadline:
        time.sleep(0.2)
    assert not set(multiprocessing.active_children()) - before


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Sessions in this process on one thread, as in each worker: the same bytes need the
    same thread count (see ``parallel.base.worker_threads``)."""
    monkeypatch.setenv("ONNXPRUNE_THREADS", "1")


def _scores(criterion, executor=None, allocation="uniform"):
    a = pipeline.analyze_model(DEMO)
    return pipeline.score_model(a, pipeline.Strategy(criterion, allocation=allocation), CALIB,
                                seed=3, executor=executor).scored


def test_distortion_scores_are_the_same_in_two_workers():
    here = _scores("distortion")
    there = _scores("distortion", make_executor("local", 2))
    np.testing.assert_array_equal(here.scores, there.scores)
    assert there.scores.any()


def test_adaptive_weights_are_the_same_in_two_workers():
    here = _scores("l2", allocation="adaptive")
    there = _scores("l2", make_executor("local", 2), allocation="adaptive")
    assert here.weights == there.weights and here.weights


def test_sensitivity_is_the_same_in_two_workers():
    run = lambda executor: pipeline.sensitivity(DEMO, CALIB, (0.25, 0.5),  # noqa: E731
                                                pipeline.Strategy("l2"), executor=executor)
    here, there = run(None), run(make_executor("local", 2))
    assert here["groups"] == there["groups"] and len(here["groups"]) > 1


def test_a_sweep_in_two_workers_writes_the_same_models(tmp_path):
    bench = BenchOptions(runs=3)
    ratios = (0.2, 0.4, 0.6)
    rows = {}
    for name, executor in (("here", None), ("there", make_executor("local", 2))):
        options = pipeline.PruneOptions(strategy=pipeline.Strategy("obs"), calib=CALIB,
                                        executor=executor)
        result = sweep(DEMO, ratios, options, bench=bench, out_dir=tmp_path / name,
                       criteria=("obs", "l2"))
        rows[name] = result["rows"]
        assert result["settings"]["workers"] == (1 if executor is None else 2)
    assert len(rows["here"]) == len(rows["there"]) == 1 + 2 * len(ratios)
    for a, b in zip(rows["here"], rows["there"]):
        same = ("criterion", "ratio", "params", "macs", "cosine_mean", "cosine_min",
                "max_abs_error", "max_rel_error", "error")
        assert {k: a[k] for k in same} == {k: b[k] for k in same}
    for criterion in ("obs", "l2"):
        for ratio in ratios:
            name = f"demo_digits.{criterion}.r{ratio:g}.onnx"
            assert (tmp_path / "here" / name).read_bytes() == \
                (tmp_path / "there" / name).read_bytes()


def test_a_sweep_timed_beside_its_prunes_gives_the_same_rows(tmp_path, capsys):
    """``--overlap-timing``: each group of copies timed as soon as it is made, in turn with
    the prunes; every row but the latency is the same as in this process, each copy is timed
    (its own MACs), and the report says how it was timed."""
    keep = ("criterion", "ratio", "params", "macs", "cosine_mean", "max_abs_error", "error")
    sweep_module = sys.modules["onnxprune.evaluate.sweep"]
    rows = {}
    for name, executor, overlap in (("here", None, False),
                                    ("there", make_executor("local", 2), True)):
        options = pipeline.PruneOptions(executor=executor)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sweep_module, "TIMED_AT_ONCE", 2)
            result = sweep(DEMO, (0.2, 0.4, 0.6), options, bench=BenchOptions(runs=3),
                           out_dir=tmp_path / name, criteria=("l2", "fpgm"),
                           overlap_timing=overlap)
        rows[name] = result["rows"]
        assert result["settings"]["timing_beside_pruning"] is overlap
        assert result["settings"]["at_once"] == 2
        for row in result["rows"]:
            assert row["speedup"] > 0 and row["macs"] == count_cost(
                onnx.load(row["path"] or DEMO)).macs
    assert [{k: r[k] for k in keep} for r in rows["here"]] == \
        [{k: r[k] for k in keep} for r in rows["there"]]
    args = ["sweep", DEMO, "--ratios", "0.5", "--runs", "3", "--overlap-timing"]
    assert main(args) == 2
    assert "needs --workers 2 or more" in _one_line_error(capsys)
    assert main(args + ["--workers", "2", "--threads", "2"]) == 2
    assert "needs --threads 1" in _one_line_error(capsys)
    assert main(args + ["--workers", "2"]) == 0
    assert "timed beside the workers' pruning" in capsys.readouterr().out


def test_a_sweeps_temporary_copies_go_as_soon_as_their_group_is_timed(monkeypatch):
    """Without ``out_dir`` each group's copies (and only they) are removed once it is timed,
    so a long sweep does not keep every copy on disk to the end."""
    sweep_module = sys.modules["onnxprune.evaluate.sweep"]
    monkeypatch.setattr(sweep_module, "TIMED_AT_ONCE", 2)
    original, removed = sweep_module._Copies.remove, []

    def remove(copies, group):
        files = {g: list(paths) for g, paths in copies.files.items()}
        original(copies, group)
        assert files[group] and not any(path.exists() for path in files[group])
        assert all(path.exists() for g in files if g != group for path in files[g])
        removed.append(group)
    monkeypatch.setattr(sweep_module._Copies, "remove", remove)
    result = sweep(DEMO, (0.2, 0.4, 0.6), pipeline.PruneOptions(), bench=BenchOptions(runs=3))
    assert sorted(removed) == [0, 1] and all(r["speedup"] > 0 for r in result["rows"])


def test_in_process_is_the_one_worker_default():
    assert isinstance(make_executor(), InProcess)
    with pytest.raises(UserError, match="at least 1"):
        make_executor("local", 0)
    with pytest.raises(UserError, match="needs --executor ray"):
        make_executor("local", 2, "ray://somewhere:10001")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: "), err
    return err


def test_cli_workers(tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["prune", DEMO, "-o", str(out), "--workers", "2"]) == 2
    assert "makes none" in _one_line_error(capsys)
    assert not out.exists()
    assert main(["prune", DEMO, "-o", str(out), "--workers", "2", "--criterion", "distortion",
                 "--calib", "random"]) == 0
    assert out.exists()
    capsys.readouterr()
    assert main(["sensitivity", DEMO, "--workers", "2", "--ratios", "0.5", "--json"]) == 0
    assert main(["sweep", DEMO, "--ratios", "0.5", "--runs", "3", "--workers", "0"]) == 2
    assert "at least 1" in _one_line_error(capsys)


def test_ray_missing_is_a_one_line_error(monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["sensitivity", DEMO, "--executor", "ray", "--ratios", "0.5"]) == 2
    assert "pip install 'onnxprune[distributed]'" in _one_line_error(capsys)

