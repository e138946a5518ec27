"""Latency-aware allocation (after HALP): how many components every group loses, chosen to
keep as much importance as possible while the predicted latency falls to a budget.

A greedy over steps: each group can lose its lowest-ranked components a step at a time (a
step keeps the kept channels a multiple of ``round_to``); the next move taken is the one (some
steps of one group) that loses the least importance per second it saves, as the latency
model (``cost``) predicts with every other group at its current width. After a move only
that group and its ``neighbours`` are re-priced. Groups whose steps save no time are left
alone, which is the point: on depthwise and grouped nets much of what costs MACs does not
cost time.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil
from typing import Protocol

import numpy as np

from ..groups import Group
from .rounding import component_step, least_kept

MAX_STEPS = 16      # a group is priced in at most this many steps (a finer grid costs timings)


class LatencyCost(Protocol):
    def fraction(self, removed_roots: set[int]) -> float:
        """Predicted latency over the dense model's with these components removed."""

    def settle(self, removed_roots: set[int]) -> float:
        """``fraction``, for the plan the next prices are taken against (a cost model may
        keep what it computed for it)."""

    def neighbours(self, group: int) -> set[int]:
        """Groups whose latency price moves when this one's width does."""


@dataclass
class _Step:
    step: int           # components per step
    cap: int            # most components it may lose
    relaxed: int        # ... where the budget cannot be met under ``cap``
    first: int = 0      # a shorter first step, down to a multiple of the rounding
    taken: int = 0

    def after(self, moves: int) -> int:
        """Components lost after ``moves`` more steps. The first step of a group whose size
        is not a multiple of the rounding (24 or 40 channels with 16) is its remainder, so
        that every width it is offered is a multiple: 32 and 16 of 40, never 24 or 8."""
        taken = self.taken
        if moves > 0 and taken < self.first:
            taken, moves = self.first, moves - 1
        return taken + moves * self.step

    def moves(self, cap: int) -> range:
        """The numbers of further steps that stay within ``cap``."""
        count = 0
        while self.after(count + 1) <= cap:
            count += 1
        return range(1, count + 1)


def latency_allocation(groups: list[Group], ranking: np.ndarray, ratio: float, round_to: int,
                       ratios: dict[int, float], max_ratio: float, cost: LatencyCost,
                       relax_to: float | None = None) -> dict[int, int]:
    """Components each group loses (lowest ``ranking`` first) so that the predicted latency
    is at most ``1 − ratio`` of the dense model's, or as close as the groups allow. Groups
    whose ``ratios`` entry is 0 (frozen, excluded, opt-in kinds not asked for) stay whole. No
    group loses more than ``max_ratio`` of its components while the budget can be met that
    way; when it cannot, every group may go on to ``relax_to`` (the greedy then continues
    from where it stood, so the groups that pay for the rest are still the cheapest)."""
    order = {g.id: g.components[np.argsort(ranking[g.components], kind="stable")]
             for g in groups}
    steps = {}
    for g in groups:
        if ratios.get(g.id, 0.0) <= 0 or g.size < 2:
            continue
        unit = component_step(g.size, g.width, round_to)
        step = unit * max(1, ceil(g.size / MAX_STEPS / unit))
        caps = [min(int(np.floor(r * g.size)), g.size - least_kept(g.size, g.width, round_to))
                for r in (max_ratio, max(max_ratio, relax_to or 0.0))]
        entry = _Step(step, caps[0], relaxed=caps[1], first=g.size % unit)
        if entry.after(1) <= caps[1]:
            steps[g.id] = entry
    removed: set[int] = set()
    current = cost.settle(removed)
    prices: dict[int, tuple[float, float] | None] = {}

    def price(gid: int):
        """The cheapest move of this group: k more steps for the k with the least importance
        lost per second saved (latency is not monotone in width: a width off the hardware's
        block can be slower, so one step may save nothing where two save much)."""
        s, best = steps[gid], None
        for k in s.moves(s.cap):
            nxt = order[gid][s.taken:s.after(k)]
            saved = current - cost.fraction(removed | set(nxt.tolist()))
            if saved > 0:
                move = (float(ranking[nxt].sum()), saved, k)
                if best is None or move[0] / move[1] < best[0] / best[1]:
                    best = move
        return best

    stale = set(steps)
    while current > 1.0 - ratio:
        for gid in stale:
            prices[gid] = price(gid)
        stale = set()
        best, best_rate = None, np.inf
        for gid, p in prices.items():
            if p is not None and p[0] / p[1] < best_rate:
                best, best_rate = gid, p[0] / p[1]
        if best is None:
            if any(s.cap < s.relaxed for s in steps.values()):
                for s in steps.values():    # out of reach under the cap: lift it
                    s.cap = s.relaxed
                stale = set(steps)
                continue
            break                       # nothing left that saves time
        s, k = steps[best], prices[best][2]
        for fewer in range(1, k):       # no further than the budget needs
            part = set(order[best][s.taken:s.after(fewer)].tolist())
            if cost.fraction(removed | part) <= 1.0 - ratio:
                k = fewer
                break
        removed |= set(order[best][s.taken:s.after(k)].tolist())
        s.taken = s.after(k)
        current = cost.settle(removed)
        stale = {best} | (cost.neighbours(best) & set(steps))
    return {gid: s.taken for gid, s in steps.items()}
