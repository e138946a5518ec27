"""Several calibration sets, each with a weight, fused into one set of statistics.

A user may hold general data and a little task data and want both to count ("70% task, 30%
general"). Each set is captured on its own; the fused statistics are the weighted mixture of
the per-set *averages* (so a set's weight, not its size, decides its share), scaled back to
the total count so that every criterion and the OBS update read them as usual. Gradient
criteria and sensitivity weight each batch by its set's weight over the set's batch count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .capture import ChannelStats, Moments
from .data import GENERATED, load_calibration


@dataclass(frozen=True)
class CalibSource:
    """One calibration set: an .npz path, an image folder (read with ``preprocess``), a
    generated source (``GENERATED``), or a list of feed dicts; ``weight`` is its share of the
    fusion."""

    data: object
    weight: float = 1.0
    preprocess: str | None = None

    def describe(self) -> str:
        if isinstance(self.data, str):
            return self.data
        return "feeds given by the caller"


def source_batches(source: CalibSource, model, shapes=None, seed: int = 0,
                   samples: int | None = None, progress=None) -> list[dict]:
    """The feeds of one source: a generated one drawn (``samples`` of them; synthetic draws
    random inputs, its BN matching lives in a probe), a path read, given feeds as they are."""
    if not isinstance(source.data, str):
        return list(source.data)
    return load_calibration("random" if source.data == "synthetic" else source.data, model,
                            shapes, seed=seed,
                            samples=samples if source.data in GENERATED else None,
                            preprocess=source.preprocess, progress=progress)


def parse_source(text: str, preprocess: str | None = None) -> CalibSource:
    """``PATH`` or ``PATH@WEIGHT`` (the CLI's --calib)."""
    data, sep, weight = text.rpartition("@")
    if not sep:
        return CalibSource(text, 1.0, preprocess)
    try:
        value = float(weight)
    except ValueError:
        raise UserError(f"--calib {text!r}: the weight after @ must be a number") from None
    if not (value > 0 and np.isfinite(value)):
        raise UserError(f"--calib {text!r}: the weight must be positive")
    return CalibSource(data, value, preprocess)


def as_sources(calib) -> list[CalibSource]:
    """Normalize what the API accepts: a source string, a list of feed dicts, a CalibSource,
    or a list of CalibSources."""
    if isinstance(calib, CalibSource):
        return [calib]
    if isinstance(calib, (list, tuple)) and calib and all(
            isinstance(c, CalibSource) for c in calib):
        return list(calib)
    return [CalibSource(calib)]


def mix(parts: list[ChannelStats], weights: list[float]) -> ChannelStats:
    """The weighted mixture of several sets' statistics (weights are normalized to sum 1)."""
    share = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    out = ChannelStats(samples=sum(p.samples for p in parts),
                       matched_norms=max(p.matched_norms for p in parts))
    for name in parts[0].tensors:
        out.tensors[name] = _mix_moments([p.tensors[name] for p in parts], share)
    out.batches, out.batch_weights = [], []
    for p, w in zip(parts, share):
        batches = p.batches or []
        out.batches += batches
        out.batch_weights += [w / len(batches)] * len(batches)
    return out


def _mix_moments(moments: list[Moments], share: np.ndarray) -> Moments:
    live = [(m, w) for m, w in zip(moments, share) if m.count]
    if not live:
        return Moments()
    total = sum(m.count for m, _ in live)
    weight = sum(w for _, w in live)

    def blend(field: str):
        values = [getattr(m, field) for m, _ in live]
        if any(v is None for v in values):
            return None
        return total * sum(w / weight * v / m.count for (m, w), v in zip(live, values))

    out = Moments(count=total, sum=blend("sum"), sum_sq=blend("sum_sq"),
                  sum_abs=blend("sum_abs"), zeros=blend("zeros"))
    out.gram = blend("gram")
    for key in live[0][0].patches:
        if all(key in m.patches for m, _ in live):
            count = sum(m.patches[key][1] for m, _ in live)
            out.patches[key] = (count * sum(w / weight * m.patches[key][0] / m.patches[key][1]
                                            for m, w in live), count)
    return out
