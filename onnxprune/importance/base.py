"""What a criterion is, the registry of criteria, and how member scores become group scores.

A criterion scores every component (a unit that is kept or removed as a whole) in the group's
own coordinates. Most criteria look at each *member* of a group separately (one sliced
constant: a producer's filters, a consumer's input columns, a BN scale) and give a score per
atom there; :func:`combine` then sums those over each component's atoms and reduces across
the members (sum, mean or max), as Torch-Pruning's group importance does. Scores are indexed by
root atom id, like everything else in the plan.

To add a criterion, write one function ``(ctx) -> scores`` in a module of this package and
decorate it with ``@criterion("name", needs=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..groups import Analysis, Group, ParamUse
from ..rules import rule_for

REDUCTIONS = ("sum", "mean", "max")
NORMALIZATIONS = ("none", "mean", "max", "lamp", "energy")


@dataclass
class Criterion:
    name: str
    score: Callable[["ScoringContext"], np.ndarray]
    needs: str = "weights"          # "weights", "calibration", or "synthetic" (inputs made up)
    doc: str = ""
    reduces: bool = True            # combines member scores (the group reduction matters)


CRITERIA: dict[str, Criterion] = {}


def criterion(name: str, needs: str = "weights", reduces: bool = True):
    """Register ``fn(ctx) -> per-component scores`` under ``name``; ``reduces=False`` for a
    criterion that reads no member scores (the group reduction does not change it)."""

    def wrap(fn):
        if name in CRITERIA:
            raise ValueError(f"two criteria named {name}")
        CRITERIA[name] = Criterion(name, fn, needs, (fn.__doc__ or "").strip().split("\n")[0],
                                   reduces)
        return fn

    return wrap


@dataclass
class ScoringContext:
    """What a criterion may read: the analysis, the component of every atom, the groups, the
    member reduction, a seed, (for data-driven criteria) calibration statistics, the input
    shapes to run the model at, where to report the progress of long scoring, and the
    executor that runs one measurement per component (None: this process)."""

    analysis: Analysis
    roots: np.ndarray
    groups: list[Group]
    reduction: str = "sum"
    seed: int = 0
    calibration: object | None = None
    notes: list[str] = field(default_factory=list)
    input_shapes: dict | None = None      # for criteria that run the model on made-up inputs
    progress: object | None = None        # see onnxprune.progress
    executor: object | None = None        # runs per-component measurements (onnxprune.parallel)

    def value(self, use: ParamUse) -> np.ndarray | None:
        """The float constant a member slices (an integer weight as the floats it stands for,
        see ``Rule.param_value``), or None."""
        graph = self.analysis.graph
        node = graph.nodes[use.node]
        value = rule_for(node).param_value(node, use.input_index, graph)
        if value is None or not np.issubdtype(value.dtype, np.floating):
            return None
        return value

    def scored_uses(self) -> list[ParamUse]:
        return [u for u in self.analysis.params if u.score]


def per_atom(use: ParamUse, values: np.ndarray, elementwise=None) -> np.ndarray:
    """Sum ``values`` (shaped like the member's constant) over everything but the axes that
    follow labels, and lay the result out like ``use.labels`` (one number per label position).
    ``elementwise`` (|w|², say) is applied first, a slab of axis 0 at a time, so that a weight
    of gigabytes is never copied whole in float64."""
    mapped = sorted(use.axes)
    other = tuple(a for a in range(values.ndim) if a not in use.axes)
    reduced = _slab_sums(values, other, elementwise or (lambda v: v))
    order = [use.axes[a] for a in mapped]
    shape = [1] * use.labels.ndim
    for size, label_axis in zip(reduced.shape, order):
        shape[label_axis] = size
    arranged = np.transpose(reduced, np.argsort(order)).reshape(shape)
    return np.broadcast_to(arranged, use.labels.shape)


# Bytes of a weight transformed at a time, small enough that its float64 copy stays in cache:
# a 1.1B decoder's L2 scores took 8.8 s in 64 MiB slabs on two AVX2 cores, half that in these.
_SLAB = 1 << 20


def _slab_sums(values: np.ndarray, other: tuple[int, ...], elementwise) -> np.ndarray:
    def summed(part):
        part = elementwise(part)
        return part.sum(axis=other, dtype=np.float64) if other else part.astype(np.float64)

    if values.ndim == 0 or values.nbytes <= _SLAB:
        return summed(values)
    rows = values.shape[0]
    step = max(1, rows * _SLAB // values.nbytes)
    parts = [summed(values[i:i + step]) for i in range(0, rows, step)]
    return np.sum(parts, axis=0) if 0 in other else np.concatenate(parts, axis=0)


class MemberScores:
    """Accumulates one score per component and member, reduced across members as asked."""

    def __init__(self, n_atoms: int, roots: np.ndarray, reduction: str):
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown group reduction {reduction!r} (one of {REDUCTIONS})")
        self.roots, self.reduction = roots, reduction
        self.total = np.zeros(n_atoms, dtype=np.float64)
        self.count = np.zeros(n_atoms, dtype=np.int64)
        self.best = np.full(n_atoms, -np.inf)

    def add(self, labels: np.ndarray, atom_scores: np.ndarray) -> None:
        """One member's score per label position: summed over each component's atoms there."""
        comp = self.roots[np.asarray(labels).ravel()]
        scores = np.asarray(atom_scores, dtype=np.float64).ravel()
        ids, inverse = np.unique(comp, return_inverse=True)
        sums = np.zeros(len(ids))
        np.add.at(sums, inverse, scores)
        self.total[ids] += sums
        self.count[ids] += 1
        self.best[ids] = np.maximum(self.best[ids], sums)

    def result(self) -> np.ndarray:
        if self.reduction == "sum":
            return self.total
        if self.reduction == "mean":
            return self.total / np.maximum(self.count, 1)
        return np.where(self.count > 0, self.best, 0.0)


def normalize(scores: np.ndarray, groups: list[Group], how: str,
              energy: dict[int, float] | None = None) -> np.ndarray:
    """Scale each group's scores so that groups can be ranked together (global allocation):
    by the group's mean or max, LAMP (a score over the sum of all scores not below it), or
    the output energy of the layers that read it (``energy``: {group id: E‖y‖²}, see
    ``importance.energy``; groups without one keep their scores)."""
    if how not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {how!r} (one of {NORMALIZATIONS})")
    out = scores.astype(np.float64).copy()
    if how == "none":
        return out
    if how == "energy":
        for g in groups:
            if (energy or {}).get(g.id):
                out[g.components] /= energy[g.id]
        return out
    for g in groups:
        s = out[g.components]
        if how == "mean":
            s = s / max(float(s.mean()), 1e-30)
        elif how == "max":
            s = s / max(float(s.max()), 1e-30)
        else:
            order = np.argsort(s, kind="stable")
            tail = np.cumsum(s[order][::-1])[::-1]   # sum of the scores >= each one
            lamp = np.empty_like(s)
            lamp[order] = s[order] / np.maximum(tail, 1e-30)
            s = lamp
        out[g.components] = s
    return out


def score(name: str, ctx: ScoringContext) -> np.ndarray:
    """Run a registered criterion: one score per component (indexed by root atom)."""
    if name not in CRITERIA:
        raise KeyError(name)
    return CRITERIA[name].score(ctx)
