"""Model inversion (``--calib inverted``): dead-leaves images optimized through the model until
its class scores are confident in assigned classes and its BatchNorm nodes see the statistics
they keep; the model never changes; a model with nothing to invert, token-id inputs or no
PyTorch is a one-line error."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest

pytest.importorskip("onnx2torch")

import onnxprune  # noqa: E402
from onnxprune.calibration import inversion, load_calibration  # noqa: E402
from onnxprune.cli import main  # noqa: E402
from onnxprune.errors import UserError  # noqa: E402
from onnxprune.runtime import run_model  # noqa: E402

from .builder import GraphBuilder  # noqa: E402
from .test_gradient import DIGITS, small_cnn  # noqa: E402


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(inversion, "STEPS", 60)
    monkeypatch.setattr(inversion, "BUDGET", 60.0)


def _logits(model, batches):
    return np.concatenate([run_model(model, f)["logits"] for f in batches])


def test_inverted_digits_are_read_as_the_classes_they_were_assigned():
    """The trained digits model reads the natural start images as a few classes with little
    confidence; after inversion every class is present and the model is confident."""
    model = onnx.load(DIGITS)
    start = load_calibration("natural", model, samples=20, seed=0, batch_size=10)
    made = load_calibration("inverted", model, samples=20, seed=0, batch_size=10)
    before, after = _logits(model, start), _logits(model, made)

    def confidence(z):
        p = np.exp(z - z.max(1, keepdims=True))
        return float((p.max(1) / p.sum(1)).mean())

    assert len(set(after.argmax(1))) == 10          # every class, two samples each
    assert np.bincount(after.argmax(1), minlength=10).max() == 2
    assert confidence(after) > max(0.9, confidence(before))
    for s, m in zip(start, made):                   # same shapes, dtypes, value range
        assert m["input"].shape == s["input"].shape and m["input"].dtype == np.float32
        assert s["input"].min() <= m["input"].min() and m["input"].max() <= s["input"].max()
        assert not np.array_equal(s["input"], m["input"])


def test_same_seed_same_inputs_and_the_model_is_left_alone():
    model = onnx.load(DIGITS)
    before = model.SerializeToString()
    a = load_calibration("inverted", model, samples=8, seed=3)
    b = load_calibration("inverted", model, samples=8, seed=3)
    assert model.SerializeToString() == before
    assert all(np.array_equal(x["input"], y["input"]) for x, y in zip(a, b))


def test_batchnorm_inputs_end_closer_to_their_running_statistics():
    """A model whose only guide is its BatchNorm node (no class-score output): the statistics
    the BN node sees move towards the mean and variance it keeps."""
    b = GraphBuilder(seed=5)
    h = b.conv("x", 3, 6)
    h = b.op("Relu", [b.bn(h, 6)])
    model = b.model({"x": ["N", 3, 8, 8]}, [b.conv(h, 6, 4, k=1)])
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    mean, var = inits[bn.input[3]], inits[bn.input[4]]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(bn.input[0], 1, None))

    def mismatch(batches):
        x = np.concatenate([run_model(probe, f)[bn.input[0]] for f in batches])
        return (np.linalg.norm(x.mean((0, 2, 3)) - mean)
                + np.linalg.norm(x.var((0, 2, 3)) - var))

    start = load_calibration("natural", model, {"x": (1, 3, 8, 8)}, samples=16, seed=0)
    made = load_calibration("inverted", model, {"x": (1, 3, 8, 8)}, samples=16, seed=0)
    assert mismatch(made) < 0.5 * mismatch(start)


def test_prune_with_inverted_calibration_names_it_and_passes_the_check(tmp_path, capsys):
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    assert main(["prune", DIGITS, "-o", str(out), "--ratio", "0.3", "--criterion", "obs",
                 "--calib", "inverted", "--report", str(report)]) == 0
    assert "inverted: dead-leaves images optimized through the model" in report.read_text()
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    _, r = onnxprune.prune(DIGITS, ratio=0.3, calib="inverted",
                           strategy=onnxprune.Strategy("obs", compensate="sequential"))
    assert r["check"]["ok"] and "fresh inverted inputs" in r["fidelity"]["inputs"]


def test_a_model_with_nothing_to_invert_is_refused():
    b = GraphBuilder(seed=0)
    model = b.model({"x": ["N", 3, 8, 8]}, [b.conv(b.op("Relu", [b.conv("x", 3, 6)]), 6, 4)])
    with pytest.raises(UserError, match="neither a class-score output .* nor a BatchNorm"):
        load_calibration("inverted", model, {"x": (1, 3, 8, 8)}, samples=4)


def test_token_ids_cannot_be_inverted():
    h, rng = onnx.helper, np.random.default_rng(0)
    graph = h.make_graph(
        [h.make_node("Gather", ["table", "ids"], ["e"]), h.make_node("Flatten", ["e"], ["f"]),
         h.make_node("Gemm", ["f", "w"], ["logits"])], "ids",
        [h.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["N", 6])],
        [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 4])],
        [onnx.numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "table"),
         onnx.numpy_helper.from_array(rng.standard_normal((48, 4)).astype(np.float32), "w")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=10)
    with pytest.raises(UserError, match="no float input to optimize"):
        load_calibration("inverted", model, {"ids": (1, 6)}, samples=4)


def test_without_pytorch_it_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx2torch", None)
    assert main(["prune", DIGITS, "-o", "unused.onnx", "--criterion", "obs",
                 "--calib", "inverted"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --calib inverted: needs PyTorch and onnx2torch: "
                   "pip install 'onnxprune[grad]'"]


def test_small_cnn_with_batchnorm_and_scores():
    """Both guides at once (class scores from a Gemm, a BN node) and batch sizes that do not
    divide the sample count."""
    model = small_cnn()
    made = load_calibration("inverted", model, {"x": (1, 3, 6, 6)}, samples=12, seed=1,
                            batch_size=5)
    assert [len(f["x"]) for f in made] == [5, 5, 2]
    assert all(np.isfinite(f["x"]).all() for f in made)


def test_weights_shared_through_identity_nodes_convert():
    """TorchScript exports share equal constants (a BN-folded net's zero biases) through
    Identity nodes; onnx2torch reads conv biases from initializers only."""
    b = GraphBuilder(seed=2)
    bias = b.weight(6)
    shared = b.op("Identity", [bias])
    h = b.op("Relu", [b.op("Conv", ["x", b.weight(6, 3, 3, 3), bias], pads=[1, 1, 1, 1])])
    h = b.op("Relu", [b.op("Conv", [h, b.weight(6, 6, 1, 1), shared])])
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h])])
    model = b.model({"x": ["N", 3, 8, 8]}, [b.op("Gemm", [h, b.weight(6, 4)])])
    made = load_calibration("inverted", model, {"x": (1, 3, 8, 8)}, samples=8, seed=0)
    assert len(made) == 1 and made[0]["x"].shape == (8, 3, 8, 8)
