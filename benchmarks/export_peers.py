"""TensorFlow, JAX and Optimum exports pruned by onnxprune and by onnxsim 0.8.1, on the same
files: the committed fixtures of ``tests/test_tf_exports.py`` and ``tests/test_cache.py``
(Keras via tf2onnx, pure JAX via jax2tf and tf2onnx, a tiny Llama via optimum-onnx's
``text-generation-with-past``; random weights, so the outputs measure how far a pruned model
moved, not a task).

- onnxprune: ``onnxprune.prune(path, ratio=R, round_to=1)``; the Optimum model also with
  ``allow_cache_change=True`` (key/value heads go, the cache IO shrinks).
- onnxsim: ``apply_attention_head_pruning`` then ``apply_structured_pruning``, sparsity R
  each (the functions its docs name for attention heads and for MatMul/Gemm/Conv channels).

Judged by: the ONNX checker (full), one ONNX Runtime run at batch 3 (the Optimum model: a
decode step with a past of 3, and whether that step equals running the 4 tokens at once),
params and MACs kept, and the mean cosine of the outputs to the unpruned model's on 3 random
inputs. Run from the repository root::

    python -m benchmarks.export_peers [--ratio 0.5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx

import onnxprune
from benchmarks.common import machine, onnxsim_steps
from onnxprune.runtime import count_cost, run_model

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
FILES = {"Keras CNN (tf2onnx)": "tf2onnx_keras_cnn.onnx",
         "Keras transformer (tf2onnx)": "tf2onnx_keras_transformer.onnx",
         "JAX CNN (jax2tf + tf2onnx)": "jax2tf_cnn.onnx",
         "JAX transformer (jax2tf + tf2onnx)": "jax2tf_transformer.onnx",
         "Llama with KV cache (optimum-cli)": "optimum_tiny_llama.onnx"}


def _decode_feeds(ids, past=None, kv_heads=2):
    past_len = 0 if past is None else past["present.0.key"].shape[2]
    feeds = {"input_ids": ids,
             "attention_mask": np.ones((1, past_len + ids.shape[1]), np.int64),
             "position_ids": np.arange(past_len, past_len + ids.shape[1])[None]}
    for name in (f"{layer}.{kv}" for layer in range(2) for kv in ("key", "value")):
        feeds[f"past_key_values.{name}"] = (np.zeros((1, kv_heads, 0, 8), np.float32)
                                            if past is None else past[f"present.{name}"])
    return feeds


def _kv_heads(model) -> int:
    dims = next(i for i in model.graph.input if i.name == "past_key_values.0.key")
    return dims.type.tensor_type.shape.dim[1].dim_value


def outputs(model, llama: bool, seed: int) -> tuple[np.ndarray, str]:
    """The first output on one random input (batch 3), and for the Llama whether a decode
    step with its cache equals the whole sequence at once."""
    rng = np.random.default_rng(seed)
    if not llama:
        dims = [d.dim_value or 3 for d in model.graph.input[0].type.tensor_type.shape.dim]
        feeds = {model.graph.input[0].name: rng.random(dims, dtype=np.float32)}
        return next(iter(run_model(model, feeds).values())), ""
    ids, heads = rng.integers(0, 128, (1, 4)), _kv_heads(model)
    whole = run_model(model, _decode_feeds(ids, kv_heads=heads))
    first = run_model(model, _decode_feeds(ids[:, :3], kv_heads=heads))
    step = run_model(model, _decode_feeds(ids[:, 3:], first, heads))
    same = np.allclose(step["logits"][0, -1], whole["logits"][0, -1], atol=1e-5)
    return whole["logits"], "cache step = whole" if same else "cache step differs"


def judge(model, dense, llama: bool) -> dict:
    row = {}
    try:
        onnx.checker.check_model(model, full_check=True)
        row["checker"] = "pass"
    except Exception as exc:  # noqa: BLE001 - reported
        row["checker"] = f"fails: {str(exc).splitlines()[0][:50]}"
    cosines, note = [], ""
    try:
        for seed in range(3):
            got, note = outputs(model, llama, seed)
            want, _ = outputs(dense, llama, seed)
            got, want = got.reshape(-1), want.reshape(-1)
            cosines.append(float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))))
        row["ort"] = "runs" + (f"; {note}" if note else "")
        row["cosine"] = f"{np.mean(cosines):.4f}"
    except Exception as exc:  # noqa: BLE001 - reported
        row["ort"] = f"fails: {str(exc).splitlines()[0][:60]}"
        row["cosine"] = "-"
    shapes = None if llama else {model.graph.input[0].name: tuple(
        d.dim_value or 3 for d in model.graph.input[0].type.tensor_type.shape.dim)}
    before, after = count_cost(dense, shapes), count_cost(model, shapes)
    row["params"] = f"{after.params / before.params:.1%}"
    row["macs"] = (f"{after.macs / before.macs:.1%}" if before.macs and after.macs is not None
                   else "-")
    return row


def _pruned_what(report) -> str:
    counts: dict[str, int] = {}
    for g in report["groups"]:
        if g["removed"]:
            counts[g["kind"]] = counts.get(g["kind"], 0) + len(g["removed"])
    return ", ".join(f"{k} −{v}" for k, v in counts.items()) or "nothing"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args(argv)
    print(machine())
    print(f"Command: `python -m benchmarks.export_peers --ratio {args.ratio}`")
    print("| file | pruner | pruned | checker | ONNX Runtime | params kept | MACs kept | "
          "output cosine |")
    print("|---|---|---|---|---|---|---|---|")
    for title, name in FILES.items():
        dense = onnx.load(str(FIXTURES / name))
        llama = name.startswith("optimum")
        runs = [("onnxprune", {})] + ([("onnxprune --allow-cache-change",
                                        {"allow_cache_change": True})] if llama else [])
        results = []
        for who, extra in runs:
            pruned, report = onnxprune.prune(dense, ratio=args.ratio, round_to=1, **extra)
            results.append((who, _pruned_what(report), pruned))
        theirs = onnxsim_steps(dense, ("apply_attention_head_pruning",
                                       "apply_structured_pruning"), args.ratio)
        results.append(("onnxsim", "-", theirs))
        for who, what, model in results:
            if isinstance(model, str):
                print(f"| {title} | {who} | {model} | - | - | - | - | - |")
                continue
            row = judge(model, dense, llama)
            print(f"| {title} | {who} | {what} | {row['checker']} | {row['ort']} | "
                  f"{row['params']} | {row['macs']} | {row['cosine']} |", flush=True)


if __name__ == "__main__":
    main()
