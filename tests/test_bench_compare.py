"""``onnxprune bench`` and ``onnxprune compare``: numbers that parse and add up, a model against
itself, fidelity and accuracy checked by hand, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import sys
from importlib import resources

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxprune
from onnxprune.cli import main
from onnxprune.errors import UserError
from onnxprune.runtime import count_cost
from onnxprune.evaluate.bench import (CUDA, BenchOptions, batch_shapes, bound_runner,
                                      cuda_unavailable_reason, interleaved, machine_info)
from onnxprune.runtime import latency_session
from onnxprune.evaluate.compare import class_recall, recall_distortion
from onnxprune.runtime.fidelity import cosine_rows

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))
CUDA_REASON = cuda_unavailable_reason()


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    model, _ = onnxprune.prune(DEMO, ratio=0.5)
    path = tmp_path_factory.mktemp("bench") / "demo.pruned.onnx"
    onnx.save(model, path)
    return str(path)


def run_json(capsys, args):
    code = main(args + ["--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def one_line_error(capsys, args) -> str:
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    return lines[0]


# --- bench ----------------------------------------------------------------------------------

def test_bench_json_numbers_add_up(capsys, pruned):
    info = run_json(capsys, ["bench", DEMO, DEMO, pruned, "--batch", "1,4", "--runs", "20"])
    rows = info["rows"]
    assert [(r["batch"], r["model"]) for r in rows] == [
        (b, m) for b in (1, 4) for m in (DEMO, DEMO, pruned)]
    for r in rows:
        assert r["runs"] == len(r["samples_s"]) == 20
        assert 0 < r["min_s"] <= r["median_s"] <= r["p90_s"]
        assert r["median_s"] == pytest.approx(float(np.median(r["samples_s"])))
        assert r["throughput"] == pytest.approx(r["batch"] / r["median_s"])
        assert r["file_bytes"] == os.path.getsize(r["model"])
        cost = count_cost(onnx.load(r["model"]), {"input": (r["batch"], 1, 8, 8)})
        assert (r["params"], r["macs"]) == (cost.params, cost.macs)
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["mac_ratio"])
    for batch in (1, 4):
        first, same, small = [r for r in rows if r["batch"] == batch]
        assert first["speedup"] == 1.0 and first["mac_ratio"] == 1.0
        assert 0.5 <= same["speedup"] <= 2.0          # a model against itself, timing noise
        assert same["mac_ratio"] == 1.0                # exactly: the same MACs
        assert small["mac_ratio"] > 1.0 and small["macs"] < first["macs"]
    assert rows[3]["macs"] == 4 * rows[0]["macs"]
    machine = info["machine"]
    assert machine["onnxruntime"] == ort.__version__ and machine["threads"] == 1
    assert machine["provider"] == "CPUExecutionProvider" and machine["cores"] >= 1
    assert machine["cpu"]
    assert info["settings"]["batches"] == [1, 4] and info["settings"]["runs"] == 20


def test_bench_table_with_a_budget(capsys, pruned):
    assert main(["bench", DEMO, pruned, "--budget", "0.02", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 thread(s)" in out and "median ms" in out and "MAC ratio" in out
    lines = [line for line in out.splitlines() if line.strip().startswith("1 ")]
    assert len(lines) == 2 and "demo.pruned.onnx" in lines[1]
    assert lines[0].split()[-3:] == ["1.00x", "1.00x", "1.00"]


def test_interleaved_rounds_share_the_runs():
    calls = []
    samples = interleaved([lambda: calls.append("a"), lambda: calls.append("b")], [7, 2],
                          rounds=5)
    assert [len(s) for s in samples] == [7, 2]
    assert calls.count("a") == 7 + 5 and calls.count("b") == 2 + 2   # + one untimed per turn
    assert calls.index("b") < len(calls) - calls[::-1].index("a") - 1   # b ran before a ended


def test_models_timed_a_group_at_a_time_beside_the_first(monkeypatch, pruned):
    """``at_once``: a group of copies is loaded and timed with the first model, then dropped
    (a sweep's 200 copies opened at once took 9.6 GiB); rows keep the order given, and each
    copy's speedup is against the first model's timing in its own group."""
    bench = sys.modules["onnxprune.evaluate.bench"]
    real, loads = bench._load, []
    monkeypatch.setattr(bench, "_load", lambda m, i, fp16: loads.append(i) or real(m, i, fp16))
    models = [DEMO, pruned, DEMO, pruned, DEMO]
    result = bench.benchmark(models, (1, 2), BenchOptions(runs=3), at_once=2)
    assert loads == [0, 1, 2, 0, 3, 4]
    assert [(r["batch"], r["model"]) for r in result["rows"]] == \
        [(b, m) for b in (1, 2) for m in models]
    assert result["settings"]["at_once"] == 2 and len(result["models"]) == 5
    for row in result["rows"]:
        assert row["speedup"] > 0 and len(row["samples_s"]) == 3
    assert result["rows"][0]["speedup"] == result["rows"][5]["speedup"] == 1.0  # the first's
    whole = bench.benchmark(models, (1,), BenchOptions(runs=3))
    assert "at_once" not in whole["settings"] and len(whole["rows"]) == 5


def test_bench_fp16_copy(capsys):
    pytest.importorskip("onnxconverter_common")
    info = run_json(capsys, ["bench", DEMO, "--fp16", "--runs", "5"])
    assert info["settings"]["precision"] == "fp16" and info["rows"][0]["precision"] == "fp16"
    assert info["rows"][0]["params"] == count_cost(onnx.load(DEMO)).params


def test_bench_fp16_without_the_converter_says_how_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    line = one_line_error(capsys, ["bench", DEMO, "--fp16", "--runs", "2"])
    assert "pip install 'onnxprune[fp16]'" in line


def test_batch_lists_and_shapes(capsys):
    info = run_json(capsys, ["bench", DEMO, "--batch", "4,1,4", "--runs", "2"])
    assert [r["batch"] for r in info["rows"]] == [4, 1]       # in order, once each
    for bad, says in (("", "expects numbers"), ("1,x", "expects numbers"), ("0", "at least 1"),
                      ("8,-1", "at least 1")):
        assert says in one_line_error(capsys, ["bench", DEMO, "--batch", bad])
    model = onnx.load(DEMO)
    assert batch_shapes(model, 8) == {"input": (8, 1, 8, 8)}
    assert batch_shapes(model, 2, {"input": (5, 1, 8, 8)}) == {"input": (2, 1, 8, 8)}
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1     # a fixed batch
    assert batch_shapes(model, 1) == {"input": (1, 1, 8, 8)}
    with pytest.raises(UserError, match="fixed batch of 1"):
        batch_shapes(model, 4)


@pytest.mark.parametrize("args,says", [
    (["nothere.onnx"], "no such file"),
    (["{text}"], "not a valid ONNX model"),
    ([DEMO, "--batch", "1,x"], "expects numbers like 1,8"),
    ([DEMO, "--batch", "0"], "at least 1"),
    ([DEMO, "--tf32"], "--provider cuda"),
    ([DEMO, "--algo-search", "default"], "--provider cuda"),
    ([DEMO, "--device-id", "1"], "--provider cuda"),
    ([DEMO, "--input-shape", "input:1x1x9x8"], "size 8 on axis 2"),
    ([DEMO, "--input-shape", "input:1x8x8"], "has 4 dims"),
    ([DEMO, "--input-shape", "other:1x8x8"], "no model has an input named"),
    ([DEMO, "--runs", "3", "--budget", "1"], "not both"),
    ([DEMO, "--runs", "0"], "--runs must be at least 1"),
    ([DEMO, "--threads", "0"], "--threads must be at least 1"),
    ([DEMO, "--nhwc"], "--provider cuda"),
    ([DEMO, "--provider", "gpu"], "'gpu' is not one of"),
])
def test_bench_bad_input_is_one_line(capsys, tmp_path, args, says):
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    line = one_line_error(capsys, ["bench"] + [a.format(text=text) for a in args])
    assert says in line


def test_bound_runner_computes_what_run_does():
    """The IOBinding path of --provider cuda, exercised on CPU memory."""
    model = onnx.load(DEMO)
    sess = latency_session(model)
    feeds = {"input": np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)}
    call = bound_runner(sess, feeds, "cpu", 0)
    call()
    (got,) = call.binding.copy_outputs_to_cpu()
    np.testing.assert_allclose(got, sess.run(None, feeds)[0], rtol=1e-6)


class _SessionThatIgnoredOptions:
    """A CUDA session as ORT reports it when it did not take what was asked (a build without
    NHWC kernels, say): the report must say what ran, not what was asked."""

    def get_provider_options(self):
        return {CUDA: {"device_id": "0", "cudnn_conv_algo_search": "DEFAULT", "use_tf32": "0",
                       "prefer_nhwc": "0"}}


def test_machine_info_reports_what_the_session_used_not_what_was_asked():
    asked = BenchOptions(provider="cuda", tf32=True, nhwc=True, algo_search="HEURISTIC")
    assert asked.cuda_provider_options() == {"device_id": "0", "use_tf32": "1",
                                             "prefer_nhwc": "1",
                                             "cudnn_conv_algo_search": "HEURISTIC"}
    info = machine_info(asked, _SessionThatIgnoredOptions())
    assert info["provider"] == "CUDAExecutionProvider"
    assert info["cuda"]["tf32"] is False and info["cuda"]["prefer_nhwc"] is False
    assert info["cuda"]["cudnn_conv_algo_search"] == "DEFAULT"
    cpu = machine_info(BenchOptions(threads=3))
    assert "cuda" not in cpu and cpu["threads"] == 3 and cpu["cores"] == os.cpu_count()
    assert cpu["onnxruntime"] == ort.__version__ and cpu["cpu"]


@pytest.mark.skipif(CUDA_REASON is not None, reason=f"CUDA is not usable here: {CUDA_REASON}")
def test_bench_on_cuda(capsys, pruned):
    info = run_json(capsys, ["bench", DEMO, pruned, "--provider", "cuda", "--batch", "1,8",
                             "--runs", "20", "--algo-search", "default"])
    cuda = info["machine"]["cuda"]
    assert info["machine"]["provider"] == "CUDAExecutionProvider" and cuda["io_binding"]
    assert cuda["tf32"] is True and cuda["cudnn_conv_algo_search"] == "DEFAULT"
    assert info["settings"]["warmup"] >= 10
    assert all(r["median_s"] > 0 and r["runs"] == 20 for r in info["rows"])
    assert info["rows"][1]["mac_ratio"] > 1
    info = run_json(capsys, ["bench", DEMO, "--provider", "cuda", "--no-tf32", "--nhwc",
                             "--runs", "5"])
    assert info["machine"]["cuda"]["tf32"] is False


@pytest.mark.skipif(CUDA_REASON is None, reason="CUDA is usable here")
def test_bench_cuda_unavailable_is_one_line(capsys):
    line = one_line_error(capsys, ["bench", DEMO, "--provider", "cuda", "--runs", "2"])
    assert line.startswith("error: the CUDA execution provider is not available here (")


# --- compare --------------------------------------------------------------------------------

def test_compare_model_with_itself(capsys):
    info = run_json(capsys, ["compare", DEMO, DEMO])
    assert info["samples"] == 32 and info["labels"] is None
    (out,) = info["outputs"]
    assert out["name"] == "logits" and out["shape"] == [32, 10]
    assert out["max_abs_error"] == 0.0 and out["mean_abs_error"] == 0.0
    assert out["cosine_mean"] == pytest.approx(1.0) and out["cosine_min"] == pytest.approx(1.0)
    assert out["top1_agreement"] == 1.0


def digits_like(n=40, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 8, 8), dtype=np.float32)
    return x, rng.integers(0, 10, n).astype(np.int64)


def by_hand(path, x, labels):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    predicted = np.argmax(sess.run(None, {"input": x})[0], axis=1)
    return float(np.mean(predicted == labels)), predicted


def test_compare_with_labels_matches_a_hand_computation(capsys, tmp_path, pruned):
    x, labels = digits_like()
    np.savez(tmp_path / "data.npz", input=x)
    np.save(tmp_path / "labels.npy", labels)
    info = run_json(capsys, ["compare", DEMO, pruned, "--data", str(tmp_path / "data.npz"),
                             "--labels", str(tmp_path / "labels.npy")])
    before, pred_before = by_hand(DEMO, x, labels)
    after, pred_after = by_hand(pruned, x, labels)
    lab = info["labels"]
    assert info["samples"] == 40 and lab["output"] == "logits"
    assert lab["accuracy_before"] == pytest.approx(before)
    assert lab["accuracy_after"] == pytest.approx(after)
    assert lab["accuracy_drop"] == pytest.approx(before - after)
    recall = class_recall(labels, pred_after)
    assert {c["class"]: c["recall_after"] for c in lab["classes"]} == pytest.approx(recall)
    assert info["outputs"][0]["top1_agreement"] == pytest.approx(np.mean(pred_before == pred_after))
    # the same labels inside the .npz, and the table
    np.savez(tmp_path / "both.npz", input=x, labels=labels)
    same = run_json(capsys, ["compare", DEMO, pruned, "--data", str(tmp_path / "both.npz")])
    assert same["labels"]["accuracy_after"] == lab["accuracy_after"]
    assert main(["compare", DEMO, pruned, "--data", str(tmp_path / "both.npz")]) == 0
    table = capsys.readouterr().out
    assert "accuracy" in table and "recall before" in table and "flagged" in table


def test_recall_distortion_flags_classes_that_lose_more_than_accuracy():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    before = np.array([0, 0, 0, 0, 1, 1, 1, 0, 2, 2])        # 9/10
    after = np.array([0, 0, 0, 0, 1, 0, 0, 0, 2, 2])         # 7/10: class 1 goes 3/4 -> 1/4
    info = recall_distortion(labels, before, after)
    assert info["accuracy_before"] == pytest.approx(0.9)
    assert info["accuracy_after"] == pytest.approx(0.7)
    assert info["accuracy_drop"] == pytest.approx(0.2)
    recall = {c["class"]: (c["recall_before"], c["recall_after"]) for c in info["classes"]}
    assert recall == {0: (1.0, 1.0), 1: (0.75, 0.25), 2: (1.0, 1.0)}
    assert info["flagged"] == [1]
    # a class that drops exactly as much as the accuracy is not flagged
    equal = recall_distortion([0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1])
    assert equal["accuracy_drop"] == pytest.approx(0.2) and equal["flagged"] == []
    # a gain everywhere flags nothing; one class losing while the accuracy holds is flagged
    assert recall_distortion([0, 1], [1, 0], [0, 1])["flagged"] == []
    assert recall_distortion([0, 1, 1], [0, 0, 1], [1, 1, 1])["flagged"] == [0]


def test_cosine_of_zero_and_opposite_rows():
    a = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 2.0], [0.0, 0.0]])
    b = np.array([[0.0, 0.0], [-1.0, 0.0], [2.0, 4.0], [1.0, 0.0]])
    assert cosine_rows(a, b) == pytest.approx([1.0, -1.0, 1.0, 0.0])


@pytest.mark.parametrize("make,says", [
    ("renamed", "different outputs"),
    ("labels5", "5 labels for 40 samples"),
    ("floatlabels", "integer class ids"),
    ("badclass", "out of range"),
    ("nodata", "calibration data not found"),
    ("nomodel", "no such file"),
    ("samples0", "Invalid value for '--samples'"),
])
def test_compare_bad_input_is_one_line(capsys, tmp_path, make, says):
    x, labels = digits_like()
    np.savez(tmp_path / "data.npz", input=x)
    args = ["compare", DEMO, DEMO, "--data", str(tmp_path / "data.npz")]
    if make == "renamed":
        model = onnx.load(DEMO)
        model.graph.output[0].name = model.graph.node[-1].output[0] = "scores"
        onnx.save(model, tmp_path / "renamed.onnx")
        args[2] = str(tmp_path / "renamed.onnx")
    elif make in ("labels5", "floatlabels", "badclass"):
        value = {"labels5": labels[:5], "floatlabels": labels.astype(np.float32),
                 "badclass": labels + 10}[make]
        np.save(tmp_path / "labels.npy", value)
        args += ["--labels", str(tmp_path / "labels.npy")]
    elif make == "nodata":
        args[4] = str(tmp_path / "missing.npz")
    elif make == "nomodel":
        args[2] = str(tmp_path / "missing.onnx")
    else:
        args += ["--samples", "0"]
    assert says in one_line_error(capsys, args)
