"""Einsum with constant weights (issue 16, item 5): modules written with ``torch.einsum``
and exported by ``torch.onnx.export`` keep their Einsum ops; their projections prune like
MatMuls (channels consumed by contracted letters, made by the weight's own output letters,
grids of heads × head_dim kept rectangular, per-head weights sliced with the heads)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.rules.einsum import parse

from .builder import GraphBuilder
from .oracle import assert_oracle

torch = pytest.importorskip("torch")


def export(module, shape, tmp_path, name="einsum"):
    path = tmp_path / f"{name}.onnx"
    x = torch.randn(*shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    model = onnx.load(str(path))
    assert any(n.op_type == "Einsum" for n in model.graph.node)
    return model


class HeadsMLP(torch.nn.Module):
    """x → "btd,dhk->bthk" (straight to a heads × head_dim grid) → GELU → "bthk,hkd->btd" →
    a residual → "...d,de->...e" (an ellipsis) → GELU → Linear."""

    def __init__(self, d=16, h=4, k=6, e=24):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.up = torch.nn.Parameter(torch.randn(d, h, k, generator=g) / d ** 0.5)
        self.down = torch.nn.Parameter(torch.randn(h, k, d, generator=g) / (h * k) ** 0.5)
        self.wide = torch.nn.Parameter(torch.randn(d, e, generator=g) / d ** 0.5)
        self.head = torch.nn.Linear(e, 5)

    def forward(self, x):
        h = torch.nn.functional.gelu(torch.einsum("btd,dhk->bthk", x, self.up))
        x = x + torch.einsum("bthk,hkd->btd", h, self.down)
        return self.head(torch.nn.functional.gelu(torch.einsum("...d,de->...e", x, self.wide)))


class PerHead(torch.nn.Module):
    """Heads made by a Linear, reshaped, then a per-head weight ("bthd,hde->bthe", h shared)."""

    def __init__(self, d=16, h=4, e=8):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.h = h
        self.proj = torch.nn.Linear(d, d)
        self.per_head = torch.nn.Parameter(torch.randn(h, d // h, e, generator=g))
        self.out = torch.nn.Linear(h * e, 3)

    def forward(self, x):
        b, t, d = x.shape
        heads = self.proj(x).reshape(b, t, self.h, d // self.h)
        y = torch.relu(torch.einsum("bthd,hde->bthe", heads, self.per_head))
        return self.out(y.reshape(b, t, -1))


def test_equations_are_read_with_ellipses_and_implicit_outputs():
    assert parse("btd,dhk->bthk", [3, 3]) == (["btd", "dhk"], "bthk")
    assert parse("...d,de->...e", [3, 2]) == (["ABd", "de"], "ABe")
    assert parse("ij,jk", [2, 2]) == (["ij", "jk"], "ik")
    assert parse("ij,jk->ik", [3, 2]) is None


def test_projections_to_a_heads_grid_and_an_ellipsis_prune(tmp_path):
    model = export(HeadsMLP(), (2, 5, 16), tmp_path)
    groups = onnxprune.inspect(model)["groups"]
    assert sum(g["prunable"] for g in groups) == 2     # the grid (4 × 6) and the 24 wide
    assert_oracle(model, ratio=0.5, shapes={"x": (3, 5, 16)})
    pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1)
    assert report["check"]["ok"] and report["check"]["max_rel_error"] < 1e-5
    weights = {tuple(t.dims) for t in pruned.graph.initializer}
    assert {(16, 4, 3), (4, 3, 16), (16, 12)} <= weights   # same k kept in every h; e halved


def test_a_per_head_weight_is_sliced_with_the_heads(tmp_path):
    model = export(PerHead(), (2, 5, 16), tmp_path, "per_head")
    assert_oracle(model, ratio=0.5, shapes={"x": (3, 5, 16)})
    pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1)
    assert report["check"]["ok"]
    per_head = next(t for t in pruned.graph.initializer if len(t.dims) == 3)
    assert list(per_head.dims)[1:] == [4, 8] and per_head.dims[0] < 4    # whole heads went


def test_an_einsum_of_two_activations_is_a_barrier_that_says_so():
    b = GraphBuilder()
    q = b.op("MatMul", ["x", b.weight(16, 16)])
    k = b.op("MatMul", ["x", b.weight(16, 16)])
    scores = b.op("Einsum", [q, k], equation="bqd,bkd->bqk")
    model = b.model({"x": [1, 5, 16]}, [b.op("Softmax", [scores], axis=-1)])
    reasons = {x["reason"] for x in onnxprune.inspect(model)["barriers"]}
    assert reasons == {"an einsum of two activations (no constant weight)"}
    assert_oracle(model, ratio=0.5, expect_pruned=False)


def test_einsum_counts_its_macs(tmp_path):
    model = export(HeadsMLP(), (2, 5, 16), tmp_path)
    cost = onnxprune.runtime.count_cost(model, {"x": (2, 5, 16)})
    expected = 2 * 5 * 16 * 24 * 2 + 2 * 5 * 16 * 24 + 2 * 5 * 24 * 5   # up, down, wide, head
    assert cost.macs == expected
    assert np.isfinite(cost.params)
