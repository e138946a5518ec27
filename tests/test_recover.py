"""Recovery by distillation (``onnxprune recover``, ``prune --recover``): the pruned model,
trained through onnx2torch to reproduce the dense one, ends closer to it on held-out samples;
only initializer values change, and they equal what PyTorch trained; failures are one line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("onnx2torch")

import onnxprune  # noqa: E402
from onnxprune.cli import main  # noqa: E402
from onnxprune.errors import UserError  # noqa: E402
from onnxprune.recovery import RecoverOptions, recover  # noqa: E402
from onnxprune.recovery.distill import Distillation  # noqa: E402
from onnxprune.runtime import run_model  # noqa: E402

from .builder import GraphBuilder  # noqa: E402
from .test_gradient import DIGITS, small_cnn  # noqa: E402


def image_batches(count=64, seed=0, shape=(3, 6, 6)):
    x = np.random.default_rng(seed).standard_normal((count,) + shape).astype(np.float32)
    return [{"x": x[i:i + 8]} for i in range(0, count, 8)]


def pruned_cnn():
    dense = small_cnn()
    pruned, _ = onnxprune.prune(dense, ratio=0.5, round_to=1)
    return dense, pruned


def _distance(dense, model, batches) -> float:
    name = dense.graph.output[0].name
    want = np.concatenate([run_model(dense, f)[name] for f in batches])
    got = np.concatenate([run_model(model, f)[name] for f in batches])
    return float(np.sum(np.square(got - want)) / np.sum(np.square(want)))


@pytest.mark.parametrize("train", ["biases", "all"])
def test_recovery_moves_the_pruned_model_towards_the_dense_one(train):
    dense, pruned = pruned_cnn()
    data, unseen = image_batches(), image_batches(seed=1)
    model, report = recover(dense, pruned, data, RecoverOptions(budget=4, train=train))
    assert report.improved and report.steps > 0
    assert report.loss["held_out_after"] < report.loss["held_out_before"]
    assert report.samples == {"train": 48, "held_out": 16}
    (out,) = report.outputs
    assert out["loss"] == "mse" and out["cosine_after"] > out["cosine_before"]
    assert _distance(dense, model, unseen) < _distance(dense, pruned, unseen)


def test_only_initializer_values_change_and_they_are_what_torch_trained():
    """Nodes, inputs, outputs and every initializer's name, type and shape stay; the trained
    ones hold exactly the trained tensors in ONNX layout (the Gemm's weight un-transposed and
    divided by its alpha), and ONNX Runtime computes what the trained module computes."""
    dense, pruned = pruned_cnn()
    data = image_batches()
    run = Distillation(dense, pruned, data, RecoverOptions(budget=3, train="all"))
    run.train()
    model = run.written()
    for field in ("node", "input", "output", "value_info"):
        assert list(getattr(model.graph, field)) == list(getattr(pruned.graph, field))
    before = {t.name: t for t in pruned.graph.initializer}
    changed = 0
    for t in model.graph.initializer:
        old = before[t.name]
        assert (t.data_type, list(t.dims)) == (old.data_type, list(old.dims))
        value = numpy_helper.to_array(t)
        if t.name in run.trained:
            np.testing.assert_array_equal(value, run.student.onnx_value(t.name))
            changed += not np.array_equal(value, numpy_helper.to_array(old))
        else:
            np.testing.assert_array_equal(value, numpy_helper.to_array(old))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert gemm.input[1] in run.trained and changed >= 3
    onnx.checker.check_model(model, full_check=True)
    import torch

    with torch.no_grad():
        want = run.student.forward(data[0])[0].numpy()
    got = run_model(model, data[0])[model.graph.output[0].name]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_biases_mode_trains_vectors_only():
    dense, pruned = pruned_cnn()
    run = Distillation(dense, pruned, image_batches(), RecoverOptions(budget=1))
    shapes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert run.trained and all(sum(d > 1 for d in shapes[n]) <= 1 for n in run.trained)
    assert run.report.params == sum(int(np.prod(shapes[n])) for n in run.trained)


def test_probability_outputs_get_kl():
    b = GraphBuilder(seed=1)
    h = b.op("Relu", [b.conv("x", 3, 8, k=1)])
    logits = b.op("Flatten", [b.op("GlobalAveragePool", [b.conv(h, 8, 5, k=1)])])
    dense = b.model({"x": ["N", 3, 6, 6]}, [b.op("Softmax", [logits], axis=1)])
    pruned, _ = onnxprune.prune(dense, ratio=0.5, round_to=1)
    _, report = recover(dense, pruned, image_batches(), RecoverOptions(budget=2))
    assert report.outputs[0]["loss"] == "kl"
    assert report.outputs[0]["top1_after"] is not None


def test_nothing_better_returns_the_pruned_model():
    """Unpruned, the student already equals the teacher: no state beats it."""
    dense = small_cnn()
    model, report = recover(dense, dense, image_batches(), RecoverOptions(budget=1))
    assert model is dense and not report.improved
    assert any("unchanged" in n for n in report.notes)


def test_too_few_samples_and_bad_options_are_one_line_errors():
    dense, pruned = pruned_cnn()
    with pytest.raises(UserError, match="at least 16 calibration samples"):
        recover(dense, pruned, image_batches(count=8))
    with pytest.raises(UserError, match="--held-out"):
        recover(dense, pruned, image_batches(), RecoverOptions(held_out=1.0))


def test_a_model_onnx2torch_cannot_convert_is_one_line(tmp_path, capsys):
    b = GraphBuilder(opset=18, seed=0)
    h = b.op("Mish", [b.conv("x", 3, 8, k=1)])
    dense = b.model({"x": ["N", 3, 6, 6]}, [b.conv(h, 8, 4, k=1)])
    pruned, _ = onnxprune.prune(dense, ratio=0.5, round_to=1)
    paths = [tmp_path / "dense.onnx", tmp_path / "pruned.onnx"]
    onnx.save(dense, paths[0])
    onnx.save(pruned, paths[1])
    out = tmp_path / "out.onnx"
    code = main(["recover", str(paths[0]), str(paths[1]), "-o", str(out), "--calib", "random"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: recover: ") and "onnx2torch" in err
    assert "\n" not in err and not out.exists()


def test_the_cli_recovers_and_prune_recover_does_both(tmp_path, capsys):
    out, pruned = tmp_path / "rec.onnx", tmp_path / "p.onnx"
    assert main(["prune", DIGITS, "-o", str(pruned), "--ratio", "0.5"]) == 0
    assert main(["recover", DIGITS, str(pruned), "-o", str(out), "--calib", "natural",
                 "--recover-budget", "3", "--report", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "recovery: trained" in text and "held-out cosine" in text
    assert [o.name for o in onnx.load(out).graph.output] == \
        [o.name for o in onnx.load(pruned).graph.output]
    both = tmp_path / "both.onnx"
    assert main(["prune", DIGITS, "-o", str(both), "--ratio", "0.5", "--calib", "natural",
                 "--recover", "--recover-budget", "3"]) == 0
    assert "recovery: trained" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--recover-budget", "3"], "add --recover"),
    (["--recover"], "give --calib"),
])
def test_prune_recover_options_need_each_other(tmp_path, capsys, args, message):
    out = tmp_path / "o.onnx"
    assert main(["prune", DIGITS, "-o", str(out)] + args) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_the_error_of_a_wide_output_is_scaled_per_channel():
    """A detection head [N, 4 + classes, anchors]: boxes in pixels, scores in [0, 1]. Each
    channel's squared error is divided by that channel's mean square, so both count."""
    from onnxprune.recovery.distill import _mean_square

    rng = np.random.default_rng(0)
    head = np.concatenate([300 * rng.random((2, 4, 50)), rng.random((2, 3, 50))], axis=1)
    scale = _mean_square([head[:1], head[1:]]).numpy()
    assert scale.shape == (1, 7, 1)
    np.testing.assert_allclose(scale.ravel(), np.mean(np.square(head), axis=(0, 2)))
    logits = rng.standard_normal((4, 10))
    assert _mean_square([logits]).numpy() == pytest.approx(np.mean(np.square(logits)))


def test_kept_channels_name_the_dense_channels_each_thinned_tensor_holds():
    """With no re-fit, the first thinned tensor (its writer reads the untouched input) holds
    exactly the dense tensor's kept channels, in order."""
    from onnxprune.pipeline import analyze_model
    from onnxprune.pipeline.once import prune_step

    dense = small_cnn()
    options = onnxprune.PruneOptions(ratio=0.5, round_to=1, calib="random",
                                     recover=RecoverOptions(features=1.0))
    pruned, record = prune_step(analyze_model(dense), options)
    kept = record.kept_channels
    relu = next(n.output[0] for n in dense.graph.node if n.op_type == "Relu")
    axis, idx = kept[relu]
    assert axis == 1 and 0 < len(idx) < 6
    feeds = image_batches(count=4)[0]
    probe = {}
    for name, model in (("dense", dense), ("pruned", pruned)):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.output.append(onnx.helper.make_tensor_value_info(relu, 1, None))
        probe[name] = run_model(copy, feeds)[relu]
    np.testing.assert_allclose(probe["pruned"], probe["dense"][:, idx], rtol=1e-5, atol=1e-6)
    assert "kept_channels" not in record.to_dict()


def test_feature_matching_trains_on_thinned_tensors_too():
    dense = small_cnn()
    pruned, report = onnxprune.prune(dense, ratio=0.5, round_to=1, calib=image_batches(),
                                     recover=RecoverOptions(budget=4, train="all",
                                                            features=1.0))
    rec = report["recovery"]
    matched = [n for n in rec["notes"] if n.startswith("intermediate tensors matched: ")]
    assert matched and int(matched[0].split(": ")[1].split()[0]) >= 1
    assert rec["improved"] and rec["loss"]["held_out_after"] < rec["loss"]["held_out_before"]
    onnx.checker.check_model(pruned, full_check=True)


def test_feature_matching_needs_the_plan():
    dense, pruned = pruned_cnn()
    with pytest.raises(UserError, match="only the prune that made the model knows"):
        recover(dense, pruned, image_batches(), RecoverOptions(features=1.0))
    with pytest.raises(UserError, match="--steps 1"):
        onnxprune.prune(dense, ratio=0.5, steps=2, calib="random",
                        recover=RecoverOptions(features=1.0))
    with pytest.raises(UserError, match="weight >= 0"):
        RecoverOptions(features=-1.0).check()
    assert main(["prune", DIGITS, "-o", "unused.onnx", "--calib", "random",
                 "--recover-features", "1"]) == 2
