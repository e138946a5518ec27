"""Inputs to run a model on: concrete shapes for dynamic dims, and seeded random feeds."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import UserError

DEFAULT_DIM = 64   # used for a dynamic dim other than the batch when no shape is given


def user_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs a caller feeds (IR 3 also lists every initializer as an input)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def input_shapes(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None
                 ) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for the graph inputs: given ones, else 1 for a dynamic batch and
    ``DEFAULT_DIM`` for other dynamic dims."""
    overrides = overrides or {}
    inits = {t.name for t in model.graph.initializer}
    shapes = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        if inp.name in overrides:
            shapes[inp.name] = tuple(overrides[inp.name])
            continue
        dims = inp.type.tensor_type.shape.dim
        shapes[inp.name] = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0
            else (1 if k == 0 else DEFAULT_DIM) for k, d in enumerate(dims))
    unknown = set(overrides) - set(shapes)
    if unknown:
        raise UserError(f"no model input named {sorted(unknown)[0]!r}")
    return shapes


def make_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs of the right dtype for every graph input. Integers are 0
    or 1 (masks, ids), except a Loop's trip count, which is 2: a check must run the body."""
    rng = np.random.default_rng(seed)
    concrete = input_shapes(model, shapes)
    trip_counts = {n.input[0] for n in model.graph.node if n.op_type == "Loop" and n.input}
    feeds = {}
    for inp in model.graph.input:
        if inp.name not in concrete:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        shape = concrete[inp.name]
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[inp.name] = rng.integers(0, 2, shape).astype(bool)
        elif inp.name in trip_counts:
            feeds[inp.name] = np.full(shape, 2, dtype)
        else:
            feeds[inp.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds
