"""Every option does something or is refused: the CLI, the API and ``sweep`` share one options
record (``PruneOptions``), an option that the others make pointless is a one-line error
(exit 2), and ``--seed`` reaches every random draw."""

from __future__ import annotations

import json
import platform
from importlib import resources

import numpy as np
import pytest

import onnxprune
from onnxprune.cli import main
from onnxprune.errors import UserError
from onnxprune.pipeline import PruneOptions, Strategy, analyze_model, calibration_stats
from onnxprune.pipeline import once
from onnxprune.runtime import make_inputs

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("args, says", [
    (["--normalize", "lamp"], "--normalize ranks groups against each other"),
    (["--normalize", "energy", "--allocation", "global"], "reads calibration statistics"),
    (["--rank-by", "score-per-mac"], "--rank-by ranks groups against each other"),
    (["--max-ratio", "0.5"], "--max-ratio caps what one group loses"),
    (["--obs-damping", "1.0"], "--obs-damping regularizes the re-fit"),
    (["--criterion", "random", "--group-reduction", "mean"], "does not read"),
    (["--latency-threads", "2"], "it needs --target-latency"),
    (["--calib", "random"], "reads weights only"),
    (["--ratio", "0.3", "--target-macs", "0.5"], "drop --ratio"),
    (["--ratio", "0.5", "--target-params", "0.5"], "drop --ratio"),
    (["--steps", "2", "--target-latency", "0.5"], "drop --steps"),
    (["--allocation", "latency"], "give --target-latency"),
    (["--latency-table", "t.json"], "it needs --target-latency"),
    (["--round-to", "x"], "is not a whole number or 'auto'"),
])
def test_an_option_without_effect_is_refused(args, says, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["prune", DEMO, "-o", str(out)] + args) == 2
    assert says in _one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("args", [
    ["--normalize", "lamp", "--allocation", "global"],
    ["--normalize", "energy", "--allocation", "global", "--criterion", "wanda",
     "--calib", "random"],
    ["--max-ratio", "0.5", "--allocation", "global"],
    ["--obs-damping", "1.0", "--criterion", "obspa"],
    ["--calib", "random", "--criterion", "wanda"],
    ["--group-reduction", "max"],
    ["--round-to", "auto"],
])
def test_the_same_options_with_an_effect_are_taken(args, tmp_path):
    assert main(["prune", DEMO, "-o", str(tmp_path / "o.onnx"), "--round-to", "1"] + args) == 0


def test_the_api_refuses_what_the_cli_refuses():
    for fields in ({"strategy": Strategy("l2", normalization="lamp")},
                   {"strategy": Strategy("l2", max_ratio=0.5)},
                   {"calib": "random"},
                   {"ratio": 0.3, "target_macs": 0.5}):
        with pytest.raises(UserError):
            onnxprune.prune(DEMO, **fields)


def test_sweep_shares_the_options_and_their_checks(capsys):
    assert main(["sweep", DEMO, "--ratios", "0.5", "--runs", "3", "--normalize", "lamp"]) == 2
    assert "--normalize" in _one_line_error(capsys)
    assert main(["sweep", DEMO, "--ratios", "0.5", "--runs", "3", "--criterion", "random",
                 "--seed", "7", "--hidden", "0.1", "--max-ratio", "0.5", "--allocation",
                 "global", "--json"]) == 0
    prune = json.loads(capsys.readouterr().out)["settings"]["prune"]
    assert (prune["seed"], prune["criterion"], prune["max_ratio"], prune["hidden"]) == (
        7, "random", 0.5, 0.1)


def test_seed_reaches_the_check_inputs_and_the_random_criterion(monkeypatch):
    seen = []
    real = once.compare_outputs

    def recording(pruned, masked, feeds, *args, **kwargs):
        seen.append(feeds)
        return real(pruned, masked, feeds, *args, **kwargs)
    monkeypatch.setattr(once, "compare_outputs", recording)
    plans = {}
    for seed in (0, 3):
        _, report = onnxprune.prune(DEMO, ratio=0.5, round_to=1, seed=seed,
                                    strategy=Strategy("random"))
        plans[seed] = [g["kept"] for g in report["groups"]]
        assert report["strategy"]["seed"] == seed
    model = analyze_model(DEMO).model
    for feeds, seed in zip(seen, (0, 3)):
        want = make_inputs(model, None, seed)
        assert all(np.array_equal(feeds[k], want[k]) for k in want)
    assert plans[0] != plans[3]


def test_seed_reaches_random_calibration_inputs():
    a = analyze_model(DEMO)
    one, two = (calibration_stats(a, "random", seed=s) for s in (0, 3))
    name = next(iter(one.tensors))
    assert not np.allclose(one.tensors[name].mean(), two.tensors[name].mean())


def test_the_cli_seed_reaches_the_options(monkeypatch, tmp_path):
    got = []

    def capture(model, options, **kwargs):
        got.append(options)
        raise UserError("stop here")
    monkeypatch.setattr(onnxprune.pipeline, "prune", capture)
    assert main(["prune", DEMO, "-o", str(tmp_path / "o.onnx"), "--seed", "5"]) == 2
    assert got[0].seed == 5 and isinstance(got[0], PruneOptions)


def test_compare_samples_limits_an_npz(tmp_path, capsys):
    x = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "data.npz", input=x)
    assert main(["compare", DEMO, DEMO, "--data", str(tmp_path / "data.npz"), "--samples", "5",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 5


def test_round_to_auto_is_the_cpu_block(monkeypatch):
    from onnxprune.runtime import hardware

    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert hardware.round_to_for("cpu", {"avx2", "avx512f"}) == (16 if x86 else 8)
    assert hardware.round_to_for("cpu", {"avx2"}) == (16 if x86 else 8)
    assert hardware.round_to_for("cpu", {"sse4_2"}) == 8
    assert hardware.round_to_for("cuda") == 8
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"sse4_2"})   # neither AVX2 nor 512
    assert PruneOptions(round_to="auto").round_to == 8
    _, report = onnxprune.prune(DEMO, ratio=0.5, round_to="auto")
    assert report["round_to"] == 8 and report["check"]["ok"]
