"""Torch-Pruning (the peer, ``pip install torch-pruning==1.6.1``) on an ONNX file, for the
frontier benchmark: the model is converted to PyTorch, pruned there, and exported back.

``tp_prune(model, inputs, ratio, importance="l2"|"taylor", global_pruning=False, calib=None,
round_to=8, heads=None) -> onnx.ModelProto``. Steps: onnxprune's ``convertible_copy`` (opset
≤ 17, constants as initializers) → ``onnx2torch.convert`` → two rewrites so that TP sees the
layers → ignored layers found by walking the graph back from its outputs → TP's
``BasePruner`` → ``torch.onnx.export`` (TorchScript exporter, opset 17, the original input
and output names and dynamic axes).

What TP needs that an ONNX file does not give it, found while making this work (TP 1.6.1):

* onnx2torch makes a MatMul by a constant an ``OnnxMatMul`` with the weight as a buffer, which
  TP does not see, and a constant Add after a Conv/Linear a separate op that TP does not slice:
  ``linearize`` makes them ``nn.Linear`` and folds the Add into the layer's bias.
* TP's graph build fails on an ONNX Split whose outputs have several readers (YOLOv8's C2f:
  ``IndexError`` in ``infer_out_channels_recursively``): ``unsplit`` makes one conv per chunk,
  as TP's own YOLOv8 example does by hand.
* TP gets a Linear's ``in_features`` wrong once the first input of a Concat that reaches it
  through a flatten is pruned (also with plain PyTorch modules): the layers feeding such a
  Concat are ignored.
* Output layers, and layers whose channels an op moves before the next layer (YOLO's box conv
  into the DFL reshape, attention projections into their head reshape), are ignored.
* ``heads="heads"`` removes whole attention heads (TP's ``prune_num_heads``); TP's default
  head-dim pruning computes a different function here (the export's fixed head size in its
  reshape and 1/√d scale regroup the narrowed heads), so it is not offered.

TP prunes without compensation or fine-tuning here, as onnxprune does; ``INFO`` keeps what the
last call did (ignored layers, timings, and the conversion's and export's errors against ONNX
Runtime).
"""

from __future__ import annotations

import io
import operator
import time
import warnings

import numpy as np
import onnx
import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

import onnx2torch
import torch_pruning as tp
from onnxprune.graph import ModelGraph
from onnxprune.runtime import make_inputs, input_shapes, user_inputs
from onnxprune.runtime.torch_module import Purpose, _register_aliases, convertible_copy

PURPOSE = Purpose("tp_prune", "use onnxprune's own pruner instead")
_getitem = operator.getitem
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
INFO: dict = {}          # what the last call did (ignored layers, timings), for the report


# --------------------------------------------------------------------------- conversion
def to_torch(model: onnx.ModelProto):
    graph = ModelGraph(model)
    names = {i for n in model.graph.node for i in n.input if i and graph.const(i) is not None}
    _register_aliases()
    copy = convertible_copy(model, graph, names, PURPOSE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = onnx2torch.convert(copy)
    return gm.eval(), copy


def _const(gm, node):
    if getattr(node, "op", None) == "get_attr":
        t = gm.get_buffer(node.target) if _has_buffer(gm, node.target) else getattr(gm, node.target)
        return t
    return None


def _has_buffer(gm, target):
    try:
        gm.get_buffer(target)
        return True
    except AttributeError:
        return False


def _kind(gm, node):
    return type(gm.get_submodule(node.target)).__name__ if node.op == "call_module" else None


def _add_op(gm, node):
    if _kind(gm, node) != "OnnxBinaryMathOperation":
        return False
    m = gm.get_submodule(node.target)
    return m.math_op_function is torch.add and m.broadcast is None


def linearize(gm: torch.fx.GraphModule) -> int:
    """MatMul(x, constant [in, out]) -> nn.Linear; a following Add of a constant of shape [out]
    (or [1, out, 1, ...] after a conv) becomes the layer's bias. Returns rewrites done."""
    done = 0
    for node in list(gm.graph.nodes):
        if _kind(gm, node) == "OnnxMatMul" and len(node.args) == 2:
            w = _const(gm, node.args[1])
            if w is None or w.dim() != 2 or not w.is_floating_point():
                continue
            lin = nn.Linear(w.shape[0], w.shape[1], bias=False)
            lin.weight = nn.Parameter(w.detach().t().contiguous().clone())
            name = f"tp_linear_{node.name}"
            gm.add_module(name, lin)
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            done += 1
    for node in list(gm.graph.nodes):     # fold constant Adds into layer biases
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), LAYERS):
            continue
        layer = gm.get_submodule(node.target)
        users = list(node.users)
        if len(users) != 1 or not _add_op(gm, users[0]):
            continue
        add = users[0]
        other = add.args[1] if add.args[0] is node else add.args[0]
        b = _const(gm, other)
        out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if b is None or not b.is_floating_point() or b.numel() != out:
            continue
        # the constant must lie along the channel axis: [out] for Linear, [1, out, 1..] for Conv
        if isinstance(layer, nn.Linear) and b.shape[-1] != out:
            continue
        if not isinstance(layer, nn.Linear) and (b.dim() < 2 or b.shape[1] != out):
            continue
        bias = b.detach().reshape(-1).clone()
        if layer.bias is not None:
            bias = bias + layer.bias.detach()
        layer.bias = nn.Parameter(bias)
        add.replace_all_uses_with(node)
        gm.graph.erase_node(add)
        done += 1
    _tidy(gm)
    return done


def _tidy(gm: torch.fx.GraphModule) -> None:
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()


ELEMENTWISE = ("Sigmoid", "ReLU", "Hardswish", "SiLU", "Tanh", "OnnxBinaryMathOperation",
               "OnnxHardSigmoid", "Hardsigmoid", "LeakyReLU", "OnnxCopyIdentity", "Identity")


def unsplit(gm: torch.fx.GraphModule, args) -> int:
    """Conv -> elementwise chain (SiLU = x*sigmoid(x)) -> Split(axis 1) becomes one conv (and
    one copy of the chain) per chunk: what TP's YOLOv8 example does by hand (C2f -> C2f_v2).
    TP 1.6.1 fails on an ONNX Split whose outputs have several readers (IndexError in
    infer_out_channels_recursively). Returns the number of splits removed."""
    ShapeProp(gm).propagate(*args)
    done = 0
    for split in list(gm.graph.nodes):
        if _kind(gm, split) not in ("OnnxSplit13", "OnnxSplit"):
            continue
        mod = gm.get_submodule(split.target)
        meta = split.args[0].meta.get("tensor_meta")
        if meta is None or mod.axis % len(meta.shape) != 1:
            continue
        if _kind(gm, split) == "OnnxSplit13":
            sizes = _const(gm, split.args[1]) if len(split.args) > 1 else None
            sizes = sizes.tolist() if sizes is not None else None
        else:
            sizes = list(mod.split) if mod.split is not None else None
        if sizes is None:
            n = mod.num_splits
            sizes = [meta.shape[1] // n] * n
        # the chain between the conv and the split
        chain, conv, stack, ok = [], None, [split.args[0]], True
        while stack and ok:
            n = stack.pop()
            if n.op == "get_attr":
                ok = _const(gm, n).numel() == 1
                continue
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Conv2d):
                ok = conv is None or conv is n
                conv = n
                continue
            if _kind(gm, n) not in ELEMENTWISE:
                ok = False
                break
            if n not in chain:
                chain.append(n)
                stack.extend(n.all_input_nodes)
        if not ok or conv is None or conv.users.keys() - set(chain) - {split}:
            continue
        if any(u.keys() - set(chain) - {split} for u in (n.users for n in chain)):
            continue
        getitems = list(split.users)
        if any(u.op != "call_function" or u.target is not _getitem for u in getitems):
            continue
        order = [n for n in gm.graph.nodes if n in chain]
        layer = gm.get_submodule(conv.target)
        off, outs = 0, []
        for k, size in enumerate(sizes):
            part = nn.Conv2d(layer.in_channels, size, layer.kernel_size, layer.stride,
                             layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                             layer.padding_mode)
            part.weight = nn.Parameter(layer.weight.detach()[off:off + size].clone())
            if layer.bias is not None:
                part.bias = nn.Parameter(layer.bias.detach()[off:off + size].clone())
            off += size
            name = f"{conv.target}_part{k}"
            gm.add_module(name, part)
            with gm.graph.inserting_before(split):
                env = {conv: gm.graph.call_module(name, conv.args)}
                for n in order:
                    env[n] = gm.graph.node_copy(n, lambda a: env.get(a, a))
            outs.append(env[split.args[0]] if split.args[0] in env else env[conv])
        for g in getitems:
            g.replace_all_uses_with(outs[g.args[1]])
            gm.graph.erase_node(g)
        gm.graph.erase_node(split)
        for n in reversed(order):
            gm.graph.erase_node(n)
        gm.graph.erase_node(conv)
        done += 1
    _tidy(gm)
    return done


# --------------------------------------------------------------------------- ignored layers
def _is_flatten(node) -> bool:
    """A Reshape/Flatten that keeps dim 0 and merges everything else ([N, C, ...] -> [N, C*...]):
    TP maps channels through it; any other reshape mixes the channel axis with others."""
    src = node.args[0] if node.args else None
    a = getattr(src, "meta", {}).get("tensor_meta")
    b = node.meta.get("tensor_meta")
    if a is None or b is None or not hasattr(a, "shape") or not hasattr(b, "shape"):
        return False
    a, b = tuple(a.shape), tuple(b.shape)
    return len(b) == 2 and len(a) >= 2 and b[0] == a[0] and b[1] == int(np.prod(a[1:]))


MIXERS = ("OnnxReshape", "OnnxTranspose", "OnnxFlatten", "OnnxSqueezeStaticAxes",
          "OnnxUnsqueezeStaticAxes", "OnnxSplit", "OnnxSplit13", "OnnxSoftmaxV1V11",
          "OnnxGather", "OnnxSlice", "OnnxExpand")


def output_layers(gm: torch.fx.GraphModule, args) -> list[nn.Module]:
    """Conv/Linear layers whose output channels must stay: walk back from the graph outputs;
    the first Conv/Linear met on each path is ignored. Behind an ignored layer the walk goes on
    only through ops that keep channels in place (elementwise, concat, pooling, flatten): if
    it meets an op that moves the channel axis (a non-flatten reshape, transpose, split,
    slice, gather) before the next layer, the channels of that next layer are fixed too
    (YOLO's box conv feeding the DFL reshape, an attention projection feeding its head reshape)."""
    ShapeProp(gm).propagate(*args)
    ignored, seen = [], set()
    out = next(n for n in gm.graph.nodes if n.op == "output")
    stack = [(a, True) for a in _flat(out.args)]
    while stack:
        node, frozen = stack.pop()
        if (node, frozen) in seen or not isinstance(node, torch.fx.Node):
            continue
        seen.add((node, frozen))
        kind = _kind(gm, node)
        nxt = frozen
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), LAYERS):
            if frozen:
                mod = gm.get_submodule(node.target)
                if mod not in ignored:
                    ignored.append(mod)
            nxt = False
        elif (kind in MIXERS and not (kind.startswith("OnnxSplit") and _axis1(gm, node))) or (node.op in ("call_function", "call_method")
                                and str(node.target).split(".")[-1]
                                in ("reshape", "view", "permute", "transpose", "split")):
            if not (kind in ("OnnxReshape", "OnnxFlatten") and _is_flatten(node)):
                nxt = True
        if kind in ("OnnxShape", "OnnxConstantOfShape"):
            continue            # shape computations carry no channels
        inputs = node.all_input_nodes
        if kind in ("OnnxReshape", "OnnxExpand") and node.args:
            inputs = [node.args[0]]
        for a in inputs:
            stack.append((a, nxt))
    # TP 1.6.1 bug: Concat -> (pool/elementwise) -> flatten -> Linear gets wrong Linear
    # in_features once the first concat input is pruned (also with plain PyTorch modules).
    # Freeze the layers that feed such a concat.
    for node in gm.graph.nodes:
        if _kind(gm, node) in ("OnnxReshape", "OnnxFlatten", "Flatten") and _is_flatten(node):
            stack, seen2, cat = [(node.args[0], False)], set(), False
            while stack:
                n, cat = stack.pop()
                if n in seen2 or not isinstance(n, torch.fx.Node):
                    continue
                seen2.add(n)
                if n.op == "call_module" and isinstance(gm.get_submodule(n.target), LAYERS):
                    if cat and gm.get_submodule(n.target) not in ignored:
                        ignored.append(gm.get_submodule(n.target))
                    continue
                for a in n.all_input_nodes:
                    stack.append((a, cat or _kind(gm, n) == "OnnxConcat"))
    return ignored


def _axis1(gm, node):
    meta = node.args[0].meta.get("tensor_meta") if node.args else None
    return meta is not None and gm.get_submodule(node.target).axis % len(meta.shape) == 1


def _flat(x):
    if isinstance(x, (list, tuple)):
        return [z for y in x for z in _flat(y)]
    return [x]


# --------------------------------------------------------------------------- pruning
def _feeds(model, inputs, calib):
    if inputs is None and calib:
        return calib[0]
    if isinstance(inputs, dict) and all(isinstance(v, np.ndarray) for v in inputs.values()):
        return inputs
    return make_inputs(model, input_shapes(model, inputs))


def _args(names, feeds):
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names)


def attention_heads(gm: torch.fx.GraphModule) -> dict:
    """{Linear: heads} for every Linear whose output is reshaped [.., out] -> [.., H, D] with
    H*D = out (q, k, v projections). Needs ShapeProp metadata (output_layers runs it)."""
    found = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.Linear):
            continue
        lin = gm.get_submodule(node.target)
        for u in node.users:
            meta = u.meta.get("tensor_meta")
            if (_kind(gm, u) == "OnnxReshape" and meta is not None and len(meta.shape) == 4
                    and meta.shape[-1] * meta.shape[-2] == lin.out_features):
                found[lin] = int(meta.shape[-2])
    return found


def tp_prune(onnx_path, inputs=None, ratio=0.3, importance="l2", global_pruning=False,
             calib=None, round_to=8, heads=None, ignore_extra=()) -> onnx.ModelProto:
    """Prune ``onnx_path`` (path or ModelProto) with Torch-Pruning.

    inputs: {name: shape} (dynamic dims resolved), or {name: array} example feeds, or None
    (then calib[0], else onnxprune's default feeds). calib: list of feeds dicts; needed for
    importance="taylor" (loss: cross-entropy against the dense model's own argmax on the last
    axis). heads: None (q/k/v/o frozen, only MLPs pruned) or "heads" (TP prune_num_heads,
    whole heads removed, q/k/v found by attention_heads).
    """
    if heads not in (None, "heads"):
        raise ValueError(f"heads must be None or 'heads', got {heads!r}")
    t0 = time.perf_counter()
    model = onnx.load(onnx_path) if isinstance(onnx_path, str) else onnx_path
    names = user_inputs(model)
    feeds = _feeds(model, inputs, calib)
    args = _args(names, feeds)
    gm, copy = to_torch(model)
    INFO.clear()
    INFO["linearized"] = linearize(gm)
    INFO["unsplit"] = unsplit(gm, args)
    INFO["t_convert"] = time.perf_counter() - t0
    with torch.no_grad():
        dense = _flat(gm(*args))
    ignored = output_layers(gm, args)
    num_heads = attention_heads(gm) if heads else {}
    INFO["num_heads"] = {n: num_heads[m] for n, m in gm.named_modules() if m in num_heads}
    if heads:     # whole heads go
        ignored = [m for m in ignored if m not in num_heads]
    ignored += list(ignore_extra)
    INFO["ignored"] = [n for n, m in gm.named_modules() if m in ignored]
    imp = {"l2": tp.importance.GroupMagnitudeImportance(p=2),
           "taylor": tp.importance.GroupTaylorImportance()}[importance]
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BasePruner(
            gm, args, importance=imp, pruning_ratio=ratio, global_pruning=global_pruning,
            ignored_layers=ignored, round_to=round_to,
            num_heads=num_heads, prune_num_heads=heads == "heads",
            prune_head_dims=False,
            head_pruning_ratio=ratio if heads == "heads" else 0.0)
        INFO["t_graph"] = time.perf_counter() - t1
        if importance == "taylor":
            if not calib:
                raise ValueError("taylor importance needs calib (list of feeds dicts)")
            gm.zero_grad()
            for batch in calib:
                out = _flat(gm(*_args(names, batch)))[0]
                logits = out.reshape(-1, out.shape[-1])
                loss = nn.functional.cross_entropy(logits, logits.detach().argmax(-1))
                loss.backward()
        pruner.step()
    INFO["t_prune"] = time.perf_counter() - t1
    gm.zero_grad(set_to_none=True)
    for p in gm.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        pruned = _flat(gm(*args))
    INFO["torch_shapes"] = ([tuple(d.shape) for d in dense], [tuple(p.shape) for p in pruned])
    if INFO["torch_shapes"][0] != INFO["torch_shapes"][1]:
        raise RuntimeError(f"pruning changed the output shapes: {INFO['torch_shapes']}")
    t2 = time.perf_counter()
    out = export(gm, args, model)
    INFO["t_export"] = time.perf_counter() - t2
    INFO["t_total"] = time.perf_counter() - t0
    # fidelity checks: converted dense module vs ORT on the original; exported vs torch
    from onnxprune.runtime import run_model
    want = list(run_model(model, feeds).values())
    INFO["convert_err"] = max(_rel(d.numpy(), w) for d, w in zip(dense, want))
    got = list(run_model(out, feeds).values())
    INFO["export_err"] = max(_rel(g, p.numpy()) for g, p in zip(got, pruned))
    return out


def _rel(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


def export(gm, args, model: onnx.ModelProto) -> onnx.ModelProto:
    """torch.onnx.export (TorchScript exporter), original input/output names, dynamic axes
    where the original had symbolic dims."""
    ins = [i for i in model.graph.input if i.name in set(user_inputs(model))]
    outs = list(model.graph.output)

    def axes(vi):
        return {k: (d.dim_param or f"d{k}") for k, d in enumerate(vi.type.tensor_type.shape.dim)
                if not d.HasField("dim_value")}
    dyn = {vi.name: axes(vi) for vi in ins + outs if axes(vi)}
    buf = io.BytesIO()
    from torch.onnx import symbolic_helper

    if not hasattr(symbolic_helper, "_export_onnx_opset_version"):
        # onnx2torch 1.5.15's Shape module reads this while exporting; torch 2.14 dropped it
        symbolic_helper._export_onnx_opset_version = 17
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(gm, args, buf, dynamo=False, opset_version=17,
                          input_names=[i.name for i in ins], output_names=[o.name for o in outs],
                          dynamic_axes=dyn, do_constant_folding=True)
    out = onnx.load_from_string(buf.getvalue())
    # the exporter loses static output dims it cannot infer: restore the original's declaration
    for o, want in zip(out.graph.output, outs):
        if o.type.tensor_type.elem_type == want.type.tensor_type.elem_type:
            o.type.CopyFrom(want.type)
    return out


if __name__ == "__main__":  # python -m benchmarks.torch_pruning_peer [model.onnx] [ratio]
    import sys
    from onnxprune.runtime import count_cost
    path = sys.argv[1] if len(sys.argv) > 1 else "/work/main/onnxprune/data/demo_digits.onnx"
    pruned = tp_prune(path, None, float(sys.argv[2]) if len(sys.argv) > 2 else 0.3)
    print(count_cost(onnx.load(path)), "->", count_cost(pruned))
    print({k: v for k, v in INFO.items() if k != "ignored"}, "ignored:", INFO["ignored"])
