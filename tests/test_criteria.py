"""Criteria score a whole group in one coordinate system, checked against numbers computed by
hand on a tiny Conv → BN → Relu → Conv graph; group reduction, normalization and global
allocation; every criterion keeps the oracle."""

from __future__ import annotations

import numpy as np
import pytest

import onnxprune
from onnxprune.allocation.ratio import _global_ratios
from onnxprune.pipeline import Strategy, analyze_model
from onnxprune.importance import CRITERIA, ScoringContext, normalize, score

from .builder import GraphBuilder
from .oracle import assert_oracle

C_IN, C, C_OUT = 2, 4, 3


def conv_bn_conv():
    b = GraphBuilder(seed=7)
    w1, b1 = b.weight(C, C_IN, 1, 1), b.weight(C)
    gamma = b.const(np.array([0.5, -2.0, 1.0, 0.1], np.float32))
    beta, mean = b.weight(C), b.weight(C)
    var = b.const(np.ones(C, np.float32))
    h = b.op("Conv", ["x", w1, b1], kernel_shape=[1, 1])
    h = b.op("Relu", [b.op("BatchNormalization", [h, gamma, beta, mean, var])])
    w2 = b.weight(C_OUT, C, 1, 1)
    model = b.model({"x": ["N", C_IN, 5, 5]}, [b.op("Conv", [h, w2], kernel_shape=[1, 1])])
    weights = {t.name: onnx_array(t) for t in model.graph.initializer}
    return model, {k: weights[v] for k, v in
                   dict(w1=w1, b1=b1, gamma=gamma, w2=w2).items()}


def onnx_array(t):
    from onnx import numpy_helper
    return numpy_helper.to_array(t).astype(np.float64)


def group_scores(model, name, reduction="sum"):
    a = analyze_model(model)
    (group,) = [g for g in a.groups if g.prunable and g.size == C]
    scores = score(name, ScoringContext(a.analysis, a.roots, a.groups, reduction))
    return scores[group.components]


def members(w):
    """Each member's per-channel slice, as the criteria see it: conv1's filters (weight and
    bias), the BN scale, conv2's input columns."""
    return [w["w1"].reshape(C, -1), w["b1"].reshape(C, 1), w["gamma"].reshape(C, 1),
            w["w2"].reshape(C_OUT, C).T]


@pytest.mark.parametrize("name,power", [("l1", 1), ("l2", 2)])
@pytest.mark.parametrize("reduction", ["sum", "mean", "max"])
def test_magnitude_by_hand(name, power, reduction):
    model, w = conv_bn_conv()
    per_member = np.stack([(np.abs(m) ** power).sum(axis=1) for m in members(w)])
    want = {"sum": per_member.sum(0), "mean": per_member.mean(0),
            "max": per_member.max(0)}[reduction]
    np.testing.assert_allclose(group_scores(model, name, reduction), want, rtol=1e-6)


def test_bn_scale_is_abs_gamma():
    model, w = conv_bn_conv()
    np.testing.assert_allclose(group_scores(model, "bn_scale"), np.abs(w["gamma"]))


def test_fpgm_sums_distances_between_filters():
    """Only producers' filters count: conv1's weight (the bias, BN scale and conv2's input
    columns are not filters)."""
    model, w = conv_bn_conv()
    filters = w["w1"].reshape(C, -1)
    distances = np.linalg.norm(filters[:, None] - filters[None], axis=2).sum(1)
    np.testing.assert_allclose(group_scores(model, "fpgm"), distances, rtol=1e-6)


def test_random_is_seeded():
    model, _ = conv_bn_conv()
    a, b = group_scores(model, "random"), group_scores(model, "random")
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == C


def test_lamp_normalization_by_hand():
    from onnxprune.groups.grouping import Group

    g = Group(0, np.array([0, 1, 2]), 1, [], [], True)
    s = np.array([1.0, 3.0, 2.0])
    # LAMP: a score over the sum of the scores not smaller than it.
    np.testing.assert_allclose(normalize(s, [g], "lamp"), [1 / 6, 3 / 3, 2 / 5])
    np.testing.assert_allclose(normalize(s, [g], "max"), s / 3)
    np.testing.assert_allclose(normalize(s, [g], "mean"), s / 2)


def test_energy_normalization_is_the_share_of_the_readers_output_lost():
    """A group's scores over E‖W₂h‖², the energy of conv2's outputs per position, computed
    here from h itself: scaling conv2 up scales OBS scores and energy alike and leaves the
    normalized scores where they were."""
    import onnx
    from onnx import helper, numpy_helper

    from onnxprune.importance import group_output_energy
    from onnxprune.pipeline.scoring import calibration_stats
    from onnxprune.runtime import session

    x = np.random.default_rng(0).standard_normal((8, C_IN, 5, 5)).astype(np.float32)
    normalized = []
    for scale in (1.0, 10.0):
        model, w = conv_bn_conv()
        w2 = next(t for t in model.graph.initializer
                  if numpy_helper.to_array(t).shape == (C_OUT, C, 1, 1))
        w2.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w2) * np.float32(scale),
                                            w2.name))
        a = analyze_model(model)
        ctx = ScoringContext(a.analysis, a.roots, a.groups, "sum",
                             calibration=calibration_stats(a, [{"x": x}]))
        (group,) = [g for g in a.groups if g.prunable and g.size == C]
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        relu = next(n for n in probe.graph.node if n.op_type == "Relu").output[0]
        probe.graph.output.append(helper.make_tensor_value_info(relu, onnx.TensorProto.FLOAT,
                                                                None))
        h = session(probe).run([relu], {"x": x})[0].transpose(0, 2, 3, 1).reshape(-1, C)
        want = np.mean(np.sum((h @ w["w2"].reshape(C_OUT, C).T * scale) ** 2, axis=1))
        energy = group_output_energy(ctx)
        assert energy[group.id] == pytest.approx(want, rel=1e-5)
        scores = score("obs", ctx)
        ranked = normalize(scores, [group], "energy", energy)[group.components]
        np.testing.assert_allclose(ranked, scores[group.components] / want, rtol=1e-6)
        normalized.append(ranked)
    np.testing.assert_allclose(normalized[0], normalized[1], rtol=1e-4)


def test_energy_normalization_is_the_latency_default_where_statistics_exist():
    assert Strategy("obs", allocation="latency").normalize_by == "energy"
    assert Strategy("l2", allocation="latency", compensate="obs").normalize_by == "energy"
    assert Strategy("l2", allocation="latency").normalize_by == "none"
    assert Strategy("obs", allocation="global").normalize_by == "mean"


def test_global_allocation_takes_the_lowest_across_groups():
    from onnxprune.groups.grouping import Group

    a = Group(0, np.array([0, 1, 2, 3]), 1, [], [], True)
    b = Group(1, np.array([4, 5, 6, 7]), 1, [], [], True)
    ranking = np.array([0.1, 0.2, 0.3, 0.4, 5.0, 6.0, 7.0, 8.0])
    ratios = _global_ratios([a, b], {0: 0.5, 1: 0.5}, ranking, max_ratio=0.9)
    assert ratios == {0: 0.75, 1: 0.25}   # capped: group a keeps at least one unit
    ratios = _global_ratios([a, b], {0: 0.5, 1: 0.5}, ranking, max_ratio=0.5)
    assert ratios == {0: 0.5, 1: 0.5}


@pytest.mark.parametrize("name", sorted(CRITERIA))
@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_every_criterion_keeps_the_oracle(name, allocation):
    from .test_patterns import residual

    model = residual()
    strategy = Strategy(name, allocation=allocation)
    calib = "random" if CRITERIA[name].needs != "weights" else None
    stats = None
    if calib:
        from onnxprune.pipeline import calibration_stats
        stats = calibration_stats(analyze_model(model), calib)
    assert_oracle(model, ratio=0.5, strategy=strategy, stats=stats)
    _, report = onnxprune.prune(model, ratio=0.5, round_to=1, strategy=strategy, calib=calib)
    assert report["check"]["ok"] and report["strategy"]["criterion"] == name


def test_bad_strategy_is_a_user_error(tmp_path, capsys):
    import onnx

    from onnxprune.cli import main

    src = tmp_path / "m.onnx"
    onnx.save(conv_bn_conv()[0], src)
    assert main(["prune", str(src), "--criterion", "nonsense"]) == 2
    assert "'nonsense' is not one of" in capsys.readouterr().err
    assert main(["prune", str(src), "--allocation", "global", "--max-ratio", "1.5"]) == 2
    assert not (tmp_path / "m.pruned.onnx").exists()


# -- criteria that read calibration data -------------------------------------------------

def _hidden_activations(w, x, model):
    """conv1 → BN → Relu computed by hand in numpy (what conv2 reads)."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    _, gamma, beta, mean, var = (inits.get(i) for i in bn.input)
    h = np.einsum("oi,nihw->nohw", w["w1"].reshape(C, C_IN), x) + w["b1"][None, :, None, None]
    h = gamma[None, :, None, None] * (h - mean[None, :, None, None]) / np.sqrt(
        var[None, :, None, None] + 1e-5) + beta[None, :, None, None]
    return np.maximum(h, 0.0)


@pytest.mark.parametrize("name", ["activation", "apoz", "wanda"])
def test_calibration_criteria_by_hand(name):
    model, w = conv_bn_conv()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, C_IN, 5, 5)).astype(np.float32)
    batches = [{"x": x[:4]}, {"x": x[4:]}]
    h = _hidden_activations(w, x.astype(np.float64), model)
    per_channel = np.moveaxis(h, 1, 0).reshape(C, -1)
    want = {"activation": np.abs(per_channel).mean(1),
            "apoz": 1.0 - (per_channel == 0).mean(1),
            "wanda": np.abs(w["w2"].reshape(C_OUT, C)).sum(0)
            * np.sqrt(np.square(per_channel).mean(1))}[name]
    a = analyze_model(model)
    from onnxprune.pipeline import calibration_stats

    stats = calibration_stats(a, batches)
    (group,) = [g for g in a.groups if g.prunable and g.size == C]
    got = score(name, ScoringContext(a.analysis, a.roots, a.groups, "sum", 0, stats))
    np.testing.assert_allclose(got[group.components], want, rtol=1e-5, atol=1e-12)
    assert stats.samples == 6


def test_calibration_from_npz_and_random(tmp_path):
    model, _ = conv_bn_conv()
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((5, C_IN, 5, 5)).astype(np.float32))
    for calib in (str(data), "random"):
        _, report = onnxprune.prune(model, ratio=0.5, round_to=1, calib=calib,
                                    strategy=Strategy("wanda"))
        assert report["check"]["ok"]


@pytest.mark.parametrize("arrays,words", [
    ({"y": np.zeros((2, C_IN, 5, 5), np.float32), "z": np.zeros(2)}, "no array for model input"),
    ({"x": np.zeros((2, C_IN, 5, 5), np.float64)}, "the model wants float32"),
    ({"x": np.zeros((2, C_IN, 4, 4), np.float32)}, "has shape [2, 2, 4, 4]"),
])
def test_bad_calibration_data_is_a_user_error(tmp_path, capsys, arrays, words):
    import onnx

    from onnxprune.cli import main

    src, data = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(conv_bn_conv()[0], src)
    np.savez(data, **arrays)
    assert main(["prune", str(src), "--criterion", "wanda", "--calib", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and words in err and len(err.strip().splitlines()) == 1
    assert main(["prune", str(src), "--criterion", "wanda"]) == 2
    assert "needs calibration data" in capsys.readouterr().err
    assert not (tmp_path / "m.pruned.onnx").exists()


def test_adaptive_allocation_scales_each_group_by_its_weight():
    from onnxprune.allocation import allocate
    from onnxprune.groups.grouping import Group

    a = Group(0, np.arange(0, 10), 1, [], [], True)
    b = Group(1, np.arange(10, 20), 1, [], [], True)
    from onnxprune.groups import Analysis

    empty = Analysis(analyze_model(conv_bn_conv()[0]).graph)   # not run: no tensors to keep
    plan = allocate(empty, [a, b], np.arange(20), np.arange(20.0), 0.4,
                    allocation="adaptive", weights={0: 2.0, 1: 0.5}, max_ratio=0.9)
    assert len(plan.groups[0].removed) == 8 and len(plan.groups[1].removed) == 2


def test_adaptive_allocation_runs_end_to_end_without_data():
    from .test_patterns import residual

    model = residual()
    _, report = onnxprune.prune(model, ratio=0.5, round_to=1,
                                strategy=Strategy("l2", allocation="adaptive"))
    assert report["check"]["ok"]
    assert any(n.startswith("adaptive ratio multipliers") for n in report["strategy"]["notes"])
    assert report["strategy"]["calibration"]["source"].startswith("synthetic")
