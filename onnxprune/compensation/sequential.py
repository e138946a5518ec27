"""Sequential reconstruction: re-fit each reader of removed channels, layer after layer, to
reproduce the *dense* model's output from what the *already pruned and re-fitted* model feeds it.

``obs`` compensation re-fits every layer against statistics of the dense model, as if only
that layer's own inputs had changed; upstream errors then pile up with depth. Here the readers
are taken in waves (a wave holds the readers whose inputs no reader still to be re-fitted
feeds), and for each wave both models run on the calibration batches: the dense one gives the
targets Y = W·x_dense, the masked model built from the copy re-fitted so far gives the inputs
x̃ (its kept channels, with a constant 1 when the layer has a bias to absorb the offset). The
re-fit is ridge regression pulled towards the original weights,

    W' = (Y x̃ᵀ + λ·W₀) (x̃ x̃ᵀ + λ·I)⁻¹,   λ = damping · mean(diag x̃ x̃ᵀ),

so a large λ gives back plain removal; λ is chosen per layer by cross-validation over the
calibration samples, among several strengths and no re-fit at all. A k×k conv regresses on its
input patches, a grouped conv one block per group, a transposed conv on the patches of its
zero-upsampled input (the plain conv with the flipped kernel it equals). Layers whose patches
are too wide to regress on (or not 2-D) get the mean offset in their bias instead; layers
whose weights are stored quantized are left as they are. The notes say which.

As in :mod:`.refit`, the result is a copy of the *original* model (removed columns keep their
values), so the pruned and the masked model both derive from it and the oracle still holds.
"""

from __future__ import annotations

from collections import defaultdict

import networkx as nx
import numpy as np
import onnx

from ..calibration.capture import channels_last, unfold
from ..calibration.hessian import (DAMPING, MAX_OBS_FEATURES, MAX_PATCH_FEATURES,
                                   solve_damped)
from ..graph import ModelGraph
from ..groups import Analysis, Consumer, find_consumers
from ..progress import task
from ..runtime import session
from ..runtime.run import exposing
from .refit import MAX_DAMPING, MAX_UPDATE

ROWS_PER_CHUNK = 1 << 15    # patch rows unfolded at once (memory stays at a few MB per layer)
FOLDS = 4                   # calibration samples dealt into folds to choose λ by cross-validation
STRENGTHS = 5               # λ tried: damping × 10^0 … 10^4, and no re-fit at all


def reconstruct(model: onnx.ModelProto, analysis: Analysis, removed_atom: np.ndarray, batches,
                mask, damping: float = DAMPING, batch_weights=None, progress=None
                ) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose readers of removed channels are re-fitted in sequence.
    ``batches``: calibration feed dicts; ``mask(model)``: the masked form of a model (removed
    channels zeroed) that the pruned model equals; ``batch_weights``: a weight per batch, where
    several calibration sets were fused."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = ModelGraph(out, infer_shapes=False)
    notes: list[str] = []
    layers = []
    for c in find_consumers(analysis):
        removed = removed_atom[c.labels]
        if not removed.any() or removed.all():
            continue
        why = _why_not(c, graph)
        if why:
            notes.append(f"{graph.nodes[c.node].label}: {why}")
        else:
            layers.append(_Layer(c, removed, analysis.map(c.input_name).axes))
    if not layers:
        return out, notes
    batches = list(batches)
    weights = list(batch_weights) if batch_weights else [1.0] * len(batches)
    waves = _waves(graph, layers)
    dense = session(exposing(model, {layer.c.input_name for layer in layers}))
    with task(progress, "sequential reconstruction, wave by wave", len(waves)) as step:
        for wave in waves:
            names = sorted({layer.c.input_name for layer in wave})
            pruned = session(exposing(mask(out), names))
            for feeds, weight in zip(batches, weights):
                want = dict(zip(names, dense.run(names, feeds)))
                got = dict(zip(names, pruned.run(names, feeds)))
                for layer in wave:
                    layer.add(want[layer.c.input_name], got[layer.c.input_name], weight)
            for layer in wave:
                note = layer.write(graph, damping)
                if note:
                    notes.append(f"{graph.nodes[layer.c.node].label}: {note}")
            step()
    return out, notes


def _why_not(c: Consumer, graph: ModelGraph) -> str | None:
    if c.view.weight_input != 1 or c.view.reads or c.view.input_dequantize:
        return "integer weights, not re-fitted by regression (obs compensates them)"
    if not c.view.exact and c.view.transposed is None:
        return ("a transposed conv with auto_pad, output_shape or cropping pads (or not 2-D), "
                "not re-fitted")
    stored = [graph.nodes[c.node].input(1)]
    if c.bias is not None:
        stored.append(graph.nodes[c.bias[0]].input(c.bias[1]))
    if any(graph.quantized_source(name) is not None for name in stored):
        return ("weights stored quantized, not re-fitted (a correction would not survive "
                "rounding to the stored integers)")
    return None


def _waves(graph: ModelGraph, layers: list["_Layer"]) -> list[list["_Layer"]]:
    """Layers grouped so that no layer's input depends on a layer of its own or a later wave:
    a layer's wave is the number of re-fitted layers on the longest path into its input."""
    refit = {layer.c.node for layer in layers}
    depth: dict = {}
    for n in nx.topological_sort(graph.dag):
        before = max((depth[p] for p in graph.dag.predecessors(n)), default=0)
        depth[n] = before + (1 if n in refit else 0)
    by_wave = defaultdict(list)
    for layer in layers:
        by_wave[depth.get(layer.c.input_name, 0)].append(layer)
    return [by_wave[k] for k in sorted(by_wave)]


class _Layer:
    """One reader being re-fitted: its blocks (one per group), and what the calibration
    batches have added up for each: x̃x̃ᵀ over the pruned inputs' kept features, Y x̃ᵀ against
    the dense outputs, and the per-channel input sums of the bias-only fallback."""

    def __init__(self, c: Consumer, removed: np.ndarray, channel_axes):
        self.c, self.removed, self.axes = c, removed, tuple(channel_axes)
        k = c.view.shape[2]
        features = c.view.shape[1] * k
        # A transposed conv regresses on its zero-upsampled input with the kernel flipped.
        self.window = c.window if c.view.exact else _upsampled_window(c.view.transposed)
        self.weight = c.weight if c.view.exact else c.weight[:, :, ::-1]
        self.regress = (self.window is not None and features <= MAX_PATCH_FEATURES) \
            if k > 1 or not c.view.exact else c.labels.size <= MAX_OBS_FEATURES
        self.constant = c.bias is not None
        self.blocks = []
        for rows, channels in c.blocks():
            kept = np.flatnonzero(np.repeat(~removed[channels], k))
            self.blocks.append(_Block(rows, channels, kept, self.weight[rows]))
        self.sums = np.zeros((2, c.view.shape[1] * c.groups))   # dense, pruned
        self.count = 0.0
        self.samples = 0

    def add(self, dense: np.ndarray, pruned: np.ndarray, weight: float) -> None:
        flat_d, flat_p = (channels_last(v, self.axes) for v in (dense, pruned))
        self.sums[0] += weight * flat_d.sum(0)
        self.sums[1] += weight * flat_p.sum(0)
        self.count += weight * flat_d.shape[0]
        samples = dense.shape[0]
        fold = (self.samples + np.arange(samples)) % FOLDS
        self.samples += samples
        if not self.regress:
            return
        for x_d, x_p, folds in self._rows(dense, pruned, flat_d, flat_p, fold):
            for block in self.blocks:
                block.add(x_d, x_p, folds, self.constant, weight)

    def _rows(self, dense, pruned, flat_d, flat_p, fold):
        """Chunks of (dense, pruned) input features, one row per output position, with each
        row's fold (its sample's). Rows run sample by sample (axis 0 first)."""
        if self.window is None:
            rows = flat_d.shape[0]
            folds = (np.repeat(fold, rows // len(fold)) if rows % len(fold) == 0
                     else np.zeros(rows, int))
            for start in range(0, flat_d.shape[0], ROWS_PER_CHUNK):
                end = start + ROWS_PER_CHUNK
                yield flat_d[start:end], flat_p[start:end], folds[start:end]
            return
        per_sample = max(1, self._unfold(dense[:1]).shape[0])
        step = max(1, ROWS_PER_CHUNK // per_sample)
        for start in range(0, dense.shape[0], step):
            end = start + step
            yield (self._unfold(dense[start:end]), self._unfold(pruned[start:end]),
                   np.repeat(fold[start:end], per_sample))

    def _unfold(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        if not self.c.view.exact:
            x = _zero_upsampled(x, self.c.view.transposed[1])
        return unfold(x, *self.window)

    def write(self, graph: ModelGraph, damping: float) -> str | None:
        """Store the re-fitted weight and the bias change; a note when cross-validation
        chose a stronger λ than ``damping`` or no re-fit, or the layer fell back to its
        bias."""
        c, note = self.c, None
        weight, delta_b = self.weight.copy(), np.zeros(c.view.shape[0])
        if self.regress:
            chosen = []
            for block in self.blocks:
                chosen.append(block.solve(damping, self.constant))
                weight[block.rows] = block.weight
                delta_b[block.rows] = block.delta_b
            note = _choice_note(chosen, damping)
        elif self.constant and c.view.exact:
            delta_b = self._mean_offset()
            note = "too wide (or not 2-D) to regress on its patches: bias re-fit only"
        else:       # (a transposed conv's mean offset depends on its strides: not guessed)
            return "too wide (or not 2-D) to regress on, and no bias to move: not re-fitted"
        if not c.view.exact:
            weight = weight[:, :, ::-1]            # the kernel flipped back
        if not np.array_equal(weight, c.weight):
            graph.set_const(graph.nodes[c.node], 1, c.write(weight).astype(
                graph.const(graph.nodes[c.node].input(1)).dtype))
        if self.constant and delta_b.any():
            node_index, input_index, sign = c.bias
            owner = graph.nodes[node_index]
            value = graph.const(owner.input(input_index))
            graph.set_const(owner, input_index,
                            (value + sign * delta_b.reshape(value.shape)).astype(value.dtype))
        return note

    def _mean_offset(self) -> np.ndarray:
        """E[W·x_dense] − E[W_kept·x_pruned] from channel means (kernel positions summed)."""
        n = max(self.count, 1e-12)
        dense, pruned = self.sums / n
        delta = np.zeros(self.c.view.shape[0])
        for rows, channels in self.c.blocks():
            kept = ~self.removed[channels]
            w = self.c.weight[rows].sum(axis=2)
            delta[rows] = w @ dense[channels] - w[:, kept] @ pruned[channels][kept]
        return delta


class _Block:
    """One group's regression: inputs are its kept features (+ a constant), sums kept apart
    per fold of calibration samples."""

    def __init__(self, rows: slice, channels: slice, kept: np.ndarray, weight: np.ndarray):
        self.rows, self.channels, self.kept = rows, channels, kept
        self.original = weight                          # [out_g, in_g, k]
        self.flat = weight.reshape(weight.shape[0], -1)
        self.gram = self.cross = None                   # [fold, …]
        self.weight, self.delta_b = weight, np.zeros(weight.shape[0])

    def _slice(self, x: np.ndarray) -> np.ndarray:
        size = self.flat.shape[1]
        start = self.channels.start * (size // (self.channels.stop - self.channels.start))
        return x[:, start:start + size]

    def add(self, x_dense: np.ndarray, x_pruned: np.ndarray, folds: np.ndarray,
            constant: bool, weight: float) -> None:
        target = self._slice(x_dense) @ self.flat.T                  # [rows, out_g]
        x = self._slice(x_pruned)[:, self.kept]
        if constant:
            x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
        if self.gram is None:
            self.gram = np.zeros((FOLDS, x.shape[1], x.shape[1]))
            self.cross = np.zeros((FOLDS, target.shape[1], x.shape[1]))
        for k in np.unique(folds):
            rows = folds == k
            self.gram[k] += weight * (x[rows].T @ x[rows])
            self.cross[k] += weight * (target[rows].T @ x[rows])

    def solve(self, damping: float, constant: bool) -> float | None:
        """Ridge towards the original weights, λ chosen by cross-validation over the folds
        among damping × 10^k (k < STRENGTHS) and no re-fit at all, then fitted on all
        samples; damped ten times more (up to MAX_DAMPING) while the change is more than
        MAX_UPDATE times the kept weights. Returns the λ used (None: no re-fit)."""
        if self.gram is None:
            return damping
        start = self.flat[:, self.kept]
        prior = np.concatenate([start, np.zeros((start.shape[0], 1))], axis=1) \
            if constant else start
        levels = [damping * 10.0 ** k for k in range(STRENGTHS)]
        errors = _cross_validated(self.gram, self.cross, prior, levels)
        if errors is not None:
            if errors[-1] <= min(errors[:-1]):
                return None
            level = levels[int(np.argmin(errors[:-1]))]
        else:
            level = damping
        gram, cross = self.gram.sum(0), self.cross.sum(0)
        while True:
            fitted = _fit(gram, cross, prior, level)
            change = fitted[:, :len(self.kept)] - start
            norm = float(np.linalg.norm(start))
            size = float(np.linalg.norm(change)) / norm if norm > 0 else 0.0
            if size <= MAX_UPDATE or level >= MAX_DAMPING:
                break
            level *= 10
        flat = self.flat.copy()
        flat[:, self.kept] = fitted[:, :len(self.kept)]
        self.weight = flat.reshape(self.original.shape)
        self.delta_b = fitted[:, -1] if constant else np.zeros(flat.shape[0])
        return level


def _scale(gram: np.ndarray, level: float) -> float:
    return level * (float(np.mean(np.diag(gram))) or 1.0)


def _fit(gram: np.ndarray, cross: np.ndarray, prior: np.ndarray, level: float) -> np.ndarray:
    """argmin_W ‖Y − W x̃‖² + λ‖W − W₀‖², λ relative to mean(diag x̃x̃ᵀ)."""
    s = _scale(gram, level)
    return solve_damped(gram + s * np.eye(len(gram)), (cross + s * prior).T).T


def _cross_validated(grams, crosses, prior, levels) -> list[float] | None:
    """Held-out error ‖Y − W x̃‖² (up to a constant) summed over the folds, of the fit at each
    λ in ``levels`` and, last, of the unchanged weights; None when fewer than two folds hold
    samples. One eigendecomposition per fold serves every λ."""
    present = [k for k in range(len(grams)) if grams[k].any()]
    if len(present) < 2:
        return None
    total_g, total_c = grams.sum(0), crosses.sum(0)
    errors = np.zeros(len(levels) + 1)
    for k in present:
        g_fit, c_fit = total_g - grams[k], total_c - crosses[k]
        values, vectors = np.linalg.eigh(g_fit)
        a, b = c_fit @ vectors, prior @ vectors
        g_held, c_held = vectors.T @ grams[k] @ vectors, crosses[k] @ vectors
        for i, level in enumerate(levels):
            s = _scale(g_fit, level)
            m = (a + s * b) / (values + s)
            errors[i] += float(np.sum((m @ g_held) * m) - 2.0 * np.sum(m * c_held))
        errors[-1] += float(np.sum((prior @ grams[k]) * prior) - 2.0 * np.sum(prior * crosses[k]))
    return list(errors)


def _choice_note(chosen: list, damping: float) -> str | None:
    """What cross-validation chose, when it is not the plain fit at ``damping``."""
    if all(level == damping for level in chosen):
        return None
    kept = [level for level in chosen if level is not None]
    if not kept:
        return "held-out samples fit better without a re-fit: left as it is (cross-validated)"
    strongest = max(kept)
    text = f"re-fit with λ up to {strongest:g}" if strongest > damping else "re-fit"
    skipped = len(chosen) - len(kept)
    return text + (f", {skipped} of {len(chosen)} groups left as they are" if skipped else
                   "") + " (cross-validated)"


def _upsampled_window(transposed) -> tuple | None:
    """The unfolding window of the plain conv a transposed conv equals on its zero-upsampled
    input: its kernel, pads and dilations, stride 1."""
    if transposed is None:
        return None
    kernel, _, pads, dilations = transposed
    return kernel, (1, 1), pads, dilations


def _zero_upsampled(x: np.ndarray, strides) -> np.ndarray:
    """[N, C, H, W] with ``stride − 1`` zeros between pixels."""
    n, c, h, w = x.shape
    sh, sw = strides
    out = np.zeros((n, c, (h - 1) * sh + 1, (w - 1) * sw + 1), x.dtype)
    out[:, :, ::sh, ::sw] = x
    return out
