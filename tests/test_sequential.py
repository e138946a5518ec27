"""Sequential reconstruction (``--compensate sequential``): each reader of removed channels is
re-fitted, in order, to the dense model's outputs from the inputs the already re-fitted
pruned model gives it. Checked against the same chain computed by hand in numpy, against OBS
on a deep network, and with the oracle on convs of every kind."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.errors import UserError
from onnxprune.pipeline import Strategy, analyze_model, calibration_stats
from onnxprune.runtime import run_model

from .builder import GraphBuilder
from .oracle import assert_oracle

WIDTHS = (6, 12, 12, 12, 4)      # input, three hidden layers, output


def mlp(widths=WIDTHS, seed=3):
    """x → (MatMul → Add → Relu)×(len−2) → MatMul → Add: every hidden layer is one group."""
    b = GraphBuilder(seed=seed)
    y = "x"
    for k, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        y = b.op("Add", [b.op("MatMul", [y, b.weight(n_in, n_out)]), b.weight(n_out)])
        if k < len(widths) - 2:
            y = b.op("Relu", [y])
    graph = helper.make_graph(
        b.nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", widths[0]])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", widths[-1]])],
        b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def batches(n=256, width=WIDTHS[0], seed=0):
    x = np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)
    return [{"x": x[i:i + 64]} for i in range(0, n, 64)]


def layers(model):
    """[(W, b)] of each MatMul → Add pair, in order."""
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64)
             for t in model.graph.initializer}
    mats = [inits[n.input[1]] for n in model.graph.node if n.op_type == "MatMul"]
    adds = [inits[n.input[1]] for n in model.graph.node if n.op_type == "Add"]
    return list(zip(mats, adds))


def test_each_layer_is_refit_to_dense_outputs_from_the_refit_model_upstream(monkeypatch):
    """The chain by hand: layer k+1 is the least-squares fit of the dense layer's outputs on
    [the kept channels the re-fitted pruned chain gives it, 1]. The pruned model computes
    exactly that chain (λ is not searched here: one strength, next to nothing)."""
    from onnxprune.compensation import sequential

    monkeypatch.setattr(sequential, "STRENGTHS", 1)
    model, calib = mlp(), batches()
    pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1, calib=calib,
                                     strategy=Strategy("l2", compensate="sequential",
                                                       damping=1e-9))
    assert report["check"]["ok"] and report["strategy"]["compensate"] == "sequential"
    kept = [np.asarray(g["kept"]) for g in sorted(report["groups"], key=lambda g: g["id"])
            if g["removed"]]
    assert len(kept) == 3

    x = np.concatenate([f["x"] for f in calib]).astype(np.float64)
    dense_layers = layers(model)
    dense_in, pruned_in = x, x          # the pruned chain carries its kept channels only
    for k, (w, b) in enumerate(dense_layers):
        rows = kept[k] if k < len(kept) else np.arange(w.shape[1])
        cols = kept[k - 1] if k else np.arange(w.shape[0])
        target = dense_in @ w + b
        if k == 0:                      # nothing upstream is removed: the layer stays
            fit = np.concatenate([w[cols][:, rows], b[None, rows]])
        else:
            design = np.concatenate([pruned_in, np.ones((len(x), 1))], axis=1)
            fit = np.linalg.lstsq(design, target[:, rows], rcond=None)[0]
        pruned_out = np.concatenate([pruned_in, np.ones((len(x), 1))], axis=1) @ fit
        last = k == len(dense_layers) - 1
        dense_in = target if last else np.maximum(target, 0)
        pruned_in = pruned_out if last else np.maximum(pruned_out, 0)
        if k:
            pw, pb = layers(pruned)[k]
            np.testing.assert_allclose(pw, fit[:-1], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(pb, fit[-1], rtol=1e-4, atol=1e-4)
    got = np.concatenate([run_model(pruned, f)[pruned.graph.output[0].name] for f in calib])
    np.testing.assert_allclose(got, pruned_in, rtol=1e-4, atol=1e-4)


def _output_error(model, pruned, data) -> float:
    want = np.concatenate([run_model(model, f)[model.graph.output[0].name] for f in data])
    got = np.concatenate([run_model(pruned, f)[pruned.graph.output[0].name] for f in data])
    return float(np.sum(np.square(got - want)) / np.sum(np.square(want)))


def test_errors_do_not_pile_up_with_depth():
    """On a deeper network, re-fitting against the re-fitted model's own inputs ends closer to
    the dense outputs, on held-out inputs, than OBS against the dense model's statistics."""
    model = mlp((8, 24, 24, 24, 24, 24, 6), seed=5)
    calib, held_out = batches(512, 8, seed=0), batches(256, 8, seed=1)
    errors = {}
    for method in ("none", "obs", "sequential"):
        pruned, _ = onnxprune.prune(model, ratio=0.5, round_to=1,
                                    calib=None if method == "none" else calib,
                                    strategy=Strategy("l2", compensate=method))
        errors[method] = _output_error(model, pruned, held_out)
    assert errors["sequential"] < errors["obs"] < errors["none"]


@pytest.mark.parametrize("make", ["residual", "grouped", "concat", "flatten_gemm",
                                  "squeeze_excitation", "channel_shuffle"])
def test_oracle_holds_after_sequential_reconstruction(make):
    from . import test_patterns

    model = getattr(test_patterns, make)()
    a = analyze_model(model)
    stats = calibration_stats(a, "random")
    strategy = Strategy("l2", compensate="sequential")
    assert_oracle(a, ratio=0.5, strategy=strategy, stats=stats)
    _, report = onnxprune.prune(model, ratio=0.5, round_to=1, calib="random", strategy=strategy)
    assert report["check"]["ok"]
    assert not any("not re-fitted" in n for n in report["strategy"]["notes"])


def test_cross_validation_keeps_a_fit_from_memorizing_few_samples():
    """Eight samples and 24 kept inputs: a plain least-squares fit interpolates them and
    misses new inputs. Cross-validation over the samples picks a stronger λ (or no re-fit),
    says so, and ends closer to the dense model on held-out inputs than the plain fit."""
    from onnxprune.compensation import sequential

    model = mlp((8, 48, 6), seed=2)
    few, held_out = batches(8, 8, seed=0), batches(256, 8, seed=1)
    strategy = Strategy("l2", compensate="sequential", damping=1e-6)
    errors, notes = {}, {}
    for strengths in (1, sequential.STRENGTHS):
        sequential.STRENGTHS, saved = strengths, sequential.STRENGTHS
        try:
            pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1, calib=few,
                                             strategy=strategy)
        finally:
            sequential.STRENGTHS = saved
        errors[strengths] = _output_error(model, pruned, held_out)
        notes[strengths] = report["strategy"]["notes"]
    assert errors[sequential.STRENGTHS] < errors[1]
    assert any("cross-validated" in n for n in notes[sequential.STRENGTHS])


def test_kxk_and_grouped_convs_regress_on_their_patches():
    """A 3×3 conv and a grouped conv re-fitted on their input patches end closer to the dense
    model than plain removal, with no note that one fell back to the bias."""
    from .test_patterns import grouped

    model = grouped()
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(32)]
    runs = _without_and_with(model, data)
    assert not any("bias re-fit only" in n for _, r in runs.values()
                   for n in r["strategy"]["notes"])
    errors = {m: _output_error(model, pruned, data) for m, (pruned, _) in runs.items()}
    assert errors["sequential"] < 0.5 * errors["none"]


def _without_and_with(model, data) -> dict:
    """{method: (pruned, report)} by l2 at ratio 0.5 with no re-fit and with sequential."""
    return {method: onnxprune.prune(model, ratio=0.5, round_to=1,
                                    calib=None if method == "none" else data,
                                    strategy=Strategy("l2", compensate=method))
            for method in ("none", "sequential")}


@pytest.mark.parametrize("group, strides, pads, dilations, extra", [
    (1, [2, 2], [0, 0, 0, 0], [1, 1], [0, 0]),
    (2, [2, 1], [1, 0, 1, 1], [1, 2], [1, 0]),
    (1, [3, 2], [1, 1, 0, 2], [2, 1], [0, 1]),
])
def test_a_transposed_conv_is_a_plain_conv_on_its_zero_upsampled_input(group, strides, pads,
                                                                        dilations, extra):
    """What the regression reads: the rule's ``transposed`` window over the zero-upsampled
    input, times the flipped kernel, is ONNX Runtime's ConvTranspose output."""
    from onnxprune.compensation.sequential import _upsampled_window, _zero_upsampled
    from onnxprune.calibration.capture import unfold
    from onnxprune.graph import ModelGraph
    from onnxprune.rules import rule_for

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    b = GraphBuilder()
    b.initializers.append(numpy_helper.from_array(w, "w"))
    y = b.op("ConvTranspose", ["x", "w"], kernel_shape=[3, 2], strides=strides, pads=pads,
             dilations=dilations, output_padding=extra, group=group)
    model = b.model({"x": [2, 4, 5, 6]}, [y])
    want = run_model(model, {"x": x})[y]
    graph = ModelGraph(model)
    view = rule_for(graph.nodes[0]).linear_view(graph.nodes[0], graph)
    patches = unfold(_zero_upsampled(x.astype(np.float64), view.transposed[1]),
                     *_upsampled_window(view.transposed))
    flipped = view.weight[:, :, ::-1]
    out, per = flipped.shape[0] // group, flipped.shape[1] * flipped.shape[2]
    got = np.concatenate([patches[:, g * per:(g + 1) * per] @
                          flipped[g * out:(g + 1) * out].reshape(out, -1).T
                          for g in range(group)], axis=1)
    got = got.reshape(2, want.shape[2], want.shape[3], -1).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(view.write(view.weight), w)


def test_a_transposed_conv_reading_removed_channels_is_refit():
    from .test_patterns import conv_transpose

    model = conv_transpose()
    a = analyze_model(model)
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(32)]
    strategy = Strategy("l2", compensate="sequential")
    assert_oracle(a, ratio=0.5, strategy=strategy, stats=calibration_stats(a, data))
    errors, kernels = {}, {}
    for method, (pruned, report) in _without_and_with(model, data).items():
        assert not any("not re-fitted" in n for n in report["strategy"]["notes"])
        errors[method] = _output_error(model, pruned, data)
        node = next(n for n in pruned.graph.node if n.op_type == "ConvTranspose")
        kernels[method] = next(numpy_helper.to_array(t) for t in pruned.graph.initializer
                               if t.name == node.input[1])
    assert kernels["sequential"].shape == kernels["none"].shape
    assert not np.allclose(kernels["sequential"], kernels["none"])     # it was re-fitted
    assert errors["sequential"] < errors["none"]


def test_damping_is_accepted_and_data_is_required():
    model = mlp()
    onnxprune.prune(model, ratio=0.5, round_to=1, calib=batches(),
                    strategy=Strategy("l2", compensate="sequential", damping=0.1))
    with pytest.raises(UserError, match="needs calibration data"):
        onnxprune.prune(model, ratio=0.5, strategy=Strategy("l2", compensate="sequential"))


def test_obspa_with_sequential_reconstruction_runs_without_data():
    """Data-free: the synthetic source's inputs drive the re-fit."""
    from .test_patterns import residual

    _, report = onnxprune.prune(residual(), ratio=0.5, round_to=1,
                                strategy=Strategy("obspa", compensate="sequential"))
    assert report["check"]["ok"] and report["strategy"]["calibration"]["samples"] > 0


def test_the_cli_takes_it(tmp_path):
    from onnxprune.cli import main

    src, out = tmp_path / "m.onnx", tmp_path / "p.onnx"
    onnx.save(mlp(), src)
    assert main(["prune", str(src), "-o", str(out), "--ratio", "0.5", "--round-to", "1",
                 "--calib", "random", "--compensate", "sequential", "--obs-damping", "0.05"]) == 0
    assert onnx.load(out).graph.output[0].name == mlp().graph.output[0].name
