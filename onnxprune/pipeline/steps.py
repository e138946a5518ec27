"""Pruning in steps: each step re-scores (and re-calibrates, re-compensates) the model the
previous step left, and each step is verified on its own against its own masked input, so the
chain is verified."""

from __future__ import annotations

import onnx

from ..errors import UserError
from ..io import load_model
from ..progress import task
from ..runtime import count_cost
from .analyze import Analyzed
from .options import PruneOptions
from .once import measure_fidelity, prune_step
from .report import StepSummary, TargetSection


def prune_in_steps(model, options: PruneOptions, progress=None
                   ) -> tuple[onnx.ModelProto, dict]:
    """Prune in ``options.steps`` smaller steps. Each step keeps the same share of what is
    left, so that together they remove ``ratio`` (or reach the target). The report is the last
    step's, with the dense model's params and MACs as "before" and every step summarized in
    ``steps``."""
    if isinstance(model, Analyzed):     # each step analyses its own input again
        raise UserError("pruning in steps needs a path or a ModelProto (with exclude=...), "
                        "not an analysed model")
    steps, target = options.steps, options.target
    current = dense_model = load_model(model)
    dense = count_cost(current, options.input_shapes)
    if target is not None and target[0] == "macs" and dense.macs is None:
        raise UserError("the MACs of this model are unknown (give --input-shape, or use "
                        "--target-params)")

    def share(r: float) -> float:       # per-step ratio: (1 − r)^(1/steps) of what is left
        return 1.0 - (1.0 - r) ** (1.0 / steps)

    summary, report = [], None
    with task(progress, f"pruning in {steps} steps", steps) as step:
        for k in range(1, steps + 1):
            current, report = prune_step(current, _step_options(options, k, current, dense,
                                                                share), progress=progress)
            summary.append(StepSummary(k, report.ratio, report.params.after, report.macs.after,
                                       report.check.ok if report.check else None))
            step()
    report.steps, report.ratio = summary, options.ratio
    if options.verify and options.fidelity:  # the chain's cost, against the first step's model
        last = report.fidelity.warning if report.fidelity else None
        report.fidelity = measure_fidelity(dense_model, current, options)
        report.warnings = [w for w in report.warnings if w != last]
        if report.fidelity is not None and report.fidelity.warning:
            report.warnings.append(report.fidelity.warning)
    report.params.before, report.macs.before = dense.params, dense.macs
    if target is not None:
        kind, fraction = target
        after = report.macs.after if kind == "macs" else report.params.after
        report.target = TargetSection(kind, fraction, None,
                                      after / (dense.macs if kind == "macs" else dense.params))
    return current, report.to_dict()


def _step_options(options: PruneOptions, k: int, current, dense, share) -> PruneOptions:
    """Step ``k``'s options: every ratio a share of what is left, or the target a share of
    what this step's input keeps."""
    changes = {name: share(value) for name, value in options.by_kind.items()}
    changes.update(steps=1, ratio=share(options.ratio))
    if options.target is not None:
        kind, fraction = options.target
        now = count_cost(current, options.input_shapes)
        have = now.macs if kind == "macs" else now.params
        want = (fraction ** (k / options.steps)) * (dense.macs if kind == "macs" else
                                                     dense.params)
        changes[f"target_{kind}"] = min(1.0, want / have)
    return options.replace(**changes)
