"""The prepared GPU check (``benchmarks/gpu_check.py``, issue 17), run here on the CPU: every
step it takes on a lent GPU (weightless models filled with random values, ``bench`` of dense
and pruned in fp32 and fp16 at two batch sizes, a latency bundle timed by ``device_timer.py``,
a prune predicted from that table alone and timed) must work before a device call is spent
on it. What only a GPU can show (the CUDA provider's numbers) is not claimed here."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from benchmarks import gpu_check
from onnxprune.evaluate.bench import to_fp16
from onnxprune.runtime.timing import latency_session

from .test_bench_compare import DEMO


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu") / "check"
    manifest = gpu_check.prepare(str(folder), [DEMO], table_model="demo_digits",
                                 log=lambda line: None)
    return folder, manifest


def test_prepared_models_carry_no_weights_and_fill_to_finite_outputs(prepared):
    folder, manifest = prepared
    (entry,) = manifest["models"]
    assert set(entry["files"]) == {"dense fp32", "dense fp16", "pruned fp32", "pruned fp16"}
    dense = onnx.load(DEMO)
    for key, file in entry["files"].items():
        model = onnx.load(str(folder / file), load_external_data=False)
        big = [t for t in model.graph.initializer if t.data_type in gpu_check.FLOATS
               and np.prod(t.dims) * (2 if "fp16" in key else 4) > gpu_check.INLINE_BYTES]
        assert big and all(t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data
                           for t in big)
        full = gpu_check.filled(model)
        onnx.checker.check_model(full, full_check=True)
        for t in big:
            values = onnx.numpy_helper.to_array(
                next(f for f in full.graph.initializer if f.name == t.name))
            fan_in = int(np.prod(t.dims[1:])) if len(t.dims) > 1 else 1
            assert values.shape == tuple(t.dims) and np.abs(values).max() <= \
                np.sqrt(3 / fan_in) * 1.001
        sess = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
        out = sess.run(None, {"input": np.ones((32, 1, 8, 8), np.float32)})[0]
        assert out.shape[0] == 32 and np.isfinite(out).all()
    assert [i.name for i in onnx.load(str(folder / entry["files"]["pruned fp32"]),
                                      load_external_data=False).graph.input] == \
        [i.name for i in dense.graph.input]
    assert (folder / "bundle" / "device_timer.py").exists()


def test_run_on_the_cpu_takes_every_step_the_device_would(prepared, tmp_path):
    folder, _ = prepared
    out = tmp_path / "out"
    assert gpu_check.run(str(folder), str(out), provider="cpu", budget=0.05,
                         log=lambda line: None) == 0
    for precision in ("fp32", "fp16"):
        bench = json.loads((out / f"bench_demo_digits_{precision}.json").read_text())
        rows = bench["rows"]
        assert [(r["batch"], r["model"].split(".")[1]) for r in rows] == \
            [(1, "dense"), (1, "pruned"), (32, "dense"), (32, "pruned")]
        assert all(r["mac_ratio"] > 2 for r in rows[1::2])   # pruned at 0.5: ~3.5x fewer MACs
    table = json.loads((out / "table.json").read_text())
    (name,) = table["sections"]
    assert "CPUExecutionProvider" in name and len(table["sections"][name]) > 100
    report = json.loads((out / "target_report.json").read_text())
    assert report["check"]["ok"] and report["target"]["kind"] == "latency"
    assert report["target"]["table_timed"] == 0 and report["target"]["device"] == name
    target = json.loads((out / "bench_target.json").read_text())["rows"]
    assert target[1]["macs"] < target[0]["macs"]
    log = (out / "gpu_check.log").read_text()
    assert "from the cpu table: planned" in log and "exit 1" not in log


def test_run_without_cuda_says_so_and_times_nothing(prepared, tmp_path, monkeypatch):
    import onnxprune.evaluate.bench as bench

    monkeypatch.setattr(bench, "cuda_unavailable_reason", lambda: "no GPU here")
    out = tmp_path / "out"
    status = gpu_check.run(str(prepared[0]), str(out), provider="cuda", log=lambda line: None)
    assert status == gpu_check.EXIT_NO_PROVIDER
    assert (out / "no_cuda.txt").read_text().strip() == "no GPU here"
    assert not list(out.glob("bench_*"))


def test_float16_copy_casts_to_float16_where_the_converter_retyped_the_cast():
    """onnxconverter-common retypes a Cast's float output to float16 but keeps ``to=FLOAT``:
    ViT-B/16 with a symbolic batch computes its attention scale that way, and its float16
    copy failed the checker and ONNX Runtime's loader."""
    h, TP = onnx.helper, onnx.TensorProto
    nodes = [h.make_node("Relu", ["x"], ["r"]),   # one reader of x: the converter casts
             h.make_node("Shape", ["r"], ["s"]),    # an input read twice twice (SSA broken)
             h.make_node("Gather", ["s", "last"], ["d"], axis=0),
             h.make_node("Cast", ["d"], ["df"], to=TP.FLOAT),
             h.make_node("Sqrt", ["df"], ["scale"]),
             h.make_node("Mul", ["r", "scale"], ["xs"]),
             h.make_node("MatMul", ["xs", "w"], ["y"])]
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    graph = h.make_graph(nodes, "scale", [h.make_tensor_value_info("x", TP.FLOAT, ["b", 8])],
                         [h.make_tensor_value_info("y", TP.FLOAT, ["b", 8])],
                         [onnx.numpy_helper.from_array(np.array(1, np.int64), "last"),
                          onnx.numpy_helper.from_array(w, "w")])
    model = onnx.shape_inference.infer_shapes(
        h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8))
    half = to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    got = latency_session(half).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, (np.maximum(x, 0) * np.sqrt(8)) @ w, rtol=2e-2,
                               atol=2e-2)
