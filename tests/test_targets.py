"""--target-macs / --target-params: the ratio is searched for, the pruned model keeps at most
the asked share (measured on the pruned model, not only planned), and an unreachable or
malformed target is a one-line user error that writes nothing."""

from __future__ import annotations

from importlib import resources

import pytest

import onnxprune
from onnxprune.cli import main

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))


@pytest.mark.parametrize("kind,fraction", [("macs", 0.4), ("macs", 0.7), ("params", 0.3)])
def test_target_is_met_and_close(kind, fraction):
    _, report = onnxprune.prune(DEMO, round_to=1, **{f"target_{kind}": fraction})
    cost = report[kind]
    kept = cost["after"] / cost["before"]
    assert report["check"]["ok"]
    assert kept <= fraction + 1e-9
    assert kept >= fraction - 0.1            # the search does not overshoot by much
    assert report["target"]["kind"] == kind and report["target"]["planned"] == pytest.approx(kept)


def test_target_with_round_to_and_a_criterion():
    _, report = onnxprune.prune(DEMO, target_macs=0.5, strategy=onnxprune.Strategy("l1"))
    assert report["macs"]["after"] <= 0.5 * report["macs"]["before"]


@pytest.mark.parametrize("args,words", [
    (["--target-params", "0.001"], "cannot reach --target-params 0.001"),
    (["--target-macs", "0"], "--target-macs must be in (0, 1]"),
    (["--target-macs", "0.5", "--target-params", "0.5"], "one of --target-macs"),
])
def test_bad_targets_are_user_errors(tmp_path, capsys, args, words):
    out = tmp_path / "o.onnx"
    assert main(["prune", DEMO, "-o", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and words in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
