"""onnxruntime-genai folders pruned by onnxprune and by onnxsim 0.8.1, on the same files.

A tiny Llama (2 layers, hidden 64, 4 query heads over 2 key/value heads, MLP 128, vocab 256,
random weights: structure and validity, not task quality) is saved by transformers and
converted by onnxruntime-genai's model builder into ``fp32`` and ``int4`` (MatMulNBits,
block 32) folders, as ``tests/genai_models.py`` does. Each is pruned at ``--ratio`` by

- onnxprune: ``onnxprune.prune(path, ratio=R, round_to=1)``: MLP neurons and query heads,
  the KV cache left as it is; and the same with ``allow_cache_change=True``: key/value groups
  go with their query heads and the cache IO shrinks;
- onnxsim: ``apply_attention_head_pruning`` (heads or KV groups of GroupQueryAttention), then
  ``apply_structured_pruning`` (fp32) or ``apply_structured_pruning_matmul_nbits`` (int4),
  sparsity R each.

Every result is written as a genai folder (``genai_config.json`` from
``onnxprune.pipeline.genai_config_for``, which reads the pruned head counts) and judged by:
the ONNX checker (full, except ops ONNX does not define), one ONNX Runtime run, whether
onnxruntime-genai loads the folder and generates, params and MACs (at a 64-token prompt with
a 64-token past), the head counts and MLP width left, and how many of 32 greedily generated
tokens (4 prompts) agree with the dense model's. Run from the repository root::

    python -m benchmarks.genai_peers [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import tempfile
from pathlib import Path

import onnx

import onnxprune
from benchmarks.common import machine, onnxsim_steps
from onnxprune.io import load_model, save_model
from onnxprune.pipeline import genai_config_for, write_genai_folder
from onnxprune.runtime import count_cost, make_inputs, run_model
from onnxprune.verify import check_model
from tests.genai_models import genai_folder, greedy, tiny_llama

PROMPTS = ([5, 17, 42, 99], [3, 4, 5, 6, 7, 8, 9, 10, 11], [200, 100, 50], [7] * 6)
LENGTH = 40
SHAPES = {"input_ids": (1, 64)}


def judge(folder: Path, dense_tokens: list[list[int]]) -> dict:
    model = load_model(str(folder / "model.onnx"))
    row = {}
    try:
        check_model(model)
        row["checker"] = "pass"
    except Exception as exc:  # noqa: BLE001 - reported
        row["checker"] = f"fails: {str(exc).splitlines()[0][:50]}"
    try:
        run_model(model, make_inputs(model, SHAPES))
        row["ort"] = "runs"
    except Exception as exc:  # noqa: BLE001
        row["ort"] = f"fails: {str(exc).splitlines()[0][:50]}"
    try:
        tokens = [greedy(folder, p, LENGTH) for p in PROMPTS]
        new = [(t[len(p):], d[len(p):]) for t, d, p in zip(tokens, dense_tokens, PROMPTS)]
        agree = sum(a == b for got, want in new for a, b in zip(got, want))
        row["genai"] = f"{agree}/{sum(len(w) for _, w in new)}"
    except Exception as exc:  # noqa: BLE001
        row["genai"] = f"fails: {str(exc).splitlines()[0][:50]}"
    cost = count_cost(model, SHAPES)
    row["params"], row["macs"] = cost.params, cost.macs
    row["shape"] = _shape(model)
    return row


def _shape(model: onnx.ModelProto) -> str:
    """Heads (query/key-value) and MLP width of the first layer."""
    gqa = next(n for n in model.graph.node if n.op_type == "GroupQueryAttention")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gqa.attribute}
    down = next(n for n in model.graph.node if "down_proj" in n.name)
    if down.op_type == "MatMulNBits":
        width = next(a.i for a in down.attribute if a.name == "K")
    else:
        width = next(t.dims[0] for t in model.graph.initializer if t.name == down.input[1])
    return f"{attrs['num_heads']}/{attrs['kv_num_heads']} heads, MLP {width}"


def as_folder(model: onnx.ModelProto, source: Path, out: Path) -> Path:
    """``model`` in a genai folder of its own (config from its head counts, tokenizer)."""
    out.mkdir(parents=True)
    dense = str(source / "model.onnx")
    config = genai_config_for(dense, model, out / "model.onnx")
    save_model(model, out / "model.onnx")
    write_genai_folder(dense, out / "model.onnx", config)
    return out


def onnxsim_prune(model: onnx.ModelProto, precision: str, ratio: float):
    return onnxsim_steps(model, ["apply_attention_head_pruning",
                                 "apply_structured_pruning" if precision == "fp32"
                                 else "apply_structured_pruning_matmul_nbits"], ratio)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args(argv)
    print(machine())
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}"
                         for p in ("onnxruntime-genai", "onnxsim"))
    print(f"Command: `python -m benchmarks.genai_peers --ratio {args.ratio:g}`; {versions}")
    print("| file | tool | checker | ORT | genai generates (tokens = dense) | params | MACs "
          "| left |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hf = tiny_llama(root / "hf")
        for precision in ("fp32", "int4"):
            dense = genai_folder(hf, root / precision, precision)
            dense_tokens = [greedy(dense, p, LENGTH) for p in PROMPTS]
            whole = onnx.load(str(dense / "model.onnx"))    # before onnxprune maps its data
            results = {"dense": dense}
            for tool, cache in (("onnxprune", False), ("onnxprune, cache change", True)):
                pruned, _ = onnxprune.prune(str(dense / "model.onnx"), ratio=args.ratio,
                                            round_to=1, allow_cache_change=cache)
                results[tool] = as_folder(pruned, dense, root / f"{precision}_{cache}")
            theirs = onnxsim_prune(whole, precision, args.ratio)
            results["onnxsim"] = theirs if isinstance(theirs, str) else as_folder(
                theirs, dense, root / f"{precision}_onnxsim")
            for tool, folder in results.items():
                if isinstance(folder, str):
                    print(f"| {precision} | {tool} | — | — | — | — | — | {folder} |")
                    continue
                r = judge(folder, dense_tokens)
                print(f"| {precision} | {tool} | {r['checker']} | {r['ort']} | {r['genai']} | "
                      f"{r['params'] / 1e3:.1f}k | {r['macs'] / 1e6:.2f}M | {r['shape']} |")


if __name__ == "__main__":
    main()
