"""How much each group hurts the model's outputs when pruned, measured on calibration data.

For every prunable group and every ratio, the lowest-scoring share of the group's components
is masked (the same choice ``prune`` would make with the same criterion, and with the same
compensation re-fitting the layers that read them) in an otherwise dense model, and the
outputs on the calibration batches are compared with the dense outputs:
distortion = ‖y_masked − y‖² / ‖y‖², summed over outputs (LD-Pruner's task-agnostic output
distortion, at group level). Also reported: the dead-channel rate (share of exact zeros) of
every tensor a linear layer reads, the signal that a ReLU network has channels to spare.
Adaptive allocation reads the same measurement to prune less where it hurts more.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..importance import ScoringContext, consumed_inputs, score
from ..parallel import Failed, InProcess
from ..rewrite import apply_plan
from ..runtime import batch_outputs, output_distortion
from .refit import compensated as refitted


def group_sensitivity(a, stats, batches, ratios, strategy, progress=None,
                      compensated: bool = True, seed: int = 0, executor=None) -> list[dict]:
    """One entry per prunable group: its kind, size, first source, and the distortion at each
    ratio (lowest-scoring components masked first; re-fitted by the strategy's compensation
    unless ``compensated`` is False). ``executor`` (``onnxprune.parallel``) measures the
    groups side by side; each worker receives the model and the statistics once."""
    scores = score(strategy.criterion, ScoringContext(a.analysis, a.roots, a.groups,
                                                      strategy.reduction, seed, stats,
                                                      executor=executor))
    dense = batch_outputs(a.model, batches)
    groups = [g for g in a.groups if g.prunable and g.size > 1]
    shared = (a, scores, stats, batches, ratios, strategy, compensated, dense)
    rows = (executor or InProcess()).map(shared, _measured_group, [g.id for g in groups],
                                         progress=progress,
                                         description="measuring each group's distortion")
    for group, row in zip(groups, rows):
        if isinstance(row, Failed):
            raise UserError(f"sensitivity: measuring group {group.id} failed twice: "
                            f"{row.error}")
    return rows


def _measured_group(shared, group_id: int) -> dict:
    a = shared[0]
    group = next(g for g in a.groups if g.id == group_id)
    return _group_row(a, group, *shared[1:])


def _group_row(a, group, scores, stats, batches, ratios, strategy, compensated, dense) -> dict:
    order = group.components[np.argsort(scores[group.components], kind="stable")]
    row = {"group": group.id, "kind": group.kind, "channels": group.size * group.width,
           "source": group.sources[0] if group.sources else "", "distortion": {}}
    for ratio in ratios:
        count = min(int(round(group.size * ratio)), group.size - 1)
        removed = np.isin(a.roots, order[:count])
        base = a.model
        if compensated and strategy.compensation != "none":   # what prune leaves behind
            base = refitted(a, removed, stats, strategy)[0]
        masked = apply_plan(base, a.analysis, removed, "mask")
        row["distortion"][ratio] = output_distortion(
            batch_outputs(masked, batches), dense, getattr(stats, "batch_weights", None))
    return row


def dead_channels(a, stats) -> list[dict]:
    """Share of exact zeros per channel where linear layers read them, per tensor."""
    rows = []
    for name in consumed_inputs(a.analysis):
        moments = stats.get(name)
        if moments is None or not moments.count:
            continue
        rate = moments.zero_rate()
        rows.append({"tensor": name, "channels": int(rate.size),
                     "mean_zero_rate": float(rate.mean()),
                     "dead": int((rate >= 0.99).sum())})
    return rows


ADAPTIVE_PROBE = 0.5      # share of each group masked to measure its sensitivity
ADAPTIVE_POWER = 0.5      # how strongly ratios follow sensitivity (0: uniform)


def adaptive_weights(a, stats, batches, strategy, progress=None, seed: int = 0,
                     executor=None) -> dict[int, float]:
    """Per-group ratio multipliers, Adapt-Pruner style: prune less where masking hurts the
    outputs more. w_g = (geometric mean of the distortions / d_g)^ADAPTIVE_POWER, measured at
    ADAPTIVE_PROBE; a group with no measurable effect gets the largest multiplier seen.

    Sensitivity is measured *without* compensation: measured with it, a group that OBS repairs
    well alone looks free and is over-pruned, and the errors compound when every group is
    pruned at once (digits CNN with obs at 25% of the MACs: 0.450 against 0.881 accuracy;
    benchmarks/RESULTS.md)."""
    rows = group_sensitivity(a, stats, batches, [ADAPTIVE_PROBE], strategy, progress,
                             compensated=False, seed=seed, executor=executor)
    d = {r["group"]: max(r["distortion"][ADAPTIVE_PROBE], 1e-9) for r in rows}
    if not d:
        return {}
    centre = float(np.exp(np.mean(np.log(list(d.values())))))
    return {g: (centre / v) ** ADAPTIVE_POWER for g, v in d.items()}
