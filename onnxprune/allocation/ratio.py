"""Uniform per-group ratio with hardware-friendly rounding.

Each prunable group keeps ``round(size · (1 − ratio))`` components, rounded to a multiple of
``round_to`` channels (a component may span several channels, e.g. one column of a grouped
conv; a group too small for the multiple gets the largest halving of it that fits), and at
least one. The lowest-scoring components go. A final pass makes sure no tensor
loses all of its channels (a Split output fed by one group could otherwise be emptied).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import gcd

import numpy as np

from ..groups import Analysis, Group

# Kinds pruned only when asked for by name: removing hidden-size channels changes the
# statistics of every normalization that reads them, so the model computes something else.
OPT_IN_KINDS = {"hidden": 0.0}


@dataclass
class GroupPlan:
    group: int
    kept: list[int]
    removed: list[int]


@dataclass
class Plan:
    removed_roots: set[int] = field(default_factory=set)
    groups: dict[int, GroupPlan] = field(default_factory=dict)

    def removed_atoms(self, roots: np.ndarray) -> np.ndarray:
        """Boolean per atom: is its component removed?"""
        if not self.removed_roots:
            return np.zeros(len(roots), dtype=bool)
        return np.isin(roots, np.fromiter(self.removed_roots, dtype=np.int64))


def kept_count(size: int, width: int, ratio: float, round_to: int) -> int:
    """Components to keep so that kept channels are a multiple of ``round_to`` where possible."""
    target = size * (1.0 - ratio)
    step = max(1, round_to // gcd(round_to, width))
    while step >= size and round_to > 1:  # too few units for this multiple: relax it
        round_to //= 2
        step = max(1, round_to // gcd(round_to, width))
    keep = int(round(target / step)) * step
    return int(min(size, max(step, keep, 1)))


def allocate(analysis: Analysis, groups: list[Group], roots: np.ndarray, scores: np.ndarray,
             ratio: float, round_to: int = 1, by_kind: dict[str, float] | None = None) -> Plan:
    """``by_kind`` overrides ``ratio`` for groups of a kind ("heads", "mlp", "channels");
    "hidden" groups are pruned only at their own ratio in ``by_kind``."""
    plan = Plan()
    by_kind = {**OPT_IN_KINDS, **(by_kind or {})}
    for group in groups:
        comps = group.components
        group_ratio = by_kind.get(group.kind, ratio)
        if not group.prunable or group_ratio <= 0:
            keep = len(comps)
        else:
            keep = kept_count(len(comps), group.width, group_ratio, round_to)
        order = np.argsort(-scores[comps], kind="stable")
        kept = np.sort(order[:keep])
        removed = np.sort(order[keep:])
        plan.groups[group.id] = GroupPlan(group.id, kept.tolist(), removed.tolist())
        plan.removed_roots.update(comps[removed].tolist())
    _keep_every_tensor_alive(analysis, roots, scores, plan, groups)
    return plan


def _keep_every_tensor_alive(analysis, roots, scores, plan, groups) -> None:
    """Restore the best component of any tensor whose channels would all be removed."""
    position = {int(r): (g.id, k) for g in groups for k, r in enumerate(g.components.tolist())}
    for cmap in analysis.maps.values():
        tensor_roots = np.unique(roots[cmap.labels])
        if all(int(r) in plan.removed_roots for r in tensor_roots):
            best = int(tensor_roots[np.argmax(scores[tensor_roots])])
            plan.removed_roots.discard(best)
            gid, k = position[best]
            entry = plan.groups[gid]
            entry.removed.remove(k)
            entry.kept = sorted(entry.kept + [k])
