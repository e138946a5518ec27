"""--target-macs / --target-params: the ratio is searched for, the pruned model keeps at most
the asked share (measured on the pruned model, not only planned), and an unreachable or
malformed target is a one-line user error that writes nothing. A latency target's search
spreads the rounding of groups of one size."""

from __future__ import annotations

from importlib import resources

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.allocation.ratio import kept_count
from onnxprune.cli import main
from onnxprune.pipeline import Strategy, analyze_model
from onnxprune.pipeline.once import spread_rounding
from onnxprune.pipeline.plan import MacCounter, make_plan
from onnxprune.pipeline.scoring import group_scores

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


def conv_chain(layers: int = 6, channels: int = 32) -> onnx.ModelProto:
    """Convs of one width in a chain: their groups all have the same size."""
    rng = np.random.default_rng(0)
    nodes, inits, previous, c_in = [], [], "x", 3
    for k in range(layers):
        inits.append(numpy_helper.from_array(
            rng.standard_normal((channels, c_in, 3, 3)).astype(np.float32), f"w{k}"))
        nodes += [helper.make_node("Conv", [previous, f"w{k}"], [f"c{k}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"])]
        previous, c_in = f"r{k}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [previous], ["y"]))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_spread_rounding_lets_groups_of_one_size_lose_their_steps_one_by_one():
    """With --round-to 16, groups of 32 channels all lose half at the same ratio (the plan
    jumps); with spread offsets (a latency target's search) they lose it one by one, between
    the same plans at 0 and at a half."""
    assert [kept_count(10, 1, 0.45, 2, offset) for offset in (None, 0.0, 0.5, 0.99)] == \
        [6, 4, 6, 6]
    a = analyze_model(conv_chain())
    scored = group_scores(a, Strategy())
    spread = spread_rounding(a, scored)
    counter = MacCounter(a, None)
    ratios = np.linspace(0.0, 0.5, 51)
    plain, even = ([counter.planned(make_plan(a, r, 16, None, Strategy(), s).removed)
                    for r in ratios] for s in (scored, spread))
    groups = sum(1 for g in a.groups if g.prunable and g.size > 1)
    assert groups >= 5
    assert len(set(plain)) <= 3 < groups <= len(set(even))
    assert all(b <= a_ for a_, b in zip(even, even[1:]))           # still falls with the ratio
    assert even[0] == plain[0] == counter.total() and even[-1] == plain[-1]


def test_a_latency_target_is_searched_with_spread_rounding():
    uniform = onnxprune.Strategy("l2", allocation="uniform")    # latency-aware takes steps
    _, report = onnxprune.prune(DEMO, target_latency=0.9, strategy=uniform)
    assert report["check"]["ok"] and report["target"]["spread_rounding"] is True
    _, report = onnxprune.prune(DEMO, target_macs=0.5)
    assert "spread_rounding" not in report["target"]
