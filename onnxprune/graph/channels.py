"""Channel labels: the coordinate system in which coupled channels are found.

Every op that creates channels from weights (a Conv's output channels, a Gemm's output
features) draws fresh *atoms*, one per channel. A tensor carries a :class:`ChannelMap`: which of
its axes hold tracked channels and, for every position along them, the atom found there. Rules
move labels through ops (a Concat concatenates them, a Flatten repeats each one over its spatial
block, a Transpose moves the axis) and *unify* atoms that must be pruned together (both sides of a
residual Add). Atoms that reach something the tool does not understand are *frozen*.
Connected atoms form a component: the unit that is kept or removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ChannelMap:
    """Tracked channels of one tensor: ``labels`` has the tensor's dims along ``axes``.

    An axis in ``tiled`` merges a dynamic outer dim with the channels (torch's
    ``view(seq, batch * heads, head_dim)``): its size is batch × ``labels.shape[k]``, and the
    labels repeat for every batch index. Only rules that declare ``follows_tiled`` see such
    maps (see ``groups.analysis``).
    """

    rank: int
    axes: tuple[int, ...]
    labels: np.ndarray
    tiled: tuple[int, ...] = ()

    def __post_init__(self):
        if len(self.axes) != self.labels.ndim:
            raise ValueError("one label dimension per tracked axis")
        if list(self.axes) != sorted(set(self.axes)) or any(a < 0 or a >= self.rank for a in self.axes):
            raise ValueError(f"tracked axes must be sorted and within rank: {self.axes}")
        if not set(self.tiled) <= set(self.axes):
            raise ValueError(f"tiled axes must be tracked: {self.tiled}")

    @property
    def single_axis(self) -> int | None:
        """The tracked axis when there is exactly one, else None."""
        return self.axes[0] if len(self.axes) == 1 else None

    def with_axes(self, rank: int, axes: tuple[int, ...]) -> "ChannelMap":
        """The same labels on other axes (``axes`` lists each tracked axis's new position)."""
        tiled = tuple(new for old, new in zip(self.axes, axes) if old in self.tiled)
        return ChannelMap(rank, axes, self.labels, tiled)


class ChannelSpace:
    """Atoms, their union-find structure, the op that created each, and frozen reasons."""

    def __init__(self):
        self._parent: list[int] = []
        self.source: list[int] = []          # node index that created each atom (-1: graph input)
        self.frozen_reason: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._parent)

    def new_atoms(self, shape: tuple[int, ...] | int, source: int) -> np.ndarray:
        count = int(np.prod(shape))
        start = len(self._parent)
        self._parent.extend(range(start, start + count))
        self.source.extend([source] * count)
        return np.arange(start, start + count, dtype=np.int64).reshape(shape)

    def find(self, atom: int) -> int:
        parent = self._parent
        root = atom
        while parent[root] != root:
            root = parent[root]
        while parent[atom] != root:
            parent[atom], atom = root, parent[atom]
        return root

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        """Tie ``a[i]`` to ``b[i]`` for every position: they must be pruned together."""
        for x, y in zip(np.asarray(a).ravel().tolist(), np.asarray(b).ravel().tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self._parent[max(rx, ry)] = min(rx, ry)

    def unify_along(self, labels: np.ndarray, axis: int) -> None:
        """Tie every slice along ``axis`` to the first one (keeps the grid rectangular)."""
        moved = np.moveaxis(labels, axis, 0)
        for k in range(1, moved.shape[0]):
            self.unify(moved[0], moved[k])

    def freeze(self, atoms: np.ndarray, reason: str) -> None:
        for atom in np.unique(np.asarray(atoms)).tolist():
            self.frozen_reason.setdefault(atom, reason)

    def roots(self) -> np.ndarray:
        """Component id (root atom) of every atom."""
        return np.array([self.find(a) for a in range(len(self._parent))], dtype=np.int64)

    def frozen_roots(self, roots: np.ndarray) -> dict[int, str]:
        out: dict[int, str] = {}
        for atom, reason in self.frozen_reason.items():
            out.setdefault(int(roots[atom]), reason)
        return out
