"""A real-size decoder (issue 18, scale up): a Llama-style model of about 1.1 billion
parameters with grouped-query attention, pruned by ``onnxprune prune --heads 0.25 --mlp 0.25``
as a user would (``l2``; ``wanda``, ``obs`` with OBS compensation, and ``wanda`` with OBS
compensation, on 64 calibration sequences of 128 random tokens), with its wall time and peak
resident memory against the model's size, and its logits against the dense model's on 8
held-out sequences.

The model: 16 layers, hidden 2048, 32 query heads sharing 8 key/value heads (head_dim 64),
SwiGLU MLP 8192, RMSNorm, RoPE, vocabulary 32000 (untied), random seeded weights from a
``transformers`` ``LlamaConfig`` (no hub download). It is exported once by ``torch.onnx``'s
TorchScript exporter (opset 17, dynamic batch and sequence, no KV cache) into ``--dir``, its
weights in one external data file, and reused after; ``--forms genai`` also converts the same
weights with onnxruntime-genai's model builder (GroupQueryAttention, KV cache) and prunes that
folder (random calibration: its inputs include the cache), checking that onnxruntime-genai
generates from the result. Each prune runs in a child process (its own ``ru_maxrss``, from
``wait4``: memory-mapped weight pages count too); its report gives the time of each stage.
The disk is synced before each prune starts, so that none waits on what an earlier one wrote.
Run from the repository root (needs the dev extras; the export takes about a minute and 6 GB
of memory, once)::

    python -m benchmarks.llama_1b [--dir ~/.cache/onnxprune/llama_1b]
        [--criteria l2 wanda obs wanda-obs] [--forms plain genai]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine

CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
              num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
              tie_word_embeddings=False, use_cache=False)
SEQUENCE = 16
CALIBRATION = dict(samples=64, tokens=128)     # wanda's and obs's calibration sequences
HELD_OUT = 8      # sequences every pruned model is compared on (not timed)
RUNS = {          # the flags of each measured prune besides --heads 0.25 --mlp 0.25
    "l2": ["--criterion", "l2"],
    "wanda": ["--criterion", "wanda", "--calib", "{calib}"],
    "obs": ["--criterion", "obs", "--compensate", "obs", "--calib", "{calib}"],
    "wanda-obs": ["--criterion", "wanda", "--compensate", "obs", "--calib", "{calib}"],
}


def token_file(folder: Path, samples: int, seed: int, tag: str) -> Path:
    """``samples`` sequences of ``CALIBRATION['tokens']`` random token ids (the weights are
    random, so no text is more natural to it), all attended to, as an .npz; the exporter made
    ``logits_to_keep`` a scalar input: 0, every position's logits."""
    import numpy as np

    path = folder / f"{tag}_{samples}x{CALIBRATION['tokens']}.npz"
    if not path.exists():
        rng = np.random.default_rng(seed)
        shape = (samples, CALIBRATION["tokens"])
        np.savez(path, input_ids=rng.integers(0, CONFIG["vocab_size"], shape, dtype=np.int64),
                 attention_mask=np.ones(shape, np.int64), logits_to_keep=np.array(0))
    return path


def held_out_cosine(dense: Path, pruned: Path, data: Path) -> str:
    """The pruned model's logits against the dense model's on sequences no prune saw
    (``onnxprune compare``), so that the criteria are compared on the same inputs."""
    child = subprocess.run([sys.executable, "-m", "onnxprune.cli", "compare", str(dense),
                            str(pruned), "--data", str(data), "--json"],
                           capture_output=True, text=True)
    if child.returncode:
        return f"compare failed: {(child.stdout + child.stderr).strip()[-200:]}"
    out = json.loads(child.stdout)["outputs"][0]
    return (f"held-out {json.loads(child.stdout)['samples']} sequences: logits cosine "
            f"{out['cosine_mean']:.4f} (min {out['cosine_min']:.4f})")


def calibration(folder: Path) -> Path:
    """The calibration sequences ``wanda`` and ``obs`` read."""
    return token_file(folder, CALIBRATION["samples"], 0, "calib")


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
        if p.is_file() and p.name not in ("model.onnx", "model.onnx.data") and \
                p.suffix != ".npz":
            p.unlink()
    return path


def genai_export(folder: Path) -> Path:
    """The same model (the same seed, so the same weights) in the form onnxruntime-genai
    deploys: saved by ``transformers`` with a character tokenizer, then converted by
    onnxruntime-genai's model builder (fp32, CPU: GroupQueryAttention with a KV cache,
    SimplifiedLayerNormalization) into ``genai/``; made once."""
    path = folder / "genai" / "model.onnx"
    if path.exists():
        return path
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.genai_models import character_tokenizer

    hf, cache = folder / "hf", folder / "builder_cache"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    model.save_pretrained(hf)
    del model
    character_tokenizer(hf)
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf),
                    "-o", str(path.parent), "-p", "fp32", "-e", "cpu", "-c", str(cache)],
                   check=True, capture_output=True)
    shutil.rmtree(hf)
    shutil.rmtree(cache, ignore_errors=True)
    return path


def generates(folder: Path, tokens: int = 16) -> str:
    """Greedy generation by onnxruntime-genai from a model folder, in a child process: that
    the folder is one it loads and runs, as deployed."""
    code = ("import sys, numpy as np, onnxruntime_genai as og\n"
            "m = og.Model(sys.argv[1]); p = og.GeneratorParams(m)\n"
            f"p.set_search_options(max_length={tokens + 4}, do_sample=False)\n"
            "g = og.Generator(m, p); g.append_tokens(np.array([[1, 40, 41, 42]], np.int32))\n"
            "while not g.is_done(): g.generate_next_token()\n"
            "print(len(g.get_sequence(0)) - 4)\n")
    child = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                           text=True)
    if child.returncode:
        return f"onnxruntime-genai failed: {(child.stdout + child.stderr).strip()[-200:]}"
    return f"onnxruntime-genai loads the pruned folder and generates {child.stdout.strip()} tokens"


def run_prune(path: Path, out: Path, args: list[str]) -> tuple[int, float, float, dict | None,
                                                                str]:
    """Exit code, wall seconds, peak resident bytes of this child alone (``wait4``), the
    report, and the last line it printed."""
    report = out.with_suffix(".json")
    os.sync()     # no prune waits on what an earlier one (or the export) left to write back
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen([sys.executable, "-m", "onnxprune.cli", "prune", str(path),
                                  "-o", str(out), "--report", str(report)] + args,
                                 stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        log.seek(0)
        text = log.read().strip().splitlines()
    data = json.loads(report.read_text()) if report.exists() else None
    return child.returncode, wall, usage.ru_maxrss * 1024, data, text[-1] if text else ""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=str(Path.home() / ".cache" / "onnxprune" / "llama_1b"))
    parser.add_argument("--criteria", nargs="+", default=["l2"], choices=sorted(RUNS))
    parser.add_argument("--forms", nargs="+", default=["plain"], choices=["plain", "genai"])
    parser.add_argument("--make", choices=["plain", "genai"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    if args.make:       # in a child: torch's memory must not be the parent's (see below)
        (export if args.make == "plain" else genai_export)(folder)
        return
    print(machine())
    print(f"Command: `python -m benchmarks.llama_1b --criteria {' '.join(args.criteria)} "
          f"--forms {' '.join(args.forms)}`")
    for form in args.forms:
        start = time.perf_counter()
        path = folder / "model.onnx" if form == "plain" else folder / "genai" / "model.onnx"
        if not path.exists():   # a child whose memory the prunes' children do not inherit
            subprocess.run([sys.executable, "-m", "benchmarks.llama_1b", "--dir", str(folder),
                            "--make", form], check=True)
        made = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (path, path.with_name(path.name + ".data"))
                   if p.exists())
        print(f"{form}: {path}: {size / 2**30:.2f} GiB with its external data ({made:.0f} s "
              f"to make here)")
        for criterion in args.criteria:
            if form == "plain":
                out = folder / f"pruned_{criterion}.onnx"
                calib = calibration(folder)
            else:
                out = folder / f"pruned_genai_{criterion}" / "model.onnx"
                out.parent.mkdir(exist_ok=True)
                calib = "random"
            extra = ["--heads", "0.25", "--mlp", "0.25"] + [
                flag.format(calib=calib) for flag in RUNS[criterion]]
            code, wall, peak, report, last = run_prune(path, out, extra)
            print(f"  {criterion}: exit {code}; {wall:.0f} s; peak resident "
                  f"{peak / 2**30:.2f} GiB = {peak / size:.2f}× the model; {last}")
            if report:
                print("    stages: " + ", ".join(f"{s['step']} {s['seconds']:.1f} s"
                                                 for s in report.get("stages", [])))
                print("    check: " + json.dumps(report.get("check", {}))[:300])
                fidelity = report.get("fidelity") or {}
                for o in fidelity.get("outputs", [])[:1]:
                    print(f"    fidelity ({fidelity['samples']} samples of "
                          f"{fidelity['inputs']}): {o['name']} cosine {o['cosine_mean']:.4f}")
                print("    " + (held_out_cosine(path, out, token_file(folder, HELD_OUT, 1,
                                                                      "held"))
                                if form == "plain" else generates(out.parent)))
            _remove(out)


def _remove(out: Path) -> None:
    import shutil

    if out.parent.name.startswith("pruned_genai"):
        shutil.rmtree(out.parent, ignore_errors=True)
    for p in out.parent.glob(out.name + "*"):
        p.unlink()


if __name__ == "__main__":
    main()
