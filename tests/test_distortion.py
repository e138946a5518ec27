"""The ``distortion`` criterion: per-component output distortion measured through one ORT
session whose masked constants are overridable inputs. It must agree with the mask-mode
oracle built by ``apply_plan`` for that single component, and keep the pruning oracle."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnxprune.pipeline import Strategy, analyze_model, calibration_stats
from onnxprune.graph import ModelGraph
from onnxprune.importance import ScoringContext, score
from onnxprune.importance.distortion import MaskingSession
from onnxprune.runtime import batch_outputs, output_distortion
from onnxprune.rewrite import apply_plan

from .builder import GraphBuilder
from .oracle import assert_oracle
from .test_hidden import decoder
from .test_patterns import X, residual, stem

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))


def odd_constants():
    """Weights that read the stem's channels as a Constant node, as an initializer shared by
    two Convs and as an Identity of it: each needs a private overridable initializer."""
    b = GraphBuilder(seed=2)
    y = stem(b)
    w = b.rng.standard_normal((8, 16, 1, 1)).astype(np.float32)
    shared = b.weight(8, 16, 1, 1)
    convs = [b.op("Conv", [y, weight], kernel_shape=[1, 1]) for weight in (
        b.op("Constant", [], value=numpy_helper.from_array(w)), shared, shared,
        b.op("Identity", [shared]))]
    return b.model(X, [b.op("Sum", convs)])


def ir3(model):
    """The same model as IR 3 writes it: every initializer is also a graph input."""
    model.ir_version = 3
    model.graph.input.extend(helper.make_tensor_value_info(
        t.name, t.data_type, list(t.dims)) for t in model.graph.initializer)
    return model


def _measured(a):
    return [g for g in a.groups if g.prunable and g.size > 1]


def _masked_constants(model, overrides) -> dict[str, np.ndarray]:
    """What the masked model reads where the override session takes a feed."""
    graph = ModelGraph(model, infer_shapes=False)
    return {o.name: graph.const(model.graph.node[key[0]].input[key[1]])
            for key, o in overrides.items()}


@pytest.mark.parametrize("source", [DEMO, residual, odd_constants, lambda: ir3(residual())],
                         ids=["digits", "residual", "odd_constants", "ir3"])
def test_override_session_matches_single_component_masks(source):
    a = analyze_model(source if isinstance(source, str) else source())
    batches = calibration_stats(a, "random", gram=False).batches
    masking = MaskingSession(a.analysis, a.roots)
    names = [o.name for o in masking.overrides.values()]
    assert len(set(names)) == len(names)      # one private input per reader
    dense = batch_outputs(a.model, batches)
    checked = []
    for group in _measured(a):
        for comp in group.components[[0, 1, -1]].tolist():
            masked = apply_plan(a.model, a.analysis, a.roots == comp, "mask")
            feeds = masking.feeds(a.roots == comp)
            for name, want in _masked_constants(masked, masking.overrides).items():
                original = next(o.value for o in masking.overrides.values() if o.name == name)
                assert np.array_equal(feeds.get(name, original), want), name
            want = output_distortion(batch_outputs(masked, batches), dense)
            got = masking.component_distortion(comp, batches, dense)
            # float32 noise only: ORT fuses Conv+BN in the masked model, not with a fed weight
            assert got == pytest.approx(want, rel=1e-5, abs=1e-12)
            checked.append(want)
    assert len(checked) >= 3 and max(checked) > 1e-3


def test_a_fed_weight_overrides_the_initializer():
    a = analyze_model(DEMO)
    batches = calibration_stats(a, "random", gram=False).batches
    masking = MaskingSession(a.analysis, a.roots)
    (dense,) = masking.run(batches[:1])
    for override in masking.overrides.values():
        feeds = {**batches[0], override.name: np.zeros_like(override.value)}
        got = masking.session.run(masking.outputs, feeds)
        assert not np.allclose(got[0], dense[masking.outputs[0]]), override.name


def conv_conv():
    """x → 1×1 Conv (4 channels) → 1×1 Conv (2 outputs); the second reads channel 0 with
    zero weights, so removing channel 0 changes nothing."""
    b = GraphBuilder(seed=1)
    w1 = b.rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    w2 = b.rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    w2[:, 0] = 0.0
    h = b.op("Conv", ["x", b.const(w1, "w")], kernel_shape=[1, 1])
    y = b.op("Conv", [h, b.const(w2, "w")], kernel_shape=[1, 1])
    return b.model({"x": [4, 3, 5, 5]}, [y]), w1[:, :, 0, 0], w2[:, :, 0, 0]


def test_conv_conv_distortion_by_hand():
    model, w1, w2 = conv_conv()
    a = analyze_model(model)
    stats = calibration_stats(a, "random", gram=False)
    shares = np.linspace(1.0, 2.0, len(stats.batches))
    stats.batch_weights = list(shares / shares.sum())     # as if several sets were fused
    scores = score("distortion", ScoringContext(a.analysis, a.roots, a.groups, calibration=stats))
    (group,) = _measured(a)
    num, den = np.zeros(4), 0.0
    for k, feeds in enumerate(stats.batches):
        share = stats.batch_weights[k]
        h = np.einsum("oc,nchw->nohw", w1.astype(np.float64), feeds["x"])
        y = np.einsum("oc,nchw->nohw", w2.astype(np.float64), h)
        den += share * np.sum(y ** 2)
        for c in range(4):   # removing channel c takes w2[:, c]·h_c away from y
            num[c] += share * np.sum(np.einsum("o,nhw->nohw", w2[:, c], h[:, c]) ** 2)
    got = scores[group.components]
    assert got[0] == 0.0
    assert np.all(got[1:] > 1e-3)
    np.testing.assert_allclose(got, num / den, rtol=1e-5)


def test_hidden_groups_fall_back_to_l2():
    a = analyze_model(decoder("layernorm"))
    ctx = ScoringContext(a.analysis, a.roots, a.groups,
                         calibration=calibration_stats(a, "random", gram=False))
    scores = score("distortion", ctx)
    l2 = score("l2", ScoringContext(a.analysis, a.roots, a.groups))
    (hidden,) = [g for g in _measured(a) if g.kind == "hidden"]
    np.testing.assert_array_equal(scores[hidden.components], l2[hidden.components])
    assert any("1 group(s)" in note and "l2" in note for note in ctx.notes)
    others = [g for g in _measured(a) if g.kind != "hidden"]
    assert others and all(np.all(scores[g.components] > 0) for g in others)


def test_digits_scores_and_oracle():
    a = analyze_model(DEMO)
    stats = calibration_stats(a, "random", gram=False)
    scores = score("distortion", ScoringContext(a.analysis, a.roots, a.groups,
                                                calibration=stats))
    measured = {int(c) for g in _measured(a) for c in g.components}
    others = [int(r) for r in np.unique(a.roots) if int(r) not in measured]
    assert others and np.all(scores[others] == 0)
    assert np.count_nonzero(scores[sorted(measured)]) > len(measured) // 2
    assert_oracle(a, ratio=0.5, strategy=Strategy("distortion"), stats=stats)


def test_initializers_stay_untouched_in_the_analysed_model():
    a = analyze_model(residual())
    before = {t.name: numpy_helper.to_array(t).copy() for t in a.model.graph.initializer}
    inputs = [i.name for i in a.model.graph.input]
    MaskingSession(a.analysis, a.roots)
    assert [i.name for i in a.model.graph.input] == inputs
    for t in a.model.graph.initializer:
        assert np.array_equal(numpy_helper.to_array(t), before[t.name])
