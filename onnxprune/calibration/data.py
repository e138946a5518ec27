"""Where calibration inputs come from: an ``.npz`` file (one array per model input, samples on
the first axis), a folder of images preprocessed by a spec (see ``images``), or ``random``
(seeded random inputs of the right shapes and dtypes; the API's ``synthetic`` source runs them
through a BN-matched probe, see ``synthetic``)."""

from __future__ import annotations

import os

import numpy as np
import onnx

from ..errors import UserError, one_line
from ..runtime import input_shapes, make_inputs, user_inputs
from ..runtime.feeds import batch_axes, compared_constants
from .images import load_images, parse_preprocess
from .procedural import dead_leaves

DEFAULT_RANDOM_SAMPLES = 32

# Sources made on the fly, any number of them; "inverted" optimizes natural images through
# the model (see ``inversion``).
GENERATED = ("random", "synthetic", "natural", "inverted")


def load_calibration(source: str, model: onnx.ModelProto, shapes=None, batch_size: int = 16,
                     samples: int | None = None, seed: int = 0, preprocess: str | None = None,
                     progress=None) -> list[dict[str, np.ndarray]]:
    """Batches of feeds for ``model``. Every input must be given with the model's dtype and
    its static dims; the first (batch) axis is split into batches of ``batch_size``, or of the
    model's own batch size when that is fixed (samples that do not fill a batch are left out).
    ``samples``: how many random inputs (``DEFAULT_RANDOM_SAMPLES`` when None), or at most how
    many images of a folder (``images.MAX_IMAGES`` when None) or samples of an .npz (the
    first ones). ``preprocess``: the spec for an image folder or for the ``natural`` and
    ``inverted`` images (see ``images.parse_preprocess``)."""
    names = user_inputs(model)
    axes = batch_axes(model)
    fixed = fixed_batch(model, names)
    batch_size = fixed or batch_size
    if preprocess is not None and not (os.path.isdir(source)
                                       or source in ("natural", "inverted")):
        raise UserError(f"a preprocessing spec goes with an image folder; {source} is not one")
    if source in GENERATED:
        samples = DEFAULT_RANDOM_SAMPLES if samples is None else samples
        made = _random_samples(model, names, shapes, fixed, samples, seed, axes)
        if source in ("natural", "inverted"):
            made = _with_natural_images(made, preprocess, seed)
        batches = _batches(made, batch_size, axes)
        if source == "inverted":
            from .inversion import invert

            batches = invert(model, batches, seed, progress)
        return batches
    if os.path.isdir(source):
        arrays = load_images(source, model, preprocess, shapes, limit=samples)
    else:
        arrays = _read_npz(source, names)
    _check(model, names, arrays, source, axes=axes)
    stacked = [n for n in names if axes[n] is not None]
    count = arrays[stacked[0]].shape[axes[stacked[0]]] if stacked else 1
    count = count if samples is None else min(count, samples)
    split = [{n: arrays[n] if axes[n] is None else np.take(arrays[n], [i], axis=axes[n])
              for n in names} for i in range(count)]
    if fixed and len(split) < fixed:
        raise UserError(f"{source}: the model takes batches of {fixed}, the data has "
                        f"{len(split)} samples")
    if fixed:
        split = split[:len(split) - len(split) % fixed]
    return _batches(split, batch_size, axes)


def _random_samples(model, names, shapes, fixed, samples: int, seed: int, axes
                    ) -> list[dict[str, np.ndarray]]:
    concrete = input_shapes(model, shapes)
    one = {n: tuple(1 if k == axes[n] else d for k, d in enumerate(concrete[n]))
           for n in names}
    compared = compared_constants(model)
    if fixed:
        samples = max(samples - samples % fixed, fixed)
    vocab = _lookup_sizes(model, names)
    rng = np.random.default_rng(seed)
    made = []
    for k in range(samples):
        feeds = make_inputs(model, one, seed + k, compared)   # the graph searched once
        for n, value in feeds.items():
            if np.issubdtype(value.dtype, np.integer) and n not in compared:
                # ids into a table, else flags; a value the graph tests for stays
                feeds[n] = (rng.integers(0, vocab[n], value.shape).astype(value.dtype)
                            if n in vocab else np.ones_like(value))
        made.append(feeds)
    return made


def _with_natural_images(samples: list[dict], preprocess, seed: int) -> list[dict]:
    """Every image-like float input (NCHW with 1, 3 or 4 channels) of the random samples
    replaced by a dead-leaves image in [0, 1], normalized by ``preprocess``'s mean and std."""
    spec = parse_preprocess(preprocess)
    rng = np.random.default_rng(seed)
    for feeds in samples:
        for name, value in feeds.items():
            if (np.issubdtype(value.dtype, np.floating) and value.ndim == 4
                    and value.shape[1] in (1, 3, 4)):
                image = dead_leaves(1, *value.shape[1:], rng)
                feeds[name] = ((image - np.asarray(spec.mean).reshape(1, -1, 1, 1))
                               / np.asarray(spec.std).reshape(1, -1, 1, 1)).astype(value.dtype)
    return samples


def load_check_data(path: str, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The check's feeds from an ``.npz`` (one array per model input), fed whole: no split
    into samples, so inputs whose batch is not on axis 0 (a recurrent state) fit too. Each
    array must have its input's dtype, rank and static dims."""
    names = user_inputs(model)
    arrays = _read_npz(path, names, "--check-data")
    _check(model, names, arrays, f"--check-data {path}", samples=False)
    return {n: arrays[n] for n in names}


def _read_npz(source: str, names: list[str], what: str = "calibration data"
              ) -> dict[str, np.ndarray]:
    if not os.path.isfile(source):
        raise UserError(f"{what} not found: {source} (give an .npz file" + (
            ", an image folder or 'random')" if what == "calibration data" else ")"))
    try:
        with np.load(source, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input
        raise UserError(f"cannot read {what} {source}: {one_line(str(exc), 200)}") from None
    if list(arrays) == ["arr_0"] and len(names) == 1:
        arrays = {names[0]: arrays["arr_0"]}   # np.savez(path, array): the one input's data
    return arrays


def _lookup_sizes(model, names) -> dict[str, int]:
    """Integer inputs that index a constant table (token ids into an embedding, maybe through
    Cast/Unsqueeze/Reshape): the table's row count, so random ids stay in range."""
    from ..graph import ModelGraph

    graph = ModelGraph(model, infer_shapes=False)
    sizes = {}
    for name in names:
        for reader, tensor in graph.readers_through(name, _SAME_VALUES):
            if reader.op == "Gather" and reader.input(1) == tensor:
                table = graph.const(reader.input(0))
                if table is not None and table.ndim >= 1:
                    sizes[name] = min(sizes.get(name, table.shape[0]), table.shape[0])
    return sizes


_SAME_VALUES = ("Cast", "Unsqueeze", "Reshape", "Squeeze", "Identity")


def fixed_batch(model, names) -> int | None:
    """The batch size every input fixes, if the first dim of the inputs is static."""
    by_name = {i.name: i for i in model.graph.input}
    sizes = set()
    for n in names:
        dims = by_name[n].type.tensor_type.shape.dim
        if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value < 1:
            return None
        sizes.add(dims[0].dim_value)
    return sizes.pop() if len(sizes) == 1 else None


def _check(model, names, arrays, source, samples: bool = True, axes=None) -> None:
    """Every input has an array of its dtype, rank and static dims; with ``samples`` the
    arrays stack samples on their batch axis (``axes``, 0 where not given; the same count
    in each, any batch size)."""
    axes = axes or {}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UserError(f"{source} has no array for model input {missing[0]!r} "
                        f"(it has {', '.join(sorted(arrays)) or 'none'})")
    if samples:
        counts = {arrays[n].shape[axes.get(n, 0)] if arrays[n].ndim > axes.get(n, 0) else 0
                  for n in names if axes.get(n, 0) is not None}
        if len(counts) != 1 or 0 in counts:
            where = ", ".join(f"{n} on axis {a}" for n, a in axes.items() if a) or "axis 0"
            raise UserError(f"{source}: every array needs the same number of samples "
                            f"(stacked on {where})")
    by_name = {i.name: i for i in model.graph.input}
    for n in names:
        tt = by_name[n].type.tensor_type
        want = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        got = arrays[n]
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if got.dtype != want:
            raise UserError(f"{source}: input {n!r} is {got.dtype}, the model wants {want}")
        free = axes.get(n, 0) if samples else None      # the batch axis need not match
        if got.ndim != len(dims) or any(d and d != g for k, (d, g) in
                                        enumerate(zip(dims, got.shape)) if k != free):
            unknown = "N" if samples else "?"
            raise UserError(f"{source}: input {n!r} has shape {list(got.shape)}, the model "
                            f"wants {[unknown if d is None else d for d in dims]}")


def _batches(samples: list[dict[str, np.ndarray]], batch_size: int, axes):
    """Samples joined into batches of ``batch_size``, each input on its batch axis."""
    def joined(n, part):
        axis = axes.get(n, 0)
        return part[0][n] if axis is None else np.concatenate([s[n] for s in part], axis=axis)

    return [{n: joined(n, samples[i:i + batch_size]) for n in samples[0]}
            for i in range(0, len(samples), batch_size)]
