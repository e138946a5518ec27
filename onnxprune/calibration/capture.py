"""Per-channel statistics of intermediate tensors on calibration data, through ONNX Runtime.

The tensors to watch are exposed as extra graph outputs of a copy of the model; each batch's
values are reduced at once over every axis that carries no tracked channels, so memory stays
at one batch. What is kept per channel position (laid out like the tensor's ChannelMap
labels): the element count, Σx, Σx², Σ|x| and the number of exact zeros, and, for the inputs
of linear layers, the Gram matrix XᵀX over the channels (OBS compensation needs it).

Large models (a 1B decoder: sixteen 8192-wide MLP inputs) are why two limits exist. A batch
whose watched tensors would pass ``RUN_BYTES`` runs in slices of samples (the size of one
sample's tensors is learnt from the first sample), and a Gram matrix over ``SPILL_BYTES``
accumulates in a float32 file, updated once per batch and read back one layer at a time
(``GramSum``), rather than sixteen 512 MiB matrices held side by side. The Gram matrices of
every second batch are also summed apart (``Moments.held_gram``): OBS compensation fits on the
others and checks on those that its re-fit generalizes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..graph import ChannelMap
from ..progress import task
from ..runtime import session
from ..runtime.feeds import batch_axes, sample_count, take_samples
from ..runtime.run import exposing

RUN_BYTES = 256 << 20     # watched tensors one ONNX Runtime run may return
SPILL_BYTES = 16 << 20    # a bigger Gram matrix (over 1448 features) accumulates in a file


class GramSum:
    """A running Σ x xᵀ: float64 in memory, or, past ``SPILL_BYTES``, float32 in a file (the
    rows are then multiplied in float32 too), read back as a fresh float64 copy on each use,
    so that nothing keeps a 1B decoder's sixteen 512 MiB matrices in memory."""

    def __init__(self, value: np.ndarray | None = None):
        self.memory, self.file, self.size = value, None, 0

    @staticmethod
    def product(rows: np.ndarray) -> np.ndarray:
        """rowsᵀ·rows: in float64, or in float32 for a sum that spills."""
        spills = rows.shape[1] ** 2 * 8 > SPILL_BYTES
        flat = rows.astype(np.float32 if spills else np.float64, copy=False)
        return flat.T @ flat

    def add(self, g: np.ndarray, spill) -> None:
        """Add a :meth:`product` (``spill()``: the folder a new file goes to)."""
        if g.dtype == np.float64:
            self.memory = g if self.memory is None else self.memory + g     # never in place
            return
        if self.file is None:
            handle, self.file = tempfile.mkstemp(suffix=".gram", dir=spill())
            with open(handle, "wb") as f:
                g.tofile(f)
            self.size = g.shape[0]
            return
        total = np.memmap(self.file, np.float32, "r+", shape=g.shape)
        total += g
        total.flush()
        del total

    def value(self) -> np.ndarray | None:
        if self.file is None:
            return self.memory
        return np.fromfile(self.file, np.float32).reshape(self.size, self.size).astype(
            np.float64)

    def __getstate__(self):
        """A spilled sum travels inline (a worker may not see this machine's files)."""
        return {"memory": self.value(), "file": None, "size": self.size}


@dataclass
class Moments:
    count: int = 0
    sum: np.ndarray | None = None
    sum_sq: np.ndarray | None = None
    sum_abs: np.ndarray | None = None
    zeros: np.ndarray | None = None
    patches: dict = field(default_factory=dict)   # conv node → (Σ p pᵀ per group, count)
    held_count: int = 0             # rows of the held-out batches (every second one)
    _total: GramSum | None = field(default=None, repr=False)
    _held: GramSum | None = field(default=None, repr=False)
    _rows: list = field(default_factory=list, repr=False)     # this batch's, for the Gram

    @property
    def gram(self) -> np.ndarray | None:
        """Σ over samples of x xᵀ (channels flattened), float64 (see :class:`GramSum`)."""
        return self._total.value() if self._total is not None else None

    @gram.setter
    def gram(self, value: np.ndarray | None) -> None:
        self._total = GramSum(value) if value is not None else None
        self._held, self.held_count = None, 0

    @property
    def held_gram(self) -> np.ndarray | None:
        """The part of :attr:`gram` from every second calibration batch, which OBS
        compensation holds out to check that its re-fit generalizes (None with one batch)."""
        return self._held.value() if self._held is not None else None

    @property
    def spilled(self) -> bool:
        return self._total is not None and self._total.file is not None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_rows"] = []
        return state

    def add(self, values: np.ndarray, cmap: ChannelMap, gram: bool) -> None:
        """Fold one run's values in; with ``gram``, keep its rows until :meth:`end_batch`."""
        kept = np.float32 if values.dtype == np.float32 else np.float64    # as it came
        rows = channels_last(values, cmap.axes, kept)
        shape = [values.shape[a] for a in cmap.axes]     # the axes are sorted: x.sum(others)
        parts = [p.reshape(shape) for p in row_moments(rows)]
        if self.sum is None:
            self.sum, self.sum_sq, self.sum_abs, self.zeros = parts
        else:
            self.sum += parts[0]
            self.sum_sq += parts[1]
            self.sum_abs += parts[2]
            self.zeros += parts[3]
        self.count += rows.shape[0]
        if gram:
            self._rows.append(rows)

    def end_batch(self, spill, held: bool = False) -> None:
        """Add the batch's x xᵀ to the Gram matrix (and, for a ``held`` batch, to the held-out
        part too); ``spill()``: the folder a spilled sum's file goes to."""
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        flat = rows[0] if len(rows) == 1 else np.concatenate(rows)
        del rows
        count, g = flat.shape[0], GramSum.product(flat)
        del flat
        self._total = self._total or GramSum()
        self._total.add(g, spill)
        if held:
            self._held = self._held or GramSum()
            self._held.add(g, spill)
            self.held_count += count

    def add_patches(self, values: np.ndarray, key, window, groups: int = 1) -> None:
        """The Gram matrices [groups, f, f] of a k×k conv's input patches, one per group of
        input channels (features channel-major, then kernel positions, as the weight is
        laid out)."""
        p = unfold(values.astype(np.float64), *window)
        size = p.shape[1] // groups
        g = np.stack([p[:, k * size:(k + 1) * size].T @ p[:, k * size:(k + 1) * size]
                      for k in range(groups)])
        old, count = self.patches.get(key, (0.0, 0))
        self.patches[key] = (old + g, count + p.shape[0])

    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    def mean_abs(self) -> np.ndarray:
        return self.sum_abs / max(self.count, 1)

    def rms(self) -> np.ndarray:
        return np.sqrt(self.sum_sq / max(self.count, 1))

    def zero_rate(self) -> np.ndarray:
        return self.zeros / max(self.count, 1)


@dataclass
class ChannelStats:
    """Moments per watched tensor name; ``samples`` counts calibration samples seen."""

    tensors: dict[str, Moments] = field(default_factory=dict)
    samples: int = 0
    matched_norms: int = 0          # BatchNorms a synthetic probe matched (see synthetic)
    batches: list | None = None     # the feeds themselves, where a step re-runs the model
    batch_weights: list | None = None   # per batch, when several weighted sets were fused
    spill: tempfile.TemporaryDirectory | None = field(default=None, repr=False)  # big Grams

    def get(self, name: str) -> Moments | None:
        return self.tensors.get(name)

    def spill_folder(self) -> Path:
        """The folder spilled Gram matrices live in, deleted with these statistics."""
        if self.spill is None:
            self.spill = tempfile.TemporaryDirectory(prefix="onnxprune-gram-")
        return Path(self.spill.name)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["spill"] = None       # the Moments carry their Gram matrices inline
        return state


CHUNK_VALUES = 1 << 17     # float64 values one step of row_moments widens (1 MiB: in cache)


def row_moments(rows: np.ndarray) -> np.ndarray:
    """[Σx, Σx², Σ|x|, zeros] per column of ``rows``, in float64, widened a few rows at a
    time: widening a whole 1B decoder's MLP activations to float64 and squaring them took
    six times as long, in passes over memory and page faults."""
    count, width = rows.shape
    out = np.zeros((4, width))
    step = max(1, CHUNK_VALUES // max(width, 1))
    for start in range(0, count, step):
        x = rows[start:start + step].astype(np.float64)
        out[0] += x.sum(axis=0)
        out[1] += np.einsum("ij,ij->j", x, x)
        out[2] += np.abs(x).sum(axis=0)
        out[3] += np.count_nonzero(x == 0, axis=0)
    return out


def channels_last(x: np.ndarray, axes, dtype=np.float64) -> np.ndarray:
    """[positions, channels]: ``x`` in ``dtype`` with its channel axes moved last and
    flattened (positions run sample by sample when axis 0 is not a channel axis)."""
    moved = np.moveaxis(x.astype(dtype, copy=False), axes,
                        range(x.ndim - len(axes), x.ndim))
    return moved.reshape(-1, int(np.prod([x.shape[a] for a in axes])))


def unfold(x: np.ndarray, kernel, strides, pads, dilations) -> np.ndarray:
    """2-D conv input [N, C, H, W] → patches [N·outH·outW, C·kh·kw]."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = np.lib.stride_tricks.sliding_window_view(
        x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]          # [N, C, oH, oW, kh, kw]
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(
        -1, x.shape[1] * kh * kw)


def capture_stats(model: onnx.ModelProto, maps: dict[str, ChannelMap], batches,
                  gram_for: set[str] = frozenset(), patches_for: dict | None = None,
                  probe: onnx.ModelProto | None = None, progress=None,
                  dequantize: dict | None = None) -> ChannelStats:
    """Run ``batches`` through ``model`` and reduce every tensor in ``maps`` to per-channel
    moments (with the Gram matrix for names in ``gram_for``, and the patch Gram matrices of
    the convs in ``patches_for``: {tensor: [(conv key, window, groups)]}). ``probe``: a variant of
    the model to run instead (it must keep the watched tensors' names). ``progress`` (see
    :mod:`onnxprune.progress`) advances once per batch. ``dequantize``: {tensor: (scale,
    zero point)} of integer tensors, whose moments are those of (x − zero)·scale (a conv's
    padding is then 0 in value, as the integer op pads with the zero point)."""
    dequantize = dequantize or {}
    patches_for = patches_for or {}
    sess = session(exposing(probe if probe is not None else model, maps))
    names = list(maps)
    stats = ChannelStats({n: Moments() for n in names})
    batches = list(batches)
    axes = batch_axes(model)
    sliceable = _sliceable(sess, axes)
    per_sample = None       # bytes of one sample's watched tensors, learnt from the first

    def run(feeds) -> int:
        values = sess.run(names, feeds)
        size = sum(v.nbytes for v in values)
        for name, value in zip(names, values):
            if name in dequantize:
                scale, zero = dequantize[name]
                value = (value.astype(np.float64) - zero) * scale
            stats.tensors[name].add(value, maps[name], name in gram_for)
            for key, window, groups in patches_for.get(name, []):
                stats.tensors[name].add_patches(value, key, window, groups)
        return size

    one_by_one = False      # the model runs one sample at a time only (see below)
    with task(progress, "capturing calibration statistics", len(batches)) as step:
        for index, feeds in enumerate(batches):
            count = sample_count(feeds, axes)
            start = 0
            if per_sample is None and count > 1 and sliceable:
                per_sample, start = run(take_samples(feeds, axes, 0, 1)), 1
            step_size = (1 if one_by_one else count if per_sample is None or not sliceable
                         else max(1, min(count, RUN_BYTES // max(per_sample, 1))))
            while start < count:
                stop = min(start + step_size, count)
                part = feeds if (start, stop) == (0, count) else take_samples(
                    feeds, axes, start, stop)
                try:
                    size = run(part)
                except Exception:  # noqa: BLE001 - see below, else the caller reports it
                    # ORT's GroupQueryAttention takes a batch of one only when a past cache
                    # is given with several new tokens: such a model runs sample by sample
                    if stop - start == 1 or not sliceable:
                        raise
                    one_by_one, step_size = True, 1
                    continue
                per_sample = per_sample or max(size // count, 1)
                start = stop
            for moments in stats.tensors.values():
                moments.end_batch(stats.spill_folder, held=index % 2 == 1)
            stats.samples += count
            step()
    return stats


def _sliceable(sess, axes: dict) -> bool:
    """Can a batch run in slices? Not where an input fixes its sample axis's size."""
    for info in sess.get_inputs():
        axis = axes.get(info.name, 0)
        if axis is not None and len(info.shape) > axis and isinstance(info.shape[axis], int):
            return False
    return True
