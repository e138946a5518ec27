"""Gradient criteria (taylor, snip, synflow): the gradients mapped back from the onnx2torch
module equal central finite differences of the same loss computed with ONNX Runtime on the
ONNX model itself; the scores follow from them; unconvertible models get a one-line error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("onnx2torch")

from onnxprune.pipeline import Strategy, analyze_model, calibration_stats  # noqa: E402
from onnxprune.cli import main  # noqa: E402
from onnxprune.errors import UserError  # noqa: E402
from onnxprune.graph import ModelGraph  # noqa: E402
from onnxprune.importance import ScoringContext, score  # noqa: E402
from onnxprune.importance.gradient import loss_gradients, synflow_gradients  # noqa: E402
from onnxprune.runtime import make_inputs, run_model  # noqa: E402

from .builder import GraphBuilder  # noqa: E402
from .oracle import assert_oracle  # noqa: E402

DIGITS = "onnxprune/data/demo_digits.onnx"


def small_cnn():
    """Conv → BN → Relu → Conv → GlobalAveragePool → Flatten → Gemm (alpha, beta, transB=0):
    every kind of parameter mapping (conv, BN, Linear built from a transposed Gemm)."""
    b = GraphBuilder(seed=3)
    h = b.op("Relu", [b.bn(b.conv("x", 3, 6), 6)])
    h = b.op("Flatten", [b.op("GlobalAveragePool", [b.conv(h, 6, 8, k=1)])])
    logits = b.op("Gemm", [h, b.weight(8, 5), b.weight(5)], alpha=0.7, beta=1.3)
    return b.model({"x": ["N", 3, 6, 6]}, [logits])


def with_value(model, name, value):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for i, t in enumerate(copy.graph.initializer):
        if t.name == name:
            copy.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
    return copy


def ce_loss(model, batches, labels):
    """The pseudo-label cross-entropy, computed in numpy from ONNX Runtime's outputs."""
    total = 0.0
    for feeds, lab in zip(batches, labels):
        y = next(iter(run_model(model, feeds).values())).astype(np.float64)
        y = y.reshape(-1, y.shape[-1])
        logz = np.log(np.exp(y - y.max(1, keepdims=True)).sum(1)) + y.max(1)
        total += float((logz - y[np.arange(len(y)), lab]).sum())
    return total


def probe_elements(grad, rng, count=4):
    """Elements among those with the largest gradients: where float32 finite differences
    have signal above their rounding noise."""
    flat = np.argsort(-np.abs(grad).ravel())[:count * 4]
    return [np.unravel_index(i, grad.shape) for i in rng.choice(flat, count, replace=False)]


@pytest.mark.parametrize("path", ["small", DIGITS])
def test_loss_gradients_match_finite_differences(path):
    model = small_cnn() if path == "small" else onnx.load(path)
    graph = ModelGraph(model)
    x = model.graph.input[0]
    shape = [4] + [d.dim_value for d in x.type.tensor_type.shape.dim[1:]]
    batches = [make_inputs(model, {x.name: shape}, seed) for seed in (0, 1)]
    outputs = [next(iter(run_model(model, f).values())) for f in batches]
    labels = [y.reshape(-1, y.shape[-1]).argmax(1) for y in outputs]
    names = {t.name for t in model.graph.initializer if t.dims}
    grads = loss_gradients(model, graph, names, batches)
    rng = np.random.default_rng(0)
    checked = 0
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t)
        if t.name not in grads or not np.issubdtype(w.dtype, np.floating) or w.ndim == 0:
            continue
        assert grads[t.name].shape == w.shape
        for idx in probe_elements(grads[t.name], rng, 2):
            eps = 1e-3 * max(abs(float(w[idx])), 1.0)   # small: ReLU and MaxPool have kinks
            up, down = w.copy(), w.copy()
            up[idx] += eps
            down[idx] -= eps
            fd = (ce_loss(with_value(model, t.name, up), batches, labels)
                  - ce_loss(with_value(model, t.name, down), batches, labels)) / (2 * eps)
            assert grads[t.name][idx] == pytest.approx(fd, rel=5e-2, abs=2e-3), (t.name, idx)
            checked += 1
    assert checked >= 8


def test_synflow_gradients_match_finite_differences():
    model = small_cnn()
    graph = ModelGraph(model)
    names = {t.name for t in model.graph.initializer}
    feeds = make_inputs(model)
    grads = synflow_gradients(model, graph, names, feeds)
    absolute = onnx.ModelProto()
    absolute.CopyFrom(model)
    for t in model.graph.initializer:
        absolute = with_value(absolute, t.name, np.abs(numpy_helper.to_array(t)))
    ones = {k: np.ones_like(v) for k, v in feeds.items()}

    def r(m):
        return float(sum(v.astype(np.float64).sum() for v in run_model(m, ones).values()))

    rng = np.random.default_rng(1)
    for t in model.graph.initializer:
        w = np.abs(numpy_helper.to_array(t))
        if t.name not in grads or w.ndim == 0:
            continue
        for idx in probe_elements(grads[t.name], rng, 2):
            eps = 1e-2 * max(float(w[idx]), 0.1)
            up, down = w.copy(), w.copy()
            up[idx] += eps
            down[idx] -= eps
            fd = (r(with_value(absolute, t.name, up)) - r(with_value(absolute, t.name, down))) \
                / (2 * eps)
            assert grads[t.name][idx] == pytest.approx(fd, rel=2e-2, abs=1e-3), (t.name, idx)


def test_taylor_never_exceeds_snip():
    """|Σ w·g| ≤ Σ |w·g| for every member slice, hence for every component."""
    a = analyze_model(small_cnn())
    stats = calibration_stats(a, "random", gram=False)
    ctx = ScoringContext(a.analysis, a.roots, a.groups, "sum", 0, stats)
    taylor, snip = score("taylor", ctx), score("snip", ctx)
    comps = np.concatenate([g.components for g in a.groups if g.prunable])
    assert (snip[comps] > 0).all()
    assert (taylor[comps] <= snip[comps] + 1e-12).all()
    assert not np.allclose(taylor[comps], snip[comps])


@pytest.mark.parametrize("criterion", ["taylor", "snip", "synflow"])
def test_gradient_criteria_keep_the_oracle(criterion):
    a = analyze_model(DIGITS)
    stats = calibration_stats(a, "random", gram=False) if criterion != "synflow" else None
    assert_oracle(a, ratio=0.5, strategy=Strategy(criterion=criterion), stats=stats)


def test_unconvertible_model_is_a_one_line_error(tmp_path, capsys):
    """Mish (opset 18) has no earlier version to lower to and onnx2torch has no converter."""
    b = GraphBuilder(opset=18, seed=0)
    h = b.op("Mish", [b.conv("x", 3, 8, k=1)])
    model = b.model({"x": [1, 3, 4, 4]}, [b.conv(h, 8, 4, k=1)])
    path = tmp_path / "mish.onnx"
    onnx.save(model, path)
    out = tmp_path / "out.onnx"
    code = main(["prune", str(path), "-o", str(out), "--criterion", "taylor", "--calib",
                 "random"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: gradient criteria:") and "\n" not in err
    assert not out.exists()
    with pytest.raises(UserError, match="gradient criteria"):
        a = analyze_model(model)
        score("synflow", ScoringContext(a.analysis, a.roots, a.groups))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_of_opset_20_converts_as_its_formula(approximate):
    """Gelu has no earlier version to lower to and onnx2torch has no converter: the copy for
    torch spells it out (Erf or Tanh), and the converted module reproduces ONNX Runtime."""
    b = GraphBuilder(opset=20, seed=0)
    h = b.op("Gelu", [b.conv("x", 3, 8, k=1)], approximate=approximate)
    model = b.model({"x": ["N", 3, 4, 4]}, [b.conv(h, 8, 4, k=1)])
    from onnxprune.importance.gradient import GRADIENTS
    from onnxprune.runtime.torch_module import TorchModel

    graph = ModelGraph(model)
    names = {t.name for t in model.graph.initializer}
    tm = TorchModel(model, graph, names, GRADIENTS)
    feeds = make_inputs(model, {"x": (2, 3, 4, 4)})
    tm.check_against_ort(feeds)         # raises when the formula differs from ORT's Gelu
    assert "Gelu" not in {n.op_type for n in tm.onnx.graph.node}


def test_conversion_workarounds_keep_the_function():
    """A Flatten at axis = rank (onnx2torch mishandles it) and BatchNorm statistics read
    through Identity (they must not collect gradients): the criterion runs and the converted
    module still matches ONNX Runtime (checked inside loss_gradients)."""
    b = GraphBuilder(seed=5)
    h = b.conv("x", 3, 6, k=1)
    stats = [b.op("Identity", [b.weight(6)]), b.op("Identity", [b.const(
        np.ones(6, np.float32))])]
    h = b.op("Relu", [b.op("BatchNormalization", [h, b.weight(6), b.weight(6), *stats])])
    pooled = b.op("GlobalAveragePool", [b.conv(h, 6, 4, k=1)])
    flat = b.op("Flatten", [pooled], axis=4)                    # [N·4·1·1, 1]
    model = b.model({"x": [2, 3, 4, 4]}, [b.op("MatMul", [flat, b.weight(1, 3)])])
    a = analyze_model(model)
    stats = calibration_stats(a, "random", gram=False)
    scores = score("taylor", ScoringContext(a.analysis, a.roots, a.groups, "sum", 0, stats))
    group = next(g for g in a.groups if g.prunable and g.size == 6)
    live = scores[group.components]
    assert np.isfinite(live).all() and (live > 0).sum() >= 3    # dead ReLU channels score 0
