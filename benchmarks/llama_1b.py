"""A real-size decoder (issue 18, scale up): a Llama-style model of about 1.1 billion
parameters with grouped-query attention, pruned by ``onnxprune prune --heads 0.25 --mlp 0.25``
as a user would, with its wall time and peak resident memory against the model's size.

The model: 16 layers, hidden 2048, 32 query heads sharing 8 key/value heads (head_dim 64),
SwiGLU MLP 8192, RMSNorm, RoPE, vocabulary 32000 (untied), random seeded weights from a
``transformers`` ``LlamaConfig`` (no hub download). It is exported once by ``torch.onnx``'s
TorchScript exporter (opset 17, dynamic batch and sequence, no KV cache) into ``--dir``, its
weights in one external data file, and reused after. Each prune runs in a child process
(``ru_maxrss`` of the child: memory-mapped weight pages count too); its report gives the time
of each stage. Run from the repository root (needs the dev extras; the export takes several
minutes and about 15 GB of memory once)::

    python -m benchmarks.llama_1b [--dir ~/.cache/onnxprune/llama_1b] [--criteria l2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import machine

CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
              num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
              tie_word_embeddings=False, use_cache=False)
SEQUENCE = 16


def export(folder: Path) -> Path:
    """The ONNX file (weights in ``model.onnx.data``), exported once."""
    path = folder / "model.onnx"
    if path.exists():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    ids = torch.randint(0, CONFIG["vocab_size"], (1, SEQUENCE))
    mask = torch.ones_like(ids)
    raw = folder / "raw.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (ids, mask), str(raw), input_names=["input_ids",
                          "attention_mask"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"},
                                        "logits": {0: "batch", 1: "sequence"}},
                          dynamo=False)
    del model
    import onnx

    proto = onnx.load(str(raw))       # the exporter's many weight files, gathered into one
    onnx.save_model(proto, str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data")
    for p in folder.iterdir():
        if p.name not in ("model.onnx", "model.onnx.data"):
            p.unlink()
    return path


def run_prune(path: Path, out: Path, args: list[str]) -> tuple[int, float, float, dict | None,
                                                                str]:
    report = out.with_suffix(".json")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(path), "-o",
                            str(out), "--report", str(report)] + args,
                           capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if peak <= before * 1024:
        peak = float("nan")       # ru_maxrss of children is a maximum over all of them
    text = (child.stdout + child.stderr).strip().splitlines()
    data = json.loads(report.read_text()) if report.exists() else None
    return child.returncode, wall, peak, data, text[-1] if text else ""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=str(Path.home() / ".cache" / "onnxprune" / "llama_1b"))
    parser.add_argument("--criteria", nargs="+", default=["l2"])
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    start = time.perf_counter()
    path = export(folder)
    made = time.perf_counter() - start
    size = sum(p.stat().st_size for p in (path, folder / "model.onnx.data"))
    print(machine())
    print(f"Command: `python -m benchmarks.llama_1b --criteria {' '.join(args.criteria)}`")
    print(f"model: {size / 2**30:.2f} GiB with its external data ({made:.0f} s to make here)")
    for criterion in args.criteria:
        out = folder / f"pruned_{criterion}.onnx"
        extra = ["--heads", "0.25", "--mlp", "0.25", "--criterion", criterion]
        code, wall, peak, report, last = run_prune(path, out, extra)
        print(f"{criterion}: exit {code}; {wall:.0f} s; peak resident {peak / 2**30:.2f} GiB = "
              f"{peak / size:.2f}× the model; {last}")
        if report:
            print("  stages: " + ", ".join(f"{s['step']} {s['seconds']:.1f} s"
                                           for s in report.get("stages", [])))
            print("  check: " + json.dumps(report.get("check", {}))[:300])
        for p in folder.glob(f"pruned_{criterion}.onnx*"):
            p.unlink()


if __name__ == "__main__":
    main()
