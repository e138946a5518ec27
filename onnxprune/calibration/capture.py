"""Per-channel statistics of intermediate tensors on calibration data, through ONNX Runtime.

The tensors to watch are exposed as extra graph outputs of a copy of the model; each batch's
values are reduced at once over every axis that carries no tracked channels, so memory stays
at one batch. What is kept per channel position (laid out like the tensor's ChannelMap
labels): the element count, Σx, Σx², Σ|x| and the number of exact zeros, and, for the inputs
of linear layers, the Gram matrix XᵀX over the channels (OBS compensation needs it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..graph import ChannelMap
from ..progress import task
from ..runtime import session
from ..runtime.run import exposing


@dataclass
class Moments:
    count: int = 0
    sum: np.ndarray | None = None
    sum_sq: np.ndarray | None = None
    sum_abs: np.ndarray | None = None
    zeros: np.ndarray | None = None
    gram: np.ndarray | None = None   # Σ over samples of x xᵀ (channels flattened)
    patches: dict = field(default_factory=dict)   # conv node → (Σ p pᵀ per group, count)

    def add(self, values: np.ndarray, cmap: ChannelMap, gram: bool) -> None:
        other = tuple(a for a in range(values.ndim) if a not in cmap.axes)
        x = values.astype(np.float64)
        n = int(np.prod([values.shape[a] for a in other], dtype=np.int64))
        parts = (x.sum(other), np.square(x).sum(other), np.abs(x).sum(other),
                 (x == 0).sum(other).astype(np.float64))
        if self.sum is None:
            self.sum, self.sum_sq, self.sum_abs, self.zeros = parts
        else:
            self.sum += parts[0]
            self.sum_sq += parts[1]
            self.sum_abs += parts[2]
            self.zeros += parts[3]
        self.count += n
        if gram:
            flat = channels_last(x, cmap.axes)
            g = flat.T @ flat
            self.gram = g if self.gram is None else self.gram + g

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

    def get(self, name: str) -> Moments | None:
        return self.tensors.get(name)


def channels_last(x: np.ndarray, axes) -> np.ndarray:
    """[positions, channels]: ``x`` in float64 with its channel axes moved last and flattened
    (positions run sample by sample when axis 0 is not a channel axis)."""
    moved = np.moveaxis(x.astype(np.float64, copy=False), axes,
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
    with task(progress, "capturing calibration statistics", len(batches)) as step:
        for feeds in batches:
            values = sess.run(names, feeds)
            for name, value in zip(names, values):
                if name in dequantize:
                    scale, zero = dequantize[name]
                    value = (value.astype(np.float64) - zero) * scale
                stats.tensors[name].add(value, maps[name], name in gram_for)
                for key, window, groups in patches_for.get(name, []):
                    stats.tensors[name].add_patches(value, key, window, groups)
            stats.samples += len(next(iter(feeds.values())))
            step()
    return stats
