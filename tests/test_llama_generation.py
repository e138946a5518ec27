"""The Llama-style decoder of the zoo (GQA: 8 query heads share 2 key/value heads, RoPE, SwiGLU,
RMSNorm) generates text greedily through ONNX Runtime: the export agrees with PyTorch token for
token, ratio 0 changes nothing, and the pruned model still generates a valid sequence, the same
one as the masked original it must equal.

Generation runs without a KV cache: each step feeds the whole sequence (the TorchScript export
has a dynamic sequence axis) and takes the argmax of the last position's logits.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxprune
from models import zoo
from onnxprune.pipeline import masked_original
from onnxprune.runtime import run_model

pytestmark = pytest.mark.zoo

PROMPT = [1, 17, 400, 33, 918, 5, 260, 71]
NEW_TOKENS = 8


def greedy(step, prompt=PROMPT, new_tokens=NEW_TOKENS) -> list[int]:
    """Append argmax tokens: ``step(ids)`` returns the logits [1, len(ids), vocab]."""
    ids = list(prompt)
    for _ in range(new_tokens):
        logits = step(np.array([ids], dtype=np.int64))
        ids.append(int(np.argmax(logits[0, -1])))
    return ids


def onnx_step(model: onnx.ModelProto):
    def step(ids):
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        return run_model(model, feeds)["logits"]
    return step


@pytest.fixture(scope="module")
def llama():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return onnx.load(str(zoo.ensure("llama_gqa", "torchscript")))


@pytest.fixture(scope="module")
def vocab():
    return zoo.entry("llama_gqa")["kwargs"]["vocab_size"]


def test_export_generates_what_pytorch_generates(llama):
    import torch

    model = zoo._build_transformer(zoo.entry("llama_gqa")).eval()

    def torch_step(ids):
        with torch.no_grad():
            ids = torch.from_numpy(ids)
            return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()

    expected = greedy(torch_step)
    assert greedy(onnx_step(llama)) == expected
    assert len(set(expected[len(PROMPT):])) > 1, "a degenerate model repeats one token"


def test_ratio_zero_generates_the_same_tokens(llama):
    same, report = onnxprune.prune(llama, ratio=0.0, input_shapes={
        "input_ids": (1, 8), "attention_mask": (1, 8)})
    assert report["check"]["ok"]
    assert greedy(onnx_step(same)) == greedy(onnx_step(llama))


def test_kv_groups_prune_with_their_query_heads(llama):
    """GQA: each key/value head and the 4 query heads that read it form one unit."""
    heads = [g for g in onnxprune.inspect(llama)["groups"] if g["kind"] == "heads"]
    assert len(heads) == 4 and all(g["prunable"] and g["units"] == 2 for g in heads)


def test_pruned_model_generates_a_valid_sequence(llama, vocab):
    pruned, masked = masked_original(llama, ratio=0.0, round_to=1,
                                     by_kind={"heads": 0.5, "mlp": 0.5})
    onnx.checker.check_model(pruned, full_check=True)
    ids = greedy(onnx_step(pruned))
    assert len(ids) == len(PROMPT) + NEW_TOKENS and ids[:len(PROMPT)] == PROMPT
    assert all(0 <= t < vocab for t in ids)
    assert ids == greedy(onnx_step(masked))
    # The pruned model is smaller: half the KV groups (with their query heads) and MLP neurons.
    kept = {n.name: list(n.dims) for n in pruned.graph.initializer}
    before = {n.name: list(n.dims) for n in llama.graph.initializer}
    assert sum(np.prod(d) for d in kept.values()) < 0.8 * sum(np.prod(d) for d in before.values())
