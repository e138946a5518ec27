"""A latency bundle: the one-node models a model's latency table would time, at a grid of
widths (timed layers) and sizes (stream nodes), for ``runtime.device_timer`` to time on a
deployment device with onnxruntime alone (``onnxprune latency-bundle``).

The grid: every timed layer at ``LEVELS`` kept fractions of its input and of its output
channels (multiples of ``round_to`` where the layer is wide enough), every stream node with
the channel axes of its inputs (those a plan narrows) at ``LEVELS`` fractions, and the empty
runs that the floors subtract. A prune that predicts from the device's table reads between
these points (``runtime.layer_table.grid_between``). Weights are random on the device: each
model keeps its large constants in external data pointing into one file per element type,
which the timer fills before timing, so a bundle is small (kilobytes per model).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..errors import UserError
from ..io.external import point_at
from ..progress import task
from ..runtime import LayerLatencyTable
from ..runtime import device_timer
from ..runtime.latency_store import signature_key
from .analyze import analyze_model

LEVELS = 8
INLINE_BYTES = 4096      # constants up to this size stay in the model (real values)


@dataclass
class BundleSummary:
    folder: str
    models: int
    layers: int
    streams: int
    grid_points: int


def write_bundle(model, folder: str, input_shapes=None, round_to: int = 16,
                 levels: int = LEVELS, progress=None) -> BundleSummary:
    """Write the bundle of ``model`` into the new folder ``folder`` (refused if it exists);
    it appears whole or not at all."""
    out = Path(folder)
    if out.exists():
        raise UserError(f"{out} exists: give a new folder for the bundle")
    a = analyze_model(model)
    table = LayerLatencyTable(a.model, input_shapes, streams=True)
    entries: dict[str, onnx.ModelProto] = {}
    need: dict[str, int] = {}       # weights file → elements it must hold
    grids: dict[str, list] = {}
    layers, streams = table.layers(), table.streams()
    with task(progress, "building the one-node models", len(layers) + len(streams)) as step:
        for node, (c_in, c_out) in layers.items():
            points = []
            for ci in _levels(c_in, round_to, levels):
                for co in _levels(c_out, round_to, levels):
                    try:
                        key, build = table.layer_entry(node, ci, co)
                    except ValueError:
                        continue        # widths the layer's groups cannot take
                    points.append([ci, co, _add(entries, need, key, build)])
            grids[signature_key(table.dense_key(node))] = points
            step()
        for node, layer in streams.items():
            axes = _stream_axes(a, node, layer)
            points = []
            for j in range(1, levels + 1):
                shapes = tuple(None if s is None else _scaled(s, axes.get(k, ()), j / levels)
                               for k, s in enumerate(layer.shapes))
                key, build = table.stream_entry(node, shapes)
                points.append([layer.size(shapes), _add(entries, need, key, build)])
            grids[signature_key(table.dense_key(node))] = points
            for inputs in {layer.data_inputs, 1}:
                _add(entries, need, *table.floor_entry(inputs))
            step()
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        staging = Path(tmp) / "bundle"
        staging.mkdir()
        for i, entry in enumerate(entries.values()):
            (staging / f"{i:05d}.onnx").write_bytes(entry.SerializeToString())
        manifest = {"format": device_timer.FORMAT,
                    "model": a.model.graph.name or "model",
                    "weights": {file: [file[len("weights_"):-len(".bin")], count]
                                for file, count in need.items()},
                    "entries": [{"key": k, "file": f"{i:05d}.onnx"}
                                for i, k in enumerate(entries)],
                    "grids": grids}
        (staging / "bundle.json").write_text(json.dumps(manifest))
        shutil.copy(device_timer.__file__, staging / "device_timer.py")
        staging.rename(out)
    return BundleSummary(str(out), len(entries), len(layers), len(streams),
                         sum(len(p) for p in grids.values()))


def _add(entries: dict, need: dict, key: tuple, build) -> str:
    """Build the model of ``key`` once, its large constants moved out at once (``need``: the
    elements each weights file must hold), so that a bundle of thousands of layers never
    holds their weights in memory."""
    name = signature_key(key)
    if name not in entries:
        entries[name] = _external(build(), need)
    return name


def _levels(width: int, round_to: int, levels: int) -> list[int]:
    """The widths a layer is timed at: ``levels`` fractions of ``width``, on multiples of
    ``round_to`` where the layer has at least two of them."""
    step = round_to if width >= 2 * round_to else 1
    found = {width}
    for j in range(1, levels):
        found.add(max(step, int(round(width * j / levels / step)) * step))
    return sorted(w for w in found if 1 <= w <= width)


def _stream_axes(a, node: int, layer) -> dict[int, tuple[int, ...]]:
    """Per input of a stream node, the axes a plan narrows: a computed value's tracked axes,
    a constant's sliced axes."""
    axes: dict[int, set[int]] = {}
    for k, name in enumerate(layer.names):
        cmap = a.analysis.maps.get(name) if name else None
        if cmap is not None and k not in layer.constants:
            axes.setdefault(k, set()).update(cmap.axes)
    for use in a.analysis.params:
        if use.node == node:
            axes.setdefault(use.input_index, set()).update(use.axes)
    return {k: tuple(sorted(v)) for k, v in axes.items()}


def _scaled(shape: tuple, axes: tuple[int, ...], fraction: float) -> tuple:
    dims = list(shape)
    for axis in axes:
        dims[axis] = max(1, int(round(dims[axis] * fraction)))
    return tuple(dims)


def _external(model: onnx.ModelProto, need: dict[str, int]) -> onnx.ModelProto:
    """The model with every constant over ``INLINE_BYTES`` in external data, pointing at the
    start of one (not yet written) file per element type, which the timer fills."""
    for tensor in model.graph.initializer:
        if len(tensor.raw_data) > INLINE_BYTES:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
            file = f"weights_{dtype.name}.bin"
            length = len(tensor.raw_data)
            point_at(tensor, file, 0, length)
            need[file] = max(need.get(file, 0), length // dtype.itemsize)
    return model
