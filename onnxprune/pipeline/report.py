"""The report of a prune, section by section. ``PruneReport.to_dict()`` is what ``--report``
writes and ``onnxprune.prune`` returns: plain JSON-ready data."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

from ..allocation import Plan
from ..groups import Group
from .analyze import Analyzed
from .fidelity import FidelitySection


@dataclass
class CostSection:
    """Params or MACs of the dense model, of the pruned model, and what the plan predicted."""

    before: int | None
    after: int | None
    planned_after: int | None


@dataclass
class CheckSection:
    """The proof: full checker, an ONNX Runtime run, the same IO, and the largest relative
    error against the masked original on the check inputs (their shapes in ``inputs``).
    ``unchecked_ops``: op types ONNX does not define, which the checker skipped and only ONNX
    Runtime ran (``verify.unknown_ops``). ``how``: how the two models were run (a model whose
    weights stay in files is checked from them, one model at a time)."""

    checker: bool
    runs: bool
    same_io: bool
    max_rel_error: float | None
    tolerance: float
    ok: bool
    inputs: dict[str, list[int]]
    unchecked_ops: list[str] = field(default_factory=list)
    how: str = ""


CHECKED_IN_MEMORY = "in memory, one model after the other"
CHECKED_FROM_FILES = ("from weight files: the pruned model, then the masked original, each run "
                      "alone by ONNX Runtime on its memory-mapped files")


@dataclass
class TargetSection:
    """A target and how it was reached: the ratio found (None when pruned in steps) and the
    fraction the plan keeps; for latency, the timing too."""

    kind: str
    fraction: float
    ratio: float | None
    planned: float
    measured: float | None = None
    met: bool | None = None
    corrections: int | None = None
    dense_seconds: float | None = None
    pruned_seconds: float | None = None
    threads: int | None = None
    table_reused: int | None = None     # layer timings read from --latency-table
    table_timed: int | None = None      # ... and timed in this run
    table_stale: dict | None = None     # an empty run's time beside the table and now,
    #                                     far apart: the table's timings dropped (how many),
    #                                     or (0 dropped) read but not added to
    device: str | None = None           # predicted from this device's table, not timed here
    table_reaches: bool | None = None   # False: the table saw no plan meeting the target, so
    #                                     the timed search started without it
    spread_rounding: bool | None = None  # True: groups of one size lose their round_to steps
    #                                      at different ratios (see ``spread_offset``)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if self.kind != "latency":
            for key in ("measured", "met", "corrections", "dense_seconds", "pruned_seconds",
                        "threads", "table_reused", "table_timed", "table_stale", "device",
                        "table_reaches", "spread_rounding"):
                del out[key]
        return out


@dataclass
class StepSummary:
    step: int
    ratio: float
    params: int
    macs: int | None
    check_ok: bool | None


@dataclass
class PruneReport:
    """Everything a prune did: ratios, costs, every group with what it kept and removed, the
    barriers, what happened inside control-flow bodies, the strategy with its notes, the
    target, whether the function changed (hidden size), the check, the steps, and how far the
    pruned model's outputs are from the dense model's."""

    ratio: float
    round_to: int
    params: CostSection
    macs: CostSection
    groups: list[dict]
    barriers: list[dict]
    bodies: list[dict] = field(default_factory=list)
    strategy: dict = field(default_factory=dict)
    ratios_by_kind: dict = field(default_factory=dict)
    target: TargetSection | None = None
    changes_function: bool = False
    check: CheckSection | None = None
    steps: list[StepSummary] | None = None
    fidelity: FidelitySection | None = None
    warnings: list[str] = field(default_factory=list)
    nothing_pruned: str | None = None     # why, when no channel could be removed
    # For recovery's feature matching, not written out: see ``recover.kept_channels``.
    kept_channels: dict | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "kept_channels"}
        out["params"] = dataclasses.asdict(self.params)
        out["macs"] = dataclasses.asdict(self.macs)
        out["target"] = self.target.to_dict() if self.target else None
        for key in ("check", "steps", "fidelity"):
            if getattr(self, key) is None:
                del out[key]
        if self.check is not None:
            out["check"] = dataclasses.asdict(self.check)
        if self.steps is not None:
            out["steps"] = [dataclasses.asdict(s) for s in self.steps]
        if self.fidelity is not None:
            out["fidelity"] = dataclasses.asdict(self.fidelity)
        return out


def group_entry(g: Group, plan: Plan | None = None) -> dict:
    """One group as the report and ``inspect`` list it."""
    entry = {"id": g.id, "kind": g.kind, "channels": g.size * g.width, "units": g.size,
             "width": g.width,
             "prunable": g.prunable and g.size > 1, "sources": g.sources, "members": g.members}
    if not g.prunable:
        entry["reason"] = g.reason
    elif g.size <= 1:
        entry["reason"] = "a single channel (at least one is kept)"
    if plan is not None:
        entry["kept"] = plan.groups[g.id].kept
        entry["removed"] = plan.groups[g.id].removed
    return entry


def barriers(a: Analyzed) -> list[dict]:
    """The ops that stopped channels, and why."""
    return [{"node": a.graph.nodes[i].label, "op": a.graph.nodes[i].op, "reason": r}
            for i, r in sorted(a.analysis.barriers.items())]


def why_nothing_pruned(groups: list[dict], stopped: list[dict], round_to: int,
                       unruled: list[str]) -> str | None:
    """One line on why no channel was removed (None when some were): no group at all (the ops
    that stopped channels, and the ops no rule covers), no prunable group, or groups too
    small for the ratio."""
    if any(g.get("removed") for g in groups):
        return None
    if not groups:
        why = []
        if stopped:
            ops = Counter(b["op"] for b in stopped)
            why.append("the ops that stopped channels: " + ", ".join(
                f"{op} ×{n}" for op, n in ops.most_common(6)))
        if unruled:
            why.append("ops with no channel rule: " + ", ".join(
                f"{op} ×{n}" for op, n in Counter(unruled).most_common(6)))
        return "no channel group was found" + (f" ({'; '.join(why)})" if why else "")
    prunable = [g for g in groups if g["prunable"]]
    if not prunable:
        return (f"none of the {len(groups)} groups is prunable "
                f"(first: {groups[0].get('reason', 'no reason given')})")
    return (f"the ratio removes no channel of the {len(prunable)} prunable groups at "
            f"--round-to {round_to} (raise the ratio or lower --round-to)")
