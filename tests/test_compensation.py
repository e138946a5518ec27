"""Compensation re-fits the layers that read removed channels: the OBS update equals the
least-squares optimum on a small case, the bias update keeps each output's mean, the patch
unfolding matches a real convolution, and the oracle holds with every method (the pruned and
the masked model both come from the compensated original)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxprune
from onnxprune.pipeline import Strategy, analyze_model, calibration_stats
from onnxprune.calibration.capture import unfold
from onnxprune.groups.consumers import find_consumers
from onnxprune.calibration import input_gram
from onnxprune.compensation.refit import _obs
from onnxprune.runtime import run_model

from .builder import GraphBuilder
from .oracle import assert_oracle

N_IN, N_HID, N_OUT, SAMPLES = 6, 8, 5, 200


def two_layers(bias: bool = True):
    """x → MatMul → Add(bias) → Relu → MatMul → Add(bias): the hidden neurons are one group.
    Without ``bias``, the second layer has none (as in a Llama-style MLP)."""
    b = GraphBuilder(seed=4)
    h = b.op("Relu", [b.op("Add", [b.op("MatMul", ["x", b.weight(N_IN, N_HID)]),
                                   b.weight(N_HID)])])
    out = b.op("MatMul", [h, b.weight(N_HID, N_OUT)])
    if bias:
        out = b.op("Add", [out, b.weight(N_OUT)])
    graph = helper.make_graph(b.nodes, "mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", N_IN])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", N_OUT])],
                              b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def calibration(seed=0):
    x = np.random.default_rng(seed).standard_normal((SAMPLES, N_IN)).astype(np.float32)
    return [{"x": x[i:i + 50]} for i in range(0, SAMPLES, 50)]


def hidden_and_output(model, batches):
    """The second layer's input H and the model output Y on the calibration data."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    relu = next(n for n in probe.graph.node if n.op_type == "Relu").output[0]
    probe.graph.output.append(onnx.ValueInfoProto(name=relu))
    runs = [run_model(probe, f) for f in batches]
    out = probe.graph.output[0].name
    return (np.concatenate([r[relu] for r in runs]).astype(np.float64),
            np.concatenate([r[out] for r in runs]).astype(np.float64))


def test_obs_update_is_the_least_squares_optimum():
    model = two_layers()
    a = analyze_model(model)
    batches = calibration()
    stats = calibration_stats(a, batches)
    consumer = next(c for c in find_consumers(a.analysis) if c.weight.shape == (N_OUT, N_HID, 1))
    removed = np.zeros(N_HID, bool)
    removed[[1, 4, 6]] = True
    moments = stats.get(consumer.input_name)
    delta_w, delta_b = _obs(consumer, removed, moments, *input_gram(consumer, moments),
                            damping=0.0)

    h, y = hidden_and_output(model, batches)
    # Least squares of the layer's outputs on the kept inputs and a constant.
    w = consumer.weight[:, :, 0]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    add = [n for n in model.graph.node if n.op_type == "Add"][-1]
    bias = next(inits[i] for i in add.input if i in inits).astype(np.float64)
    target = h @ w.T + bias
    design = np.concatenate([h[:, ~removed], np.ones((len(h), 1))], axis=1)
    best, *_ = np.linalg.lstsq(design, target, rcond=None)
    np.testing.assert_allclose((w + delta_w[:, :, 0])[:, ~removed], best[:-1].T, atol=1e-6)
    np.testing.assert_allclose(bias + delta_b, best[-1], atol=1e-6)


def test_a_layer_without_bias_gets_the_least_squares_optimum_of_its_weights_alone():
    """Bias-free layers (every Llama-style MLP) are re-fitted too: the kept weights are the
    least-squares fit of the layer's outputs without a constant, as SparseGPT's update."""
    model = two_layers(bias=False)
    a = analyze_model(model)
    batches = calibration()
    stats = calibration_stats(a, batches)
    consumer = next(c for c in find_consumers(a.analysis) if c.view.shape == (N_OUT, N_HID, 1))
    assert consumer.bias is None
    removed = np.zeros(N_HID, bool)
    removed[[0, 3, 5]] = True
    moments = stats.get(consumer.input_name)
    delta_w, delta_b = _obs(consumer, removed, moments, *input_gram(consumer, moments),
                            damping=0.0)
    assert not delta_b.any()
    h, _ = hidden_and_output(model, batches)
    w = consumer.weight[:, :, 0]
    best, *_ = np.linalg.lstsq(h[:, ~removed], h @ w.T, rcond=None)
    np.testing.assert_allclose((w + delta_w[:, :, 0])[:, ~removed], best.T, atol=1e-6)
    np.testing.assert_array_equal((w + delta_w[:, :, 0])[:, removed], 0.0)

    _, dense = hidden_and_output(model, batches)
    errors = {}
    for method in ("none", "obs"):
        pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1,
                                         calib=None if method == "none" else batches,
                                         strategy=Strategy("l2", compensate=method))
        assert report["check"]["ok"]
        assert not any("not compensated" in n for n in report["strategy"]["notes"])
        got = np.concatenate([run_model(pruned, f)[pruned.graph.output[0].name]
                              for f in batches])
        errors[method] = float(np.mean(np.square(got - dense)))
    assert errors["obs"] < 0.8 * errors["none"]       # 0.33 against 0.50 here


def test_bias_update_keeps_each_output_mean():
    model = two_layers()
    batches = calibration()
    strategy = Strategy("l2", compensate="bias")
    pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1, strategy=strategy,
                                     calib=batches)
    assert report["check"]["ok"]
    _, dense = hidden_and_output(model, batches)
    got = np.concatenate([run_model(pruned, f)[pruned.graph.output[0].name] for f in batches])
    np.testing.assert_allclose(got.mean(0), dense.mean(0), atol=1e-4)


def test_compensation_lowers_the_error():
    model = two_layers()
    batches = calibration()
    _, dense = hidden_and_output(model, batches)
    errors = {}
    for method in ("none", "bias", "obs"):
        pruned, _ = onnxprune.prune(model, ratio=0.5, round_to=1,
                                    calib=None if method == "none" else batches,
                                    strategy=Strategy("l2", compensate=method))
        got = np.concatenate([run_model(pruned, f)[pruned.graph.output[0].name]
                              for f in batches])
        errors[method] = float(np.mean(np.square(got - dense)))
    assert errors["obs"] < errors["bias"] < errors["none"]


def test_unfold_matches_a_convolution():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    window = ((3, 2), (2, 1), (1, 0, 1, 1), (1, 2))
    b = GraphBuilder()
    b.initializers.append(onnx.numpy_helper.from_array(w, "w"))
    y = b.op("Conv", ["x", "w"], kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1],
             dilations=[1, 2])
    model = b.model({"x": [2, 3, 7, 6]}, [y])
    want = run_model(model, {"x": x})[y]
    patches = unfold(x.astype(np.float64), *window)
    got = (patches @ w.reshape(4, -1).T).reshape(2, want.shape[2], want.shape[3], 4)
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["bias", "obs"])
@pytest.mark.parametrize("criterion", ["l2", "obs", "obspa"])
def test_oracle_holds_after_compensation(method, criterion):
    from .test_patterns import residual

    model = residual()
    a = analyze_model(model)
    stats = calibration_stats(a, "random")
    assert_oracle(a, ratio=0.5, strategy=Strategy(criterion, compensate=method), stats=stats)
    _, report = onnxprune.prune(model, ratio=0.5, round_to=1, calib="random",
                                strategy=Strategy(criterion, compensate=method))
    assert report["check"]["ok"] and report["strategy"]["compensate"] == method


def test_obspa_needs_no_data_and_says_where_its_statistics_came_from():
    _, report = onnxprune.prune(two_layers(), ratio=0.5, round_to=1,
                                strategy=Strategy("obspa"))
    assert report["strategy"]["compensate"] == "obs"
    assert report["strategy"]["calibration"]["source"].startswith("synthetic")
    assert report["check"]["ok"]


def test_synthetic_probe_matches_batchnorm_statistics():
    """In the BN-matched probe every BatchNormalization input has, per channel, the running
    mean and variance the model stores, whatever the random inputs were."""
    from onnx import numpy_helper

    from onnxprune.calibration import match_batchnorm_statistics

    from .test_criteria import conv_bn_conv

    model, _ = conv_bn_conv()
    probe, matched = match_batchnorm_statistics(model)
    assert matched == 1
    onnx.checker.check_model(probe, full_check=True)
    bn = next(n for n in probe.graph.node if n.op_type == "BatchNormalization")
    inits = {t.name: numpy_helper.to_array(t) for t in probe.graph.initializer}
    probe.graph.output.append(onnx.ValueInfoProto(name=bn.input[0]))
    x = np.random.default_rng(1).normal(3.0, 5.0, (16, 2, 5, 5)).astype(np.float32)
    seen = run_model(probe, {"x": x})[bn.input[0]]
    np.testing.assert_allclose(seen.mean(axis=(0, 2, 3)), inits[bn.input[3]], atol=1e-4)
    np.testing.assert_allclose(seen.var(axis=(0, 2, 3)), inits[bn.input[4]], rtol=1e-3)
    # The model itself is untouched.
    assert [n.op_type for n in model.graph.node] == ["Conv", "BatchNormalization", "Relu", "Conv"]


def test_obspa_defaults_to_bn_matched_synthetic_data():
    from .test_criteria import conv_bn_conv

    _, report = onnxprune.prune(conv_bn_conv()[0], ratio=0.5, round_to=1,
                                strategy=Strategy("obspa"))
    assert report["check"]["ok"]
    assert report["strategy"]["calibration"]["source"].startswith(
        "synthetic: random inputs, activations matched to the running statistics of 1")


def test_stronger_damping_keeps_the_update_smaller():
    """λ → ∞ turns the OBS update into plain removal; a larger λ gives a smaller update."""
    model = two_layers()
    a = analyze_model(model)
    stats = calibration_stats(a, calibration())
    consumer = next(c for c in find_consumers(a.analysis) if c.weight.shape == (N_OUT, N_HID, 1))
    removed = np.zeros(N_HID, bool)
    removed[[0, 3]] = True
    m = stats.get(consumer.input_name)
    sizes = [np.linalg.norm(_obs(consumer, removed, m, *input_gram(consumer, m), damping=d)[0])
             for d in (0.01, 1.0, 100.0)]
    assert sizes[0] > sizes[1] > sizes[2]
    _, report = onnxprune.prune(model, ratio=0.5, round_to=1, calib=calibration(),
                                strategy=Strategy("obs", damping=1.0))
    assert report["check"]["ok"] and report["strategy"]["damping"] == 1.0


def _group_read_by(a, op: str):
    """The prunable group that a ``op`` node reads (not the one it makes)."""
    reader = next(n.label for n in a.graph.nodes if n.op == op and (
        op != "Conv" or n.attr("group", 1) > 1))
    return next(g for g in a.groups
                if g.prunable and reader in g.members and reader not in g.sources)


@pytest.mark.parametrize("make, op", [("grouped", "Conv"), ("conv_transpose", "ConvTranspose")])
def test_obs_scores_channels_read_by_grouped_and_transposed_convs(make, op):
    """OBS saliency comes from the layers that read a group: a grouped conv (one Hessian per
    group of channels) or a transposed conv (the diagonal E[x²], said in the notes). Such a
    group used to score all zeros, its order left to chance."""
    from onnxprune.importance import ScoringContext, score

    from . import test_patterns

    a = analyze_model(getattr(test_patterns, make)())
    stats = calibration_stats(a, "random")
    ctx = ScoringContext(a.analysis, a.roots, a.groups, "sum", 0, stats)
    scores = score("obs", ctx)[_group_read_by(a, op).components]
    assert np.all(scores > 0) and len(np.unique(scores)) == len(scores)
    assert not any("scored by l2" in note for note in ctx.notes)
    assert any("diagonal" in note for note in ctx.notes) == (op == "ConvTranspose")


def test_grouped_conv_is_refit_one_group_at_a_time():
    """OBS compensation of a grouped conv's inputs (a least-squares re-fit inside each group)
    brings the outputs closer to the dense model's than the bias update or none."""
    from .test_patterns import grouped

    model = grouped()
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(32)]
    dense = np.concatenate([run_model(model, f)[model.graph.output[0].name] for f in batches])
    errors = {}
    for method in ("none", "bias", "obs"):
        pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1,
                                         calib=None if method == "none" else batches,
                                         strategy=Strategy("l2", compensate=method))
        assert not any("not compensated" in n for n in report["strategy"]["notes"])
        got = np.concatenate([run_model(pruned, f)[pruned.graph.output[0].name]
                              for f in batches])
        errors[method] = float(np.mean(np.square(got - dense)))
    assert errors["obs"] < errors["bias"] < errors["none"]


def test_a_huge_obs_update_is_damped_until_it_is_not():
    """Nearly collinear inputs make H nearly singular: a removed channel that equals the
    difference of two kept ones over a small ε is re-fitted with weights of order 1/ε. Such
    an update (float32 rounding then shows in the check) is damped ten times more until it is
    at most MAX_UPDATE times the kept weights, and the notes say so."""
    from onnxprune.compensation.refit import MAX_UPDATE, _bounded_obs, _relative_size

    a = analyze_model(two_layers())
    stats = calibration_stats(a, calibration())
    consumer = next(c for c in find_consumers(a.analysis) if c.weight.shape == (N_OUT, N_HID, 1))
    moments = stats.get(consumer.input_name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, N_HID))
    x[:, 0] = x[:, 1] + 1e-5 * x[:, 2]          # channel 2 = (channel 0 − channel 1) / ε
    moments.gram, moments.count, moments.sum = x.T @ x, len(x), x.sum(0)
    removed = np.zeros(N_HID, bool)
    removed[2] = True
    raw = _obs(consumer, removed, moments, *input_gram(consumer, moments), damping=1e-12)[0]
    assert _relative_size(consumer, removed, raw) > 100 * MAX_UPDATE
    delta_w, _, note = _bounded_obs(consumer, removed, moments, input_gram(consumer, moments),
                                    1e-12)
    assert _relative_size(consumer, removed, delta_w) <= MAX_UPDATE
    assert note and note.startswith("OBS update damped to")


def test_an_over_fitting_update_is_damped_or_declined_on_held_out_batches():
    """64 hidden neurons re-fitted from 80 calibration samples over-fit: fitted on one batch,
    the update misses on the other, so it is damped or declined (the note says which), and
    on fresh inputs the result is no further from the dense model than plain removal."""
    b = GraphBuilder(seed=7)
    h = b.op("Relu", [b.op("MatMul", ["x", b.weight(16, 64)])])
    y = b.op("MatMul", [h, b.weight(64, 8)])
    model = b.model({"x": ["N", 16]}, [y])
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((40, 16)).astype(np.float32)} for _ in range(2)]
    fresh = {"x": rng.standard_normal((2000, 16)).astype(np.float32)}
    dense = run_model(model, fresh)[y]
    errors, notes = {}, []
    for method in ("none", "obs"):
        pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1,
                                         calib=calib if method == "obs" else None,
                                         strategy=Strategy("l2", compensate=method))
        assert report["check"]["ok"]
        errors[method] = float(np.mean(np.square(run_model(pruned, fresh)[y] - dense)))
        notes += report["strategy"]["notes"]
    assert any("held-out calibration batches" in n for n in notes), notes
    assert errors["obs"] <= errors["none"] * 1.05


def test_cholesky_solves_agree_with_the_general_inverse():
    """OBS's saliency and update solve H by its Cholesky factor; on a damped Gram matrix they
    give numpy's general inverse and solve, and a matrix that is not positive-definite falls
    back to them rather than failing."""
    from onnxprune.calibration.hessian import damped, inverse_diagonal, solve_damped
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 40))
    x[:, 5] = x[:, 4]                                   # a rank-deficient Gram matrix
    h = damped(x.T @ x / len(x), 0.01)
    b = rng.standard_normal((40, 7))
    np.testing.assert_allclose(inverse_diagonal(h), np.diag(np.linalg.inv(h)),
                               rtol=1e-10)
    np.testing.assert_allclose(solve_damped(h, b), np.linalg.solve(h, b), rtol=1e-8)
    indefinite = np.diag([2.0, -1.0, 3.0])
    np.testing.assert_allclose(inverse_diagonal(indefinite), [0.5, -1.0, 1 / 3])
    np.testing.assert_allclose(solve_damped(indefinite, np.ones(3)), [0.5, -1.0, 1 / 3])
