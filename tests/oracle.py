"""The correctness oracle every pruned model must pass (see the README)."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx

from onnxprune.pipeline import Analyzed, Strategy, analyze_model, masked_original
from onnxprune.pipeline.plan import MacCounter, planned_params, plan_for
from onnxprune.pipeline.refit import compensated
from onnxprune.graph import ModelGraph
from onnxprune.rewrite.bodies import has_bodies
from onnxprune.io import save_model
from onnxprune.io.weights import WeightStore
from onnxprune.runtime import count_cost, count_params, make_inputs, run_model
from onnxprune.runtime import needs_exact_run, user_inputs
from onnxprune.verify import relative_error

TOLERANCE = 1e-4


def external(model: onnx.ModelProto, folder) -> onnx.ModelProto:
    """``model`` saved with every tensor in an external data file in ``folder`` and loaded
    back from there: its weights then stay in files (``onnxprune.io.weights``)."""
    from onnxprune.io import load_model

    path = os.path.join(folder, "model.onnx")
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    return load_model(path)


def _full_check(model: onnx.ModelProto) -> None:
    """``onnx.checker``'s full check; a model whose weights are in files is checked as a
    user gets it: written out with its data file, then checked from the file."""
    if WeightStore.of(model) is None:
        return onnx.checker.check_model(model, full_check=True)
    with tempfile.TemporaryDirectory() as folder:
        path = save_model(model, os.path.join(folder, "pruned.onnx"))
        onnx.checker.check_model(str(path), full_check=True)


def assert_oracle(model, ratio=0.5, shapes=None, round_to=1, expect_pruned=True,
                  exclude=(), by_kind=None, strategy=None, stats=None) -> dict:
    """1. checker + ORT + same IO; 2. ratio 0 is bit-identical; 3. mask equivalence;
    4. MACs/params fall, exactly as the plan predicted them. Returns the measured numbers."""
    analyzed = model if isinstance(model, Analyzed) else analyze_model(model, exclude)
    assert not analyzed.analysis.failures, f"rules raised: {analyzed.analysis.failures}"
    original = analyzed.model
    feeds = make_inputs(original, shapes)
    reference = run_model(original, feeds)

    identical, _ = masked_original(analyzed, ratio=0.0, round_to=round_to)
    same = run_model(identical, feeds)
    for name, want in reference.items():
        assert np.array_equal(same[name], want), f"ratio 0 changed output {name}"

    pruned, masked = masked_original(analyzed, ratio=ratio, round_to=round_to, by_kind=by_kind,
                                     strategy=strategy, stats=stats)
    _full_check(pruned)
    assert user_inputs(pruned) == user_inputs(original)
    assert [o.name for o in pruned.graph.output] == [o.name for o in original.graph.output]
    got = run_model(pruned, feeds)              # it runs with every optimization...
    if needs_exact_run(pruned):                 # ... and is compared where that is exact
        got = run_model(pruned, feeds, exact=True)
    want = run_model(masked, feeds, exact=True)
    for name in reference:
        assert got[name].shape == reference[name].shape, f"output {name} changed shape"
        error = relative_error(got[name], want[name])
        assert error <= TOLERANCE, f"output {name}: relative error {error:.2e} vs masked original"
    if expect_pruned:
        # The check only means something if the removed channels mattered to the output.
        effect = max(relative_error(want[n], reference[n]) for n in reference)
        assert effect > 10 * TOLERANCE, f"masking changed the outputs by only {effect:.1e}"

    before, after = count_cost(original, shapes), count_cost(pruned, shapes)
    _assert_cost_as_planned(analyzed, ratio, round_to, by_kind, strategy, stats, shapes,
                            before, after)
    if expect_pruned:
        assert after.params < before.params
        if before.macs is not None:
            assert after.macs < before.macs
    return {"params": (before.params, after.params), "macs": (before.macs, after.macs)}


def _assert_cost_as_planned(analyzed, ratio, round_to, by_kind, strategy, stats, shapes,
                            before, after) -> None:
    """What the plan predicts (the numbers --target-macs/--target-params search on) is what
    the pruned model has. Bodies of control-flow nodes prune on their own, outside the plan."""
    strategy = strategy or Strategy()
    planned = plan_for(analyzed, ratio, round_to, by_kind, strategy, stats)
    base = compensated(analyzed, planned.removed, stats, strategy)[0]
    if not has_bodies(analyzed.model):
        assert planned_params(analyzed, planned.removed, count_params(base),
                              ModelGraph(base, infer_shapes=False)) == after.params, \
            "params differ from what the plan predicted"
    macs = MacCounter(analyzed, shapes)
    if macs.known and after.macs is not None:
        assert macs.planned(planned.removed) == after.macs, \
            "MACs differ from what the plan predicted"
