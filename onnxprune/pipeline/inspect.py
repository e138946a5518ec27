"""Reports on a model that prune nothing: its channel groups (``inspect``), and how much each
group hurts the outputs when pruned alone (``sensitivity``)."""

from __future__ import annotations

from ..errors import UserError
from ..runtime import count_cost
from ..verify import input_problem
from .analyze import Analyzed, analyze_model
from .options import Strategy
from .prune import blame_a_broken_input
from .report import barriers, group_entry
from .scoring import calibration_stats, describe
from .sensitivity import dead_channels, group_sensitivity


def inspect(model, exclude: tuple[str, ...] = (), input_shapes=None) -> dict:
    """Channel groups (members, size, prunable or why not), barriers, params and MACs. A model
    that fails the checker is refused: its groups would describe a model nothing can run."""
    a = analyze_model(model, exclude)
    problem = input_problem(a.model, runtime=False)
    if problem:
        raise UserError(problem)
    cost = count_cost(a.model, input_shapes)
    return {
        "opset": a.graph.opset,
        "nodes": len(a.graph.nodes),
        "params": cost.params,
        "macs": cost.macs,
        "groups": [group_entry(g) for g in a.groups if g.members],
        "barriers": barriers(a),
    }


@blame_a_broken_input
def sensitivity(model, calib="synthetic", ratios=(0.25, 0.5, 0.75),
                strategy: Strategy | None = None, input_shapes=None, exclude=(),
                progress=None, seed: int = 0, executor=None) -> dict:
    """Per-group output distortion when the group alone is pruned at each ratio, and the
    dead-channel rate where linear layers read (see ``sensitivity``). ``executor``
    (``onnxprune.parallel``): where the groups are measured."""
    for r in ratios:
        if not 0.0 < r < 1.0:
            raise UserError(f"ratios must be in (0, 1), got {r}")
    strategy = strategy or Strategy()
    strategy.check(True)
    a = model if isinstance(model, Analyzed) else analyze_model(model, exclude)
    stats = calibration_stats(a, calib, input_shapes, strategy.needs_gram, seed, progress)
    return {"criterion": strategy.criterion, "compensation": strategy.compensation,
            "ratios": list(ratios),
            "calibration": describe(calib, stats),
            "groups": group_sensitivity(a, stats, stats.batches, list(ratios), strategy,
                                        progress, seed=seed, executor=executor),
            "dead_channels": dead_channels(a, stats)}
