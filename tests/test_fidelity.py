"""Every prune shows what it cost (issue 15): the pruned model against the dense one on the
calibration inputs or on random ones, a one-line warning when the outputs collapse, and a
one-line warning when synthetic statistics had no BatchNorm to match (BN folded at export)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.cli import main
from onnxprune.pipeline import Strategy
from onnxprune.pipeline.fidelity import COLLAPSED_TOP1
from onnxprune.runtime import run_model

from .test_criteria import conv_bn_conv
from .test_patterns import residual


def test_the_report_says_how_far_the_outputs_moved():
    model = residual()
    _, light = onnxprune.prune(model, ratio=0.25, round_to=1)
    _, heavy = onnxprune.prune(model, ratio=0.9, round_to=1)
    for report in (light, heavy):
        (out,) = report["fidelity"]["outputs"]
        assert out["name"] == model.graph.output[0].name and -1 <= out["cosine_min"] <= 1
        assert report["fidelity"]["inputs"].startswith("random inputs")
        assert report["fidelity"]["samples"] == 32
    assert light["fidelity"]["outputs"][0]["cosine_mean"] > \
        heavy["fidelity"]["outputs"][0]["cosine_mean"]


def test_the_numbers_are_those_of_the_two_models():
    """Cosine of the pruned model's outputs to the dense model's, sample by sample, on the
    calibration batches given."""
    model = residual()
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1, calib=calib,
                                     strategy=Strategy("wanda"))
    name = model.graph.output[0].name
    a = np.stack([run_model(model, f)[name].ravel() for f in calib]).astype(np.float64)
    b = np.stack([run_model(pruned, f)[name].ravel() for f in calib]).astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    (out,) = report["fidelity"]["outputs"]
    assert out["cosine_mean"] == pytest.approx(cos.mean(), rel=1e-5)
    assert out["cosine_min"] == pytest.approx(cos.min(), rel=1e-5)
    assert report["fidelity"]["samples"] == 8


def test_a_collapse_is_one_warning_line(tmp_path, capsys):
    from importlib import resources

    demo = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))
    _, report = onnxprune.prune(demo, ratio=0.8, round_to=1)
    (out,) = report["fidelity"]["outputs"]
    assert out["top1_agreement"] < COLLAPSED_TOP1 and report["fidelity"]["collapsed"]
    assert any("far from the dense model's" in w for w in report["warnings"])
    assert main(["prune", demo, "-o", str(tmp_path / "o.onnx"), "--ratio", "0.8",
                 "--round-to", "1"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines()
                if line.startswith("warning:")]
    assert len(warnings) == 1 and "--calib" in warnings[0]


def _folded(model: onnx.ModelProto) -> onnx.ModelProto:
    """conv_bn_conv with its BatchNorm folded into the first conv, as exporters write it."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    conv, bn = model.graph.node[0], model.graph.node[1]
    gamma, beta, mean, var = (inits[n] for n in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(var + eps)
    w = inits[conv.input[1]] * scale[:, None, None, None]
    b = (inits[conv.input[2]] if len(conv.input) > 2 else 0) * scale + beta - mean * scale
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name == conv.input[1]:
            t.CopyFrom(numpy_helper.from_array(w.astype(np.float32), t.name))
    out.graph.initializer.append(numpy_helper.from_array(b.astype(np.float32), "folded_b"))
    first = out.graph.node[0]
    del first.input[2:]
    first.input.append("folded_b")
    first.output[0] = out.graph.node[1].output[0]
    out.graph.node.remove(out.graph.node[1])
    return out


def test_synthetic_statistics_without_batchnorm_say_so():
    model, _ = conv_bn_conv()
    folded = _folded(model)
    x = {"x": np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)}
    name = model.graph.output[0].name
    np.testing.assert_allclose(run_model(folded, x)[name], run_model(model, x)[name],
                               rtol=1e-4, atol=1e-5)
    _, kept = onnxprune.prune(model, ratio=0.5, round_to=1, strategy=Strategy("obspa"))
    _, gone = onnxprune.prune(folded, ratio=0.5, round_to=1, strategy=Strategy("obspa"))
    assert not any("BatchNormalization to match" in w for w in kept["warnings"])
    (warning,) = [w for w in gone["warnings"] if "BatchNormalization to match" in w]
    assert "folded" in warning and "--calib" in warning
    assert gone["strategy"]["calibration"]["source"].startswith("synthetic: N(0, 1)")


def test_generated_calibration_is_measured_on_fresh_samples():
    """A re-fit is fitted to the calibration inputs, so measuring on them flatters it: a
    generated source is measured on new samples of the same kind, and given data is labelled
    as the calibration inputs themselves."""
    model = residual()
    strategy = Strategy("l2", compensate="sequential")
    _, generated = onnxprune.prune(model, ratio=0.5, round_to=1, calib="random",
                                   strategy=strategy)
    assert generated["fidelity"]["inputs"] == "fresh random inputs (not those calibration used)"
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    _, given = onnxprune.prune(model, ratio=0.5, round_to=1, calib=calib, strategy=strategy)
    assert given["fidelity"]["inputs"].endswith("(the calibration inputs themselves)")


def test_a_dear_model_is_compared_on_fewer_samples():
    """The comparison spends at most COMPARISON_MACS a model: with a sample this dear, the
    minimum of 4 samples, the last batch cut along the sample axis; cheap samples keep all."""
    from onnxprune.pipeline.fidelity import COMPARISON_MACS, MIN_SAMPLES, fidelity_to_dense

    model, _ = conv_bn_conv()
    x = np.random.default_rng(0).standard_normal((6, 2, 5, 5)).astype(np.float32)
    batches = [{"x": x}, {"x": x}]
    dear = fidelity_to_dense(model, model, batches, "test", macs_per_sample=COMPARISON_MACS)
    cheap = fidelity_to_dense(model, model, batches, "test", macs_per_sample=1000)
    assert (dear.samples, cheap.samples) == (MIN_SAMPLES, 12)
    assert dear.outputs[0]["cosine_min"] == pytest.approx(1.0)


def test_a_scalar_input_is_shared_by_every_sample(tmp_path, monkeypatch):
    """A model with a scalar input (a transformers export's ``logits_to_keep``, a temperature)
    is compared too: the scalar is not a sample axis, so the comparison and the capture cut
    the other inputs only (the 1.1B decoder benchmark had no fidelity section before)."""
    from .builder import GraphBuilder

    b = GraphBuilder(seed=2)
    h = b.op("Relu", [b.op("Mul", [b.op("MatMul", ["x", b.weight(6, 16)]), "scale"])])
    y = b.op("MatMul", [h, b.weight(16, 3)])
    model = b.model({"scale": [], "x": ["N", 6]}, [y])      # the scalar first
    monkeypatch.setattr("onnxprune.pipeline.fidelity.MAX_SAMPLES", 5)   # a batch is cut
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.standard_normal((40, 6)).astype(np.float32),
             scale=np.array(0.5, np.float32))
    for data in ("random", str(calib)):
        _, report = onnxprune.prune(model, ratio=0.5, round_to=1, calib=data,
                                    strategy=Strategy("wanda", compensate="obs"))
        assert report["check"]["ok"]
        assert report["fidelity"] is not None and report["fidelity"]["samples"] == 5
        assert report["strategy"]["calibration"]["samples"] == (32 if data == "random" else 40)
