"""Inputs to run a model on: concrete shapes for dynamic dims, and seeded random feeds."""

from __future__ import annotations

import re

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
    sizes = _named_sizes(inputs, overrides)
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


def _named_sizes(inputs, overrides) -> dict[str, int]:
    """A size for every dim name: given, a batch (1), ``DEFAULT_DIM``, or computed."""
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
    for inp in inputs:
        for d in inp.type.tensor_type.shape.dim:
            if _is_name(d.dim_param):
                sizes.setdefault(d.dim_param, DEFAULT_DIM)
    for inp in inputs:
        for d in inp.type.tensor_type.shape.dim:
            if d.dim_param and not _is_name(d.dim_param) and d.dim_param not in sizes:
                value = _evaluate(d.dim_param, sizes)
                if value is not None and value > 0:
                    sizes[d.dim_param] = value
    return sizes


_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_.]*)|([-+*()]))")


def _is_name(text: str) -> bool:
    return bool(text) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", text) is not None


def _evaluate(text: str, sizes: dict[str, int]) -> int | None:
    """``text`` as integer arithmetic (+, -, *, parentheses) over known dim names, or None
    when it is anything else."""
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        match = _TOKEN.match(text, pos)
        if not match:
            return None
        number, name, op = match.groups()
        if name is not None and name not in sizes:
            return None
        tokens.append(int(number) if number else sizes[name] if name else op)
        pos = match.end()

    def expr(i):
        value, i = term(i)
        while i < len(tokens) and tokens[i] in ("+", "-"):
            right, j = term(i + 1)
            value, i = (value + right if tokens[i] == "+" else value - right), j
        return value, i

    def term(i):
        value, i = atom(i)
        while i < len(tokens) and tokens[i] == "*":
            right, i = atom(i + 1)
            value *= right
        return value, i

    def atom(i):
        if i >= len(tokens):
            raise ValueError
        if tokens[i] == "(":
            value, i = expr(i + 1)
            if i >= len(tokens) or tokens[i] != ")":
                raise ValueError
            return value, i + 1
        if isinstance(tokens[i], int):
            return tokens[i], i + 1
        raise ValueError

    try:
        value, end = expr(0)
    except ValueError:
        return None
    return value if end == len(tokens) else None


def make_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs of the right dtype for every graph input. Integers are 0
    or 1 (masks, ids), except a Loop's trip count, which is 2 (a check must run the body),
    and an integer the graph tests for equality with a constant (a sample rate that selects
    a branch: ``If(Equal(sr, 16000))``), which is that constant."""
    rng = np.random.default_rng(seed)
    concrete = input_shapes(model, shapes)
    trip_counts = {n.input[0] for n in model.graph.node if n.op_type == "Loop" and n.input}
    compared = _compared_constants(model)
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


def _compared_constants(model: onnx.ModelProto) -> dict[str, int]:
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
        frontier, seen = [inp.name], set()
        while frontier and inp.name not in found:
            tensor = frontier.pop(0)
            for reader in graph.consumers.get(tensor, []):
                if reader.index in seen:
                    continue
                seen.add(reader.index)
                if reader.op == "Equal":
                    other = reader.input(1) if reader.input(0) == tensor else reader.input(0)
                    value = graph.const(other)
                    if value is not None and value.size == 1 and float(value).is_integer():
                        found[inp.name] = int(value.reshape(()))
                        break
                elif reader.op in _PASS_THROUGH:
                    frontier.extend(o for o in reader.proto.output if o)
    return found
