"""From atoms to user-facing groups.

A *component* (a union-find class of atoms) is one prunable unit: every channel in it goes or
stays together. Components created by the same set of ops form a *group*: e.g. channel i of
every conv that writes into a residual stream is one component, and all such components are the
group of that stream. Ratios, rounding and reports work per group.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ..rules import rule_for
from .analysis import Analysis


@dataclass
class Group:
    id: int
    components: np.ndarray          # root atom of each component, in channel order
    width: int                      # channels each component spans in one tensor
    sources: list[str]              # ops whose weights create these channels
    members: list[str]              # ops with parameters sliced with these channels
    prunable: bool
    reason: str | None = None
    kind: str = "channels"          # "heads", "hidden", "mlp" (neurons between Linear layers),
                                    # "channels"

    @property
    def size(self) -> int:
        return len(self.components)


def find_groups(analysis: Analysis) -> tuple[list[Group], np.ndarray]:
    """Return the groups and the root (component id) of every atom."""
    space = analysis.space
    roots = space.roots()
    frozen = space.frozen_roots(roots)
    sources = np.asarray(space.source, dtype=np.int64)
    labels = {n.index: n.label for n in analysis.graph.nodes}

    atoms_of: dict[int, list[int]] = defaultdict(list)
    for atom, root in enumerate(roots.tolist()):
        atoms_of[root].append(atom)
    members_of: dict[int, set[int]] = defaultdict(set)
    read_by_linear: set[int] = set()
    linear = {n.index for n in analysis.graph.nodes
              if getattr(rule_for(n), "fully_connected", False)}
    for use in analysis.params:
        for root in np.unique(roots[use.labels]).tolist():
            members_of[root].add(use.node)
            if use.consume and use.node in linear:
                read_by_linear.add(root)

    by_key: dict[tuple, list[int]] = defaultdict(list)
    for root, atoms in atoms_of.items():
        key = (tuple(sorted(set(sources[atoms].tolist()))), root in frozen)
        by_key[key].append(root)

    groups = []
    tagged = {int(roots[a]) for a in analysis.head_atoms}
    normed = {int(roots[a]) for a in analysis.hidden_atoms}
    for (src, is_frozen), comp_roots in sorted(by_key.items(), key=lambda kv: min(kv[1])):
        comp_roots.sort()
        width = max(1, len(atoms_of[comp_roots[0]]) // max(1, len(src)))
        member_nodes = sorted(set().union(*(members_of[r] for r in comp_roots)))
        reason = frozen.get(comp_roots[0]) if is_frozen else None
        if tagged.intersection(comp_roots):
            kind = "heads"
        elif normed.intersection(comp_roots):
            kind = "hidden"  # read across by a normalization: pruning changes its statistics
        elif (src and all(s in linear for s in src)
              and read_by_linear.intersection(comp_roots)):
            kind = "mlp"  # neurons made by one Linear layer and read by the next
        else:
            kind = "channels"
        groups.append(Group(
            id=len(groups), components=np.array(comp_roots, dtype=np.int64), width=width,
            sources=[labels.get(s, "graph input") for s in src],
            members=[labels[n] for n in member_nodes], prunable=not is_frozen, reason=reason,
            kind=kind))
    return groups, roots
