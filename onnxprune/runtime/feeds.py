"""Inputs to run a model on: concrete shapes for dynamic dims, and seeded random feeds."""

from __future__ import annotations

import ast
import operator
import re

import numpy as np
import onnx

from ..errors import UserError
from ..graph import ModelGraph
from ..rules import Rule, rule_for

DEFAULT_DIM = 64   # used for a dynamic dim other than the batch when no shape is given


def user_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs a caller feeds (IR 3 also lists every initializer as an input)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def input_shapes(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None
                 ) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for the graph inputs: given ones, else what the dims' names imply.

    A named dim is one size everywhere it appears: a size the caller gave for it on one input
    (``--input-shape input_ids:1x32``) holds for every input that names it, and a name that is
    some input's first dim is a batch, 1 wherever it appears (a recurrent state whose batch is
    on axis 1 included). A name written as a sum or product of other names (Optimum's
    ``past_sequence_length + sequence_length``) is computed from them. Other dynamic dims are
    1 on axis 0 and ``DEFAULT_DIM`` elsewhere."""
    overrides = overrides or {}
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    unknown = set(overrides) - {i.name for i in inputs}
    if unknown:
        raise UserError(f"no model input named {sorted(unknown)[0]!r}")
    sizes = _named_sizes(inputs, overrides, implied_sizes(model))
    shapes = {}
    for inp in inputs:
        if inp.name in overrides:
            shapes[inp.name] = tuple(overrides[inp.name])
            continue
        dims = inp.type.tensor_type.shape.dim
        shapes[inp.name] = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0
            else sizes.get(d.dim_param) or (1 if k == 0 else DEFAULT_DIM)
            for k, d in enumerate(dims))
    return shapes


def batch_axes(model: onnx.ModelProto) -> dict[str, int | None]:
    """The axis each input stacks samples on: the first that carries a batch name (a name
    that is some input's first dim), so a recurrent state ``[2, N, 128]`` beside
    ``x [N, T]`` stacks on axis 1; axis 0 where no dim says otherwise; None for a scalar (a
    sample rate), which every sample shares."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    batch = {i.type.tensor_type.shape.dim[0].dim_param for i in inputs
             if i.type.tensor_type.shape.dim and _is_name(i.type.tensor_type.shape.dim[0].dim_param)}
    return {i.name: next((k for k, d in enumerate(i.type.tensor_type.shape.dim)
                          if d.dim_param in batch), 0)
            if i.type.tensor_type.shape.dim else None for i in inputs}


def sample_count(feeds: dict[str, np.ndarray], axes: dict[str, int | None]) -> int:
    """Samples in a batch of feeds: the size of the first stacked input's sample axis
    (``axes``: see :func:`batch_axes`); 1 where every input is shared (scalars)."""
    for name, value in feeds.items():
        axis = axes.get(name, 0)
        if axis is not None and value.ndim > axis:
            return value.shape[axis]
    return 1


def take_samples(feeds: dict[str, np.ndarray], axes: dict[str, int | None], start: int,
                 stop: int) -> dict[str, np.ndarray]:
    """Samples ``start:stop`` of a batch, each input cut on its sample axis (a shared scalar
    is kept whole)."""
    out = {}
    for name, value in feeds.items():
        axis = axes.get(name, 0)
        shared = axis is None or value.ndim <= axis
        out[name] = value if shared else np.take(value, range(start, stop), axis=axis)
    return out


def implied_sizes(model: onnx.ModelProto) -> dict[str, int | str]:
    """What the model's ops imply for named input dims (``Rule.dim_sizes``: a cache's head
    size, a mask as long as past plus new tokens). Only ops whose rule says something are
    read, so most models cost nothing here."""
    def speaks(node) -> bool:
        rule = rule_for(node)
        return rule is not None and type(rule).dim_sizes is not Rule.dim_sizes

    if not any(speaks(n) for n in model.graph.node):
        return {}
    graph = ModelGraph(model)
    sizes: dict[str, int | str] = {}
    for ref in filter(speaks, graph.nodes):
        for name, size in rule_for(ref).dim_sizes(ref, graph).items():
            sizes.setdefault(name, size)
    return sizes


def _named_sizes(inputs, overrides, implied=None) -> dict[str, int]:
    """A size for every dim name: given, a batch (1), what the ops imply (``implied``: a
    number or arithmetic over other names), ``DEFAULT_DIM``, or computed."""
    implied = implied or {}
    sizes: dict[str, int] = {}
    for inp in inputs:
        given = overrides.get(inp.name)
        for k, d in enumerate(inp.type.tensor_type.shape.dim):
            if given is not None and k < len(given) and _is_name(d.dim_param):
                sizes.setdefault(d.dim_param, int(given[k]))
    for inp in inputs:
        first = inp.type.tensor_type.shape.dim[:1]
        if first and _is_name(first[0].dim_param):
            sizes.setdefault(first[0].dim_param, 1)
    for name, size in implied.items():
        if isinstance(size, int):
            sizes.setdefault(name, size)
    computed = {name: size for name, size in implied.items() if isinstance(size, str)}
    for inp in inputs:
        for d in inp.type.tensor_type.shape.dim:
            if _is_name(d.dim_param) and d.dim_param not in computed:
                sizes.setdefault(d.dim_param, DEFAULT_DIM)
    expressions = dict(computed)
    for inp in inputs:
        for d in inp.type.tensor_type.shape.dim:
            if d.dim_param and not _is_name(d.dim_param):
                expressions.setdefault(d.dim_param, d.dim_param)
    for name, expression in expressions.items():
        if name not in sizes:
            value = _evaluate(expression, sizes)
            if value is not None and value > 0:
                sizes[name] = value
    return sizes


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _is_name(text: str) -> bool:
    return bool(text) and _NAME.fullmatch(text) is not None


def _evaluate(text: str, sizes: dict[str, int]) -> int | None:
    """``text`` as integer arithmetic (+, -, *, parentheses) over known dim names, or None
    when it is anything else."""
    known = True

    def size(match):
        nonlocal known
        known &= match.group() in sizes
        return str(sizes.get(match.group(), 0))

    try:
        tree = ast.parse(_NAME.sub(size, text).strip(), mode="eval")
        return _arithmetic(tree.body) if known else None
    except (SyntaxError, ValueError):
        return None


def _arithmetic(node) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        return _ARITHMETIC[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    raise ValueError("not integer arithmetic")


def make_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None,
                seed: int = 0, compared: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Deterministic random inputs of the right dtype for every graph input. Integers are 0
    or 1 (masks, ids), except a Loop's trip count, which is 2 (a check must run the body),
    and an integer the graph tests for equality with a constant (a sample rate that selects
    a branch: ``If(Equal(sr, 16000))``), which is that constant (``compared``: the model's
    :func:`compared_constants`, when a caller making many samples found them once)."""
    rng = np.random.default_rng(seed)
    concrete = input_shapes(model, shapes)
    trip_counts = {n.input[0] for n in model.graph.node if n.op_type == "Loop" and n.input}
    compared = compared_constants(model) if compared is None else compared
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
        elif inp.name in compared:
            feeds[inp.name] = np.full(shape, compared[inp.name], dtype)
        else:
            feeds[inp.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


_PASS_THROUGH = ("Cast", "Squeeze", "Unsqueeze", "Reshape", "Identity", "Flatten")


def compared_constants(model: onnx.ModelProto) -> dict[str, int]:
    """Integer inputs that reach an ``Equal`` with a one-value constant (through casts and
    reshapes), with the first such constant in graph order."""
    from ..graph import ModelGraph

    if not any(n.op_type == "Equal" for n in model.graph.node):
        return {}
    graph = ModelGraph(model, infer_shapes=False)
    found = {}
    for inp in model.graph.input:
        elem = inp.type.tensor_type.elem_type
        if not np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(elem), np.integer):
            continue
        for reader, tensor in graph.readers_through(inp.name, _PASS_THROUGH):
            if reader.op != "Equal":
                continue
            value = graph.const(reader.input(1) if reader.input(0) == tensor
                                else reader.input(0))
            if value is not None and value.size == 1 and float(value).is_integer():
                found[inp.name] = int(value.reshape(()))
                break
    return found
