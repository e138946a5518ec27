"""`onnxprune sensitivity`: per-group output distortion when the group alone is masked, the
dead-channel report, JSON and PNG output, and clear errors."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import onnx
import pytest

from onnxprune import pipeline as api
from onnxprune.cli import main

from .builder import GraphBuilder

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))
E, H = 8, 16


def half_dead_mlp():
    """x → MatMul → Add → Relu → MatMul: hidden neurons 0..7 have a bias of −100, so they are
    always 0 after the Relu (dead); 8..15 are alive and carry the output."""
    b = GraphBuilder(seed=5)
    bias = np.concatenate([np.full(H // 2, -100.0), np.zeros(H // 2)]).astype(np.float32)
    w1 = b.rng.standard_normal((E, H)).astype(np.float32)
    w1[:, : H // 2] = np.abs(w1[:, : H // 2]) * 0.01     # dead neurons get small weights too
    h = b.op("Relu", [b.op("Add", [b.op("MatMul", ["x", b.const(w1, "w")]), b.const(bias)])])
    out = b.op("MatMul", [h, b.weight(H, E)])
    return b.model({"x": ["N", E]}, [out])


def test_dead_neurons_cost_nothing_and_are_reported():
    info = api.sensitivity(half_dead_mlp(), calib="random", ratios=(0.5, 0.75))
    (group,) = info["groups"]
    assert group["kind"] == "mlp" and group["channels"] == H
    assert group["distortion"][0.5] == pytest.approx(0.0, abs=1e-12)   # the dead half goes first
    assert group["distortion"][0.75] > 1e-3
    (dead,) = [d for d in info["dead_channels"] if d["channels"] == H]
    assert dead["dead"] == H // 2 and dead["mean_zero_rate"] >= 0.5


def test_cli_table_json_and_plot(tmp_path, capsys):
    png = tmp_path / "sens.png"
    assert main(["sensitivity", DEMO, "--ratios", "0.25,0.5", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "distortion" in out and "dead channels" in out and f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["sensitivity", DEMO, "--ratios", "0.5", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["groups"] and all(g["distortion"]["0.5"] >= 0 for g in info["groups"])


@pytest.mark.parametrize("args,words", [
    (["--ratios", "half"], "expects numbers like 0.25,0.5"),
    (["--ratios", "1.5"], "ratios must be in (0, 1)"),
    (["--plot", "out.jpg"], "give a path ending in .png"),
    (["--calib", "missing.npz"], "calibration data not found"),
])
def test_bad_sensitivity_arguments(capsys, args, words):
    assert main(["sensitivity", DEMO, *args]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_does_not_change_the_model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(half_dead_mlp(), path)
    before = path.read_bytes()
    assert main(["sensitivity", str(path), "--calib", "random", "--json"]) == 0
    assert path.read_bytes() == before
