"""PyTorch's view of an ONNX model, for what ONNX Runtime cannot do: gradients.

onnx2torch (the optional ``grad`` extra: ``pip install 'onnxprune[grad]'``) converts a copy
of the model to a ``torch.fx`` module; every float weight of the module is mapped back to the
ONNX initializer it came from, in ONNX layout, so that gradients (importance), trained values
(recovery) and input gradients (model inversion) can be read in ONNX terms. The converted
module must reproduce ONNX Runtime before anything it computes is trusted; a model onnx2torch
cannot convert is a one-line error naming who needed it (a ``Purpose``) and what to do instead.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UserError
from ..io.weights import inline_weights
from .feeds import user_inputs
from .run import run_model

CONVERT_OPSET = 17        # onnx2torch converts most ops up to this opset
AGREEMENT = 1e-3          # relative error allowed between the torch module and ONNX Runtime
# Op versions whose only change is the types they accept: onnx2torch's converter for the
# older version computes the same thing.
_SAME_AS = {("GreaterOrEqual", 16): 12, ("LessOrEqual", 16): 12}


class Purpose:
    """Who converts the model, as errors name it, and what to do instead."""

    def __init__(self, name: str, instead: str):
        self.name, self.instead = name, instead


def require_torch(purpose: Purpose):
    try:
        import onnx2torch  # noqa: F401
        import torch
    except ImportError:
        raise UserError(f"{purpose.name}: needs PyTorch and onnx2torch: pip install "
                        "'onnxprune[grad]'") from None
    return torch


def _register_aliases() -> None:
    from onnx2torch.node_converters import registry

    for (op, version), older in _SAME_AS.items():
        key = registry.OperationDescription(domain="", operation_type=op, version=version)
        source = registry.OperationDescription(domain="", operation_type=op, version=older)
        if key not in registry._CONVERTER_REGISTRY and source in registry._CONVERTER_REGISTRY:
            registry._CONVERTER_REGISTRY[key] = registry._CONVERTER_REGISTRY[source]


def convertible_copy(model: onnx.ModelProto, graph, names: set[str],
                     purpose: Purpose) -> onnx.ModelProto:
    """A copy onnx2torch can convert, computing the same function: every constant in ``names``
    (the weights the analysis slices) and every Identity of a constant becomes an initializer;
    IR 3 is raised to IR 4; a Flatten at axis = rank becomes the equivalent Reshape; a float32
    Gelu (opset 20, which has no earlier version to lower to) becomes its Erf or Tanh formula;
    Reshape's ``allowzero`` is dropped where the shape has no zero or is computed (it then
    changes nothing); the opset is lowered to 17 where ONNX's version converter can; nodes are
    named by position; and weights kept in files are read in (torch holds them all)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inline_weights(copy)
    inits = {t.name for t in copy.graph.initializer}
    # TorchScript shares equal weights through Identity nodes; onnx2torch reads a conv's
    # weight and bias only from initializers.
    shared = {n.output[0] for n in copy.graph.node
              if n.op_type == "Identity" and graph.const(n.output[0]) is not None}
    for name in sorted((names | shared) - inits):
        value = graph.const(name)
        if value is not None:
            copy.graph.initializer.append(numpy_helper.from_array(value, name))
    made = {t.name for t in copy.graph.initializer}
    keep = [n for n in copy.graph.node
            if not (n.output and all(o in made for o in n.output))]
    del copy.graph.node[:]
    copy.graph.node.extend(keep)
    copy.ir_version = max(copy.ir_version, 4)   # IR 3 lists initializers as inputs too
    _expand_gelu(copy, graph)
    for k, node in enumerate(copy.graph.node):
        shape = graph.shape(node.input[0]) if node.op_type == "Flatten" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if shape is not None and axis == len(shape):
            # Flatten at axis = rank is [N, 1]; onnx2torch mishandles it, Reshape does not.
            target = f"{node.output[0]}_flat_shape"
            copy.graph.initializer.append(numpy_helper.from_array(
                np.array([-1, 1], np.int64), target))
            copy.graph.node[k].CopyFrom(helper.make_node(
                "Reshape", [node.input[0], target], list(node.output), node.name))
    for node in copy.graph.node:
        if node.op_type == "Reshape" and any(a.name == "allowzero" for a in node.attribute):
            shape = graph.const(node.input[1])
            # A computed shape (dynamo exports) holds no zero unless a tensor is empty; the
            # converted module is checked against ONNX Runtime before it is used.
            if shape is None or not (shape == 0).any():
                kept = [a for a in node.attribute if a.name != "allowzero"]
                del node.attribute[:]
                node.attribute.extend(kept)
    opset = next((o.version for o in copy.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > CONVERT_OPSET:
        try:
            copy = onnx.version_converter.convert_version(copy, CONVERT_OPSET)
        except Exception as exc:  # noqa: BLE001 - the converter's own message says which op
            raise UserError(f"{purpose.name}: cannot lower opset {opset} to "
                            f"{CONVERT_OPSET} for onnx2torch ({_first_line(exc)})") from None
        for node in copy.graph.node:   # the converter leaves an opset-18 attribute behind
            if node.op_type.startswith("Reduce"):
                kept = [a for a in node.attribute
                        if not (a.name == "noop_with_empty_axes" and a.i == 0)]
                del node.attribute[:]
                node.attribute.extend(kept)
    for i, node in enumerate(copy.graph.node):
        node.name = f"n{i}"
    return copy


def _expand_gelu(model: onnx.ModelProto, graph) -> None:
    """Every float32 Gelu as 0.5·x·(1 + erf(x/√2)), or with ``approximate="tanh"`` as
    0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), in place (same output name)."""
    nodes = []
    for k, node in enumerate(model.graph.node):
        if (node.op_type != "Gelu" or node.domain not in ("", "ai.onnx")
                or graph.dtypes.get(node.input[0]) != onnx.TensorProto.FLOAT):
            nodes.append(node)
            continue
        tanh = any(a.name == "approximate" and a.s == b"tanh" for a in node.attribute)
        x, y, tag = node.input[0], node.output[0], f"gelu{k}"

        def const(name, value):
            model.graph.initializer.append(numpy_helper.from_array(
                np.array(value, np.float32), f"{tag}_{name}"))
            return f"{tag}_{name}"

        def op(kind, inputs, out=None):
            out = out or f"{tag}_{kind.lower()}{len(nodes)}"
            nodes.append(helper.make_node(kind, inputs, [out]))
            return out

        if tanh:
            cube = op("Mul", [op("Mul", [x, x]), x])
            inner = op("Add", [x, op("Mul", [cube, const("c", 0.044715)])])
            core = op("Tanh", [op("Mul", [inner, const("k", np.sqrt(2.0 / np.pi))])])
        else:
            core = op("Erf", [op("Div", [x, const("r2", np.sqrt(2.0))])])
        half_x = op("Mul", [x, const("half", 0.5)])
        op("Mul", [half_x, op("Add", [core, const("one", 1.0)])], y)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


class TorchModel:
    """The converted module, with every float weight mapped back to its ONNX initializer.

    ``tensors[name]`` lists (torch tensor, to_onnx) pairs: ``to_onnx`` turns that tensor's
    gradient into the gradient of the ONNX initializer ``name`` (a Gemm becomes a Linear whose
    weight is alpha·Bᵀ, for example). One initializer read by several nodes has several pairs.
    """

    def __init__(self, model: onnx.ModelProto, graph, names: set[str],
                 purpose: Purpose):
        self.names = names       # only these initializers collect gradients
        self.purpose = purpose
        require_torch(purpose)     # a clear error when the extra is missing
        import onnx2torch

        _register_aliases()
        self.onnx = convertible_copy(model, graph, names, purpose)
        try:
            self.module = onnx2torch.convert(self.onnx, attach_onnx_mapping=True)
        except Exception as exc:  # noqa: BLE001 - onnx2torch raises many types
            raise UserError(f"{purpose.name}: onnx2torch cannot convert this model "
                            f"({_first_line(exc)}); {purpose.instead}") from None
        self.module.eval()
        self.inputs = user_inputs(self.onnx)
        self.remap()

    def remap(self) -> None:
        """Map every float parameter and constant buffer to its ONNX initializer (again after
        a dtype change, which replaces buffers)."""
        torch = require_torch(self.purpose)
        self.tensors: dict[str, list] = {}
        self.values: dict[str, list] = {}    # name → (torch tensor, its value in ONNX layout)
        protos = {n.name: n for n in self.onnx.graph.node}
        for fx_node in self.module.graph.nodes:
            if fx_node.op == "call_module" and fx_node.target in protos:
                self._map(fx_node, protos[fx_node.target], torch)

    def _map(self, fx_node, proto, torch) -> None:
        sub = self.module.get_submodule(fx_node.target)
        for j, arg in enumerate(fx_node.args):
            if proto.op_type == "BatchNormalization" and j >= 3:
                continue        # running statistics are not parameters
            if getattr(arg, "op", None) == "get_attr" and j < len(sub.onnx_mapping.inputs):
                tensor = self.module.get_buffer(arg.target)
                if tensor.is_floating_point():
                    self._add(sub.onnx_mapping.inputs[j], tensor, lambda g: g, lambda v: v)
        attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        for path, owner in sub.named_modules():
            for leaf, param in owner.named_parameters(recurse=False):
                index = {"weight": 1, "bias": 2}.get(leaf)
                if index is None or index >= len(proto.input):
                    continue
                mapped = _to_onnx(owner, leaf, proto.op_type, attrs, torch)
                if mapped is not None:
                    self._add(proto.input[index], param, *mapped)

    def _add(self, name, tensor, to_onnx, value_to_onnx) -> None:
        if name in self.names:
            self.tensors.setdefault(name, []).append((tensor, to_onnx))
            self.values.setdefault(name, []).append((tensor, value_to_onnx))

    def onnx_value(self, name: str) -> np.ndarray | None:
        """The current value of initializer ``name`` in ONNX layout, from the one torch tensor
        built from it (None when several were: they could disagree)."""
        pairs = self.values.get(name, [])
        if len(pairs) != 1:
            return None
        tensor, to_onnx = pairs[0]
        return to_onnx(tensor.detach()).numpy()

    def forward(self, feeds: dict[str, np.ndarray], dtype=None) -> list:
        torch = require_torch(self.purpose)
        args = []
        for name in self.inputs:       # numpy arrays, or tensors (inputs being optimized)
            value = feeds[name]
            if not torch.is_tensor(value):
                value = torch.from_numpy(np.ascontiguousarray(value))
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            args.append(value)
        with warnings.catch_warnings():      # onnx2torch's deprecation notices, not ours
            warnings.simplefilter("ignore")
            out = self.module(*args)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def check_against_ort(self, feeds: dict[str, np.ndarray]) -> None:
        """Refuse gradients from a module that does not compute what the model computes."""
        torch = require_torch(self.purpose)
        with reported("run", self.purpose), torch.no_grad():
            want = list(run_model(self.onnx, feeds).values())
            got = [t.numpy() for t in self.forward(feeds)]
        for g, w in zip(got, want):
            if not np.issubdtype(w.dtype, np.floating):
                continue
            err = float(np.abs(g.astype(np.float64) - w).max()) / max(
                float(np.abs(w).max()), 1e-12)
            if g.shape != w.shape or not err <= AGREEMENT:
                raise UserError(f"{self.purpose.name}: the onnx2torch conversion of this model "
                                f"does not match ONNX Runtime (relative error {err:.2g}); "
                                f"{self.purpose.instead}")

    def gradients(self) -> dict[str, np.ndarray]:
        """∂/∂initializer of what was back-propagated, summed over the initializer's uses."""
        out: dict[str, np.ndarray] = {}
        for name, pairs in self.tensors.items():
            for tensor, to_onnx in pairs:
                if tensor.grad is None:
                    continue
                g = to_onnx(tensor.grad.detach().to(dtype=tensor.grad.dtype)).double().numpy()
                out[name] = out[name] + g if name in out else g
        return out

    def track(self) -> None:
        """Make every mapped tensor a leaf that collects gradients."""
        for pairs in self.tensors.values():
            for tensor, _ in pairs:
                tensor.requires_grad_(True)
                tensor.grad = None


def _to_onnx(owner, leaf: str, op: str, attrs: dict, torch):
    """How a module parameter maps back to the ONNX input onnx2torch built it from: (its
    gradient → the input's gradient, its value → the input's value), or None."""
    if isinstance(owner, (torch.nn.modules.conv._ConvNd, torch.nn.modules.batchnorm._BatchNorm,
                          torch.nn.LayerNorm)):
        return (lambda g: g), (lambda v: v)
    if isinstance(owner, torch.nn.Linear) and op == "Gemm":
        if leaf == "bias":          # bias = beta · C
            beta = float(attrs.get("beta", 1.0))
            return (lambda g: g * beta), (lambda v: v / beta)
        # weight = alpha · B (transB) or alpha · Bᵀ
        alpha, trans_b = float(attrs.get("alpha", 1.0)), bool(attrs.get("transB", 0))
        if trans_b:
            return (lambda g: g * alpha), (lambda v: v / alpha)
        return (lambda g: g.T * alpha), (lambda v: (v / alpha).T)
    return None


@contextlib.contextmanager
def reported(what: str, purpose: Purpose):
    """Turn a failure inside the converted module into a one-line user error."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types
        raise UserError(f"{purpose.name}: cannot {what} the onnx2torch conversion of this "
                        f"model ({type(exc).__name__}: {_first_line(exc)}); "
                        f"{purpose.instead}") from None
