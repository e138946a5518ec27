"""Several weighted calibration sets fuse into the weighted mixture of their averages; the CLI
parses PATH@WEIGHT and rejects bad weights with a one-line error."""

from __future__ import annotations

import numpy as np
import pytest

import onnxprune
from onnxprune.pipeline import Strategy, analyze_model, calibration_stats
from onnxprune.calibration import CalibSource, parse_source
from onnxprune.cli import main
from onnxprune.errors import UserError

DIGITS = "onnxprune/data/demo_digits.onnx"


def digit_sets(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    large = (2.0 + 0.5 * rng.standard_normal((48, 1, 8, 8))).astype(np.float32)
    paths = []
    for name, data in (("small", small), ("large", large)):
        paths.append(str(tmp_path / f"{name}.npz"))
        np.savez(paths[-1], input=data)
    return paths


def test_fused_statistics_are_the_weighted_mixture_of_averages(tmp_path):
    a = analyze_model(DIGITS)
    small, large = digit_sets(tmp_path)
    one = calibration_stats(a, small)
    two = calibration_stats(a, large)
    fused = calibration_stats(a, [CalibSource(small, 1.0), CalibSource(large, 3.0)])
    assert fused.samples == 64
    assert fused.batch_weights == pytest.approx([0.25] + [0.75 / 3] * 3)
    checked = 0
    for name, m in fused.tensors.items():
        p, q = one.tensors[name], two.tensors[name]
        assert m.count == p.count + q.count
        for field in ("sum", "sum_sq", "sum_abs", "zeros"):
            want = 0.25 * getattr(p, field) / p.count + 0.75 * getattr(q, field) / q.count
            np.testing.assert_allclose(getattr(m, field) / m.count, want, rtol=1e-10)
        if m.gram is not None:
            want = 0.25 * p.gram / p.count + 0.75 * q.gram / q.count
            np.testing.assert_allclose(m.gram / m.count, want, rtol=1e-10)
            checked += 1
        for key, (g, count) in m.patches.items():
            want = 0.25 * p.patches[key][0] / p.patches[key][1] + \
                0.75 * q.patches[key][0] / q.patches[key][1]
            np.testing.assert_allclose(g / count, want, rtol=1e-10)
            checked += 1
    assert checked > 0


def test_a_set_fused_with_itself_changes_no_average(tmp_path):
    a = analyze_model(DIGITS)
    small, _ = digit_sets(tmp_path)
    one = calibration_stats(a, small)
    twice = calibration_stats(a, [CalibSource(small, 2.0), CalibSource(small, 5.0)])
    for name, m in twice.tensors.items():
        np.testing.assert_allclose(m.mean(), one.tensors[name].mean(), rtol=1e-10)
        np.testing.assert_allclose(m.rms(), one.tensors[name].rms(), rtol=1e-10)


def test_weights_steer_the_choice(tmp_path):
    """All weight on one set gives the same plan as that set alone."""
    small, large = digit_sets(tmp_path)
    strategy = Strategy("wanda")
    alone = onnxprune.prune(DIGITS, ratio=0.5, round_to=1, strategy=strategy, calib=large)[1]
    fused = onnxprune.prune(DIGITS, ratio=0.5, round_to=1, strategy=strategy,
                            calib=[CalibSource(small, 1e-9), CalibSource(large, 1.0)])[1]
    assert [g["kept"] for g in fused["groups"]] == [g["kept"] for g in alone["groups"]]
    assert "weight 1e-09" in fused["strategy"]["calibration"]["source"]


def test_parse_source():
    assert parse_source("data.npz") == CalibSource("data.npz", 1.0)
    assert parse_source("images@0.7", "resize=8") == CalibSource("images", 0.7, "resize=8")
    for bad in ("data.npz@x", "data.npz@0", "data.npz@-1"):
        with pytest.raises(UserError, match="--calib"):
            parse_source(bad)


def test_cli_fuses_sets_and_rejects_bad_weights(tmp_path, capsys):
    small, large = digit_sets(tmp_path)
    out = tmp_path / "out.onnx"
    assert main(["prune", DIGITS, "-o", str(out), "--criterion", "wanda", "--calib",
                 f"{small}@0.3", "--calib", f"{large}@0.7"]) == 0
    assert out.exists()
    bad = tmp_path / "bad.onnx"
    assert main(["prune", DIGITS, "-o", str(bad), "--criterion", "wanda", "--calib",
                 f"{small}@zero"]) == 2
    assert main(["prune", DIGITS, "-o", str(bad), "--preprocess", "resize=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2].startswith("error: --calib") and err[-1].startswith("error: --preprocess")
    assert not bad.exists()


def test_cli_reads_an_image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(6):
        Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)).save(folder / f"{k}.png")
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    assert main(["prune", DIGITS, "-o", str(out), "--criterion", "activation", "--calib",
                 str(folder), "--preprocess", "resize=8x8 scale=16", "--report",
                 str(report)]) == 0
    import json
    calib = json.loads(report.read_text())["strategy"]["calibration"]
    assert calib["samples"] == 6 and "resize=8x8 scale=16" in calib["source"]
