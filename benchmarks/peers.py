"""onnxprune side by side with peer pruners (Torch-Pruning, onnxsim) on the same torchvision
architectures at the same ratio of channels: does each tool produce a model, is that model valid
ONNX that runs on ONNX Runtime, and what params, MACs and ORT CPU latency does it end up with.

Every model is a torchvision model with random weights (seed 0), 224×224, batch 1; fidelity is not
measured (random weights). The three tools:

- onnxprune: the dense TorchScript export (``benchmarks.common.torchvision_at``) pruned by
  ``onnxprune.prune(path, ratio=R)`` (default strategy: group L2, uniform, round_to 16; ViT also
  ``heads=R, mlp=R``), which verifies the result against the masked original.
- Torch-Pruning: the PyTorch model pruned by ``MetaPruner`` (``MagnitudePruner`` is its alias) with
  L2 ``MagnitudeImportance``, ``pruning_ratio=R``, local (not global) pruning, the final 1000-way
  classifier ignored; for torchvision's ViT as in Torch-Pruning's torchvision example
  (``round_to`` = number of heads, ``hidden_dim`` set after pruning): its pruner for
  ``nn.MultiheadAttention`` narrows the embedding width (heads keep their number, each gets
  narrower) together with the whole residual stream, and prunes the MLP neurons. Then exported with
  the same settings as the dense model (TorchScript exporter, opset 17).
- onnxsim: ``onnxsim.apply_structured_pruning(dense, sparsity=R)`` (L2, not global) on the dense
  ONNX, where the installed onnxsim has that API.

Each result is checked with ``onnx.checker.check_model(full_check=True)`` and one ORT CPU run
(outputs must have the dense model's shapes), costed with ``onnxprune.verify.count_cost`` and timed
with ``onnxprune.runtime.measure_latency`` (ORT CPU, optimizations ALL, ``--threads``
intra-op threads, 2 s of timed runs). The timing takes ``--turns`` passes through the dense and
pruned models of an architecture, so load from other processes falls on all of them; the median
reported is the least disturbed turn's, the min the fastest run of any turn. Run from the
repository root::

    python -m benchmarks.peers [--models resnet50 mobilenet_v2 vit_b_16] [--ratio 0.5]
        [--threads 1] [--turns 3]

Needs the ``peers`` extra (``pip install -e ".[peers]"``) and torch/torchvision.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx

import onnxprune
from benchmarks.common import machine, turns_note, torchvision_at, torchvision_module
from onnxprune.pipeline import DEFAULT_ROUND_TO
from onnxprune.runtime import count_cost
from onnxprune.runtime import make_inputs
from onnxprune.runtime import Timing, latency_session, measure_latency

MODELS = ["resnet50", "mobilenet_v2", "vit_b_16"]
TOOLS = ["onnxprune", "Torch-Pruning", "onnxsim"]
SIZE = 224
BUDGET_S = 2.0
NUM_CLASSES = 1000   # torchvision's ImageNet heads: the classifier every tool leaves alone
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Result:
    tool: str
    model: str
    produced: bool = False
    verified: bool | None = None        # onnxprune's own verification; None for the others
    checker: bool | None = None
    runs: bool | None = None
    params: int | None = None
    macs: int | None = None
    resized: str = "n/a"                # weights of Conv/Gemm/MatMul nodes that shrank
    prune_s: float | None = None
    timing: object = None               # summary Timing over the turns (see bench_model)
    turns: list = field(default_factory=list)   # one measure_latency Timing per turn
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return bool(self.produced and self.checker and self.runs and self.verified is not False)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit] + "…"


# --- validity -------------------------------------------------------------------------------------

def check(result: Result, model: onnx.ModelProto, feeds: dict, shapes: list[tuple]) -> None:
    """The full checker, then one ORT CPU run whose outputs must have the dense model's shapes."""
    try:
        onnx.checker.check_model(model, full_check=True)
        result.checker = True
    except Exception as exc:  # noqa: BLE001 -- any failure is a finding, not a crash
        result.checker = False
        result.notes.append(f"checker: {short(exc)}")
    try:
        outputs = latency_session(model, 1).run(None, feeds)
        got = [tuple(o.shape) for o in outputs]
        result.runs = got == shapes and all(np.isfinite(o).all() for o in outputs)
        if not result.runs:
            result.notes.append(f"ORT outputs {got} (dense {shapes}) or not finite")
    except Exception as exc:  # noqa: BLE001
        result.runs = False
        result.notes.append(f"ORT run: {short(exc)}")


def weight_shapes(model: onnx.ModelProto) -> list[tuple[int, ...] | None]:
    """Shape of the constant weight (input 1) of every Conv/Gemm/MatMul, in graph order."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    inits[n.output[0]] = tuple(a.t.dims)
    return [inits.get(n.input[1]) for n in model.graph.node
            if n.op_type in LINEAR_OPS and len(n.input) > 1]


def resized(dense: onnx.ModelProto, pruned: onnx.ModelProto) -> str:
    """'k/n': of the n constant Conv/Gemm/MatMul weights of the dense model, k got smaller. The
    layers are paired in graph order (all three tools keep the dense model's node order)."""
    before, after = weight_shapes(dense), weight_shapes(pruned)
    if len(before) != len(after):
        return "n/a"
    pairs = [(b, a) for b, a in zip(before, after) if b is not None]
    if any(a is None for _, a in pairs):
        return "n/a"
    smaller = sum(int(np.prod(a)) < int(np.prod(b)) for b, a in pairs)
    return f"{smaller}/{len(pairs)}"


# --- the tools ------------------------------------------------------------------------------------

def run_onnxprune(name: str, path: str, ratio: float, result: Result) -> onnx.ModelProto | None:
    kinds = {"heads": ratio, "mlp": ratio} if name.startswith("vit") else {}
    try:
        pruned, report = onnxprune.prune(path, ratio=ratio, **kinds)
    except onnxprune.OnnxPruneError as exc:   # VerificationError included: nothing returned
        result.verified = False
        result.notes.append(f"prune: {short(exc)}")
        return None
    result.verified = bool(report["check"]["ok"])
    kinds_seen: dict[str, list[int]] = {}
    for g in report["groups"]:
        if g["prunable"]:
            units, kept = kinds_seen.setdefault(g["kind"], [0, 0]), len(g["kept"])
            units[0] += g["units"]
            units[1] += kept
    kept_cell = ", ".join(f"{k} {kept}/{units}" for k, (units, kept) in sorted(kinds_seen.items()))
    result.notes.append(f"kept units by kind: {kept_cell}; max rel error vs masked original "
                        f"{report['check']['max_rel_error']:.1e}")
    if kinds and "heads" not in kinds_seen:
        result.notes.append("no prunable head groups: heads=R removed nothing")
    blocked = [g for g in report["groups"] if not g["prunable"]]
    if blocked:
        result.notes.append(f"{len(blocked)} of {len(report['groups'])} groups not prunable, "
                            f"e.g. {blocked[0]['kind']} group of {blocked[0]['units']} units: "
                            f"{blocked[0].get('reason')}")
    return pruned


def torch_model(name: str):
    """The same module ``torchvision_at`` exports: seed 0, random weights, eval mode."""
    return torchvision_module(name)


def export_like_zoo(model, path: str) -> None:
    """The exporter settings of ``benchmarks.common.torchvision_at``."""
    import torch

    torch.onnx.export(model, (torch.randn(1, 3, SIZE, SIZE),), path, dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["output"])


def run_torch_pruning(name: str, ratio: float, workdir: str,
                      result: Result) -> onnx.ModelProto | None:
    try:
        import torch
        import torch_pruning as tp
        from torchvision.models.vision_transformer import VisionTransformer
    except ImportError as exc:
        result.notes.append(f"skipped: {short(exc)} (pip install -e \".[peers]\")")
        return None
    model = torch_model(name)
    example = torch.randn(1, 3, SIZE, SIZE)
    ignored = [m for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m.out_features == NUM_CLASSES]
    vit = isinstance(model, VisionTransformer)
    round_to = model.encoder.layers[0].num_heads if vit else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # ViT: class_token/pos_embedding are unwrapped params
            pruner = tp.pruner.MetaPruner(
                model, example, importance=tp.importance.MagnitudeImportance(p=2),
                pruning_ratio=ratio, global_pruning=False, ignored_layers=ignored,
                round_to=round_to)
            pruner.step()
        if vit:   # torchvision's forward reads hidden_dim; Torch-Pruning's example resets it
            model.hidden_dim = model.conv_proj.out_channels
            block = model.encoder.layers[0]
            result.notes.append(
                f"ViT pruned Torch-Pruning's way: hidden width {model.hidden_dim}/768 (every "
                f"LayerNorm narrower), heads {block.self_attention.num_heads}/12 per layer of "
                f"width {block.self_attention.head_dim}, MLP {block.mlp[0].out_features}/3072 "
                f"per layer (round_to={round_to})")
        with torch.no_grad():
            model(example)
    except Exception as exc:  # noqa: BLE001
        result.notes.append(f"prune: {short(exc)}")
        return None
    path = os.path.join(workdir, f"{name}.torch_pruning.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_like_zoo(model, path)
    except Exception as exc:  # noqa: BLE001
        result.notes.append(f"export: {short(exc)}")
        return None
    return onnx.load(path)


def onnxsim_missing() -> str | None:
    """Why onnxsim's structured pruning cannot run here, or None when it can."""
    try:
        import onnxsim
    except ImportError as exc:
        return f"skipped: {short(exc)} (pip install -e \".[peers]\")"
    if not callable(getattr(onnxsim, "apply_structured_pruning", None)):
        pruning = sorted(a for a in dir(onnxsim) if "prun" in a.lower())
        return (f"not available in onnxsim {version('onnxsim')} (no such API): "
                f"hasattr(onnxsim, 'apply_structured_pruning') is False; pruning-related names: "
                f"{', '.join(pruning) or 'none'}")
    return None


def run_onnxsim(path: str, ratio: float, result: Result) -> onnx.ModelProto | None:
    missing = onnxsim_missing()
    if missing:
        result.notes.append(missing)
        return None
    import onnxsim

    try:
        return onnxsim.apply_structured_pruning(onnx.load(path), sparsity=ratio,
                                                importance_norm="l2", global_sparsity=False)
    except Exception as exc:  # noqa: BLE001
        result.notes.append(f"apply_structured_pruning: {short(exc)}")
        return None


# --- the benchmark --------------------------------------------------------------------------------

def bench_model(name: str, ratio: float, threads: int, turns: int,
                workdir: str) -> tuple[Result, list[Result]]:
    path = torchvision_at(name, SIZE)
    dense_model = onnx.load(path)
    feeds = make_inputs(dense_model, None, seed=0)
    dense = Result("dense", name, produced=True)
    dense_cost = count_cost(dense_model)
    dense.params, dense.macs = dense_cost.params, dense_cost.macs
    shapes = [tuple(o.shape) for o in latency_session(dense_model, 1).run(None, feeds)]
    check(dense, dense_model, feeds, shapes)

    pruned: list[tuple[Result, onnx.ModelProto | None]] = []
    for tool in TOOLS:
        result = Result(tool, name)
        start = time.perf_counter()
        if tool == "onnxprune":
            model = run_onnxprune(name, path, ratio, result)
        elif tool == "Torch-Pruning":
            model = run_torch_pruning(name, ratio, workdir, result)
        else:
            model = run_onnxsim(path, ratio, result)
        result.prune_s = time.perf_counter() - start
        result.produced = model is not None
        if model is not None:
            check(result, model, feeds, shapes)
            cost = count_cost(model)
            result.params, result.macs = cost.params, cost.macs
            result.resized = resized(dense_model, model)
            if result.params == dense.params:
                result.notes.append("nothing removed (params unchanged)")
        print(f"  {name} / {tool}: produced {result.produced}, valid {result.valid} "
              f"({result.prune_s:.1f} s)", flush=True)
        pruned.append((result, model))

    # Time after all pruning is done: `turns` passes through the dense model and every pruned
    # model that runs, so load from other processes on a shared machine falls on all of them.
    timed = [(dense, dense_model)] + [(r, m) for r, m in pruned if m is not None and r.runs]
    for _ in range(turns):
        for result, model in timed:
            if result.timing is False:
                continue
            try:
                result.turns.append(measure_latency(model, feeds, threads=threads,
                                                    budget_s=BUDGET_S))
            except Exception as exc:  # noqa: BLE001
                result.notes.append(f"latency: {short(exc)}")
                result.timing = False
    for result, _ in timed:
        if result.turns:   # the least disturbed turn's median; the fastest run of all turns
            best = min(result.turns, key=lambda t: t.median)
            result.timing = Timing(median=best.median, p90=best.p90,
                                   min=min(t.min for t in result.turns),
                                   runs=sum(t.runs for t in result.turns))
        elif result.timing is False:
            result.timing = None
    del dense_model
    return dense, [r for r, _ in pruned]


def yes_no(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "**no**")


def fmt_count(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.2f}M"


def row(r: Result, dense: Result) -> str:
    params = (f"{fmt_count(r.params)} ({r.params / dense.params:.0%})"
              if r.params is not None else "n/a")
    macs = (f"{fmt_count(r.macs)} ({r.macs / dense.macs:.0%})"
            if r.macs is not None and dense.macs else "n/a")
    if r.timing is not None:
        ms = f"{r.timing.median * 1e3:.1f} / {r.timing.min * 1e3:.1f}"
        medians = [t.median * 1e3 for t in r.turns]
        spread = f"{min(medians):.1f}–{max(medians):.1f}"
        speedup = (f"{dense.timing.median / r.timing.median:.2f}×"
                   if dense.timing is not None else "n/a")
    else:
        ms = spread = speedup = "n/a"
    mac_ratio = (f"{dense.macs / r.macs:.2f}×" if r.macs and dense.macs else "n/a")
    produced = "yes" if r.tool == "dense" else yes_no(r.produced)
    prune_s = f"{r.prune_s:.1f}" if r.prune_s is not None and r.tool != "dense" else "—"
    return (f"| {r.model} | {r.tool} | {produced} | {yes_no(r.verified)} | {yes_no(r.checker)} "
            f"| {yes_no(r.runs)} | {params} | {macs} | {r.resized if r.tool != 'dense' else '—'} "
            f"| {ms} | {spread} | {speedup} | {mac_ratio} | {prune_s} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--ratio", type=float, default=0.5,
                        help="fraction of channels each tool removes")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--turns", type=int, default=3,
                        help="timing passes through all models of an architecture")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if not 0.0 < args.ratio < 1.0:
        parser.error("--ratio must be in (0, 1)")
    if args.turns < 1 or args.threads < 1:
        parser.error("--turns and --threads must be at least 1")

    versions = ", ".join(f"{d} {version(d)}" for d in
                         ("onnxprune", "torch", "torchvision", "torch-pruning", "onnxsim"))
    print(machine())
    print(f"Command: `{' '.join(['python -m benchmarks.peers', *argv])}`")
    print(f"Versions: {versions}")
    print(f"torchvision models, random weights (seed 0), {SIZE}×{SIZE}, batch 1; ratio "
          f"{args.ratio} for every tool (onnxprune default strategy, round_to "
          f"{DEFAULT_ROUND_TO}; ViT heads={args.ratio}, mlp={args.ratio}). "
          + turns_note(args.threads, args.turns, BUDGET_S))
    print(flush=True)

    rows, notes = [], []
    valid = {tool: 0 for tool in TOOLS}
    with tempfile.TemporaryDirectory(prefix="onnxprune-peers-") as workdir:
        for name in args.models:
            dense, results = bench_model(name, args.ratio, args.threads, args.turns, workdir)
            rows.append(row(dense, dense))
            for r in results:
                rows.append(row(r, dense))
                valid[r.tool] += r.valid
                notes.extend(f"{name} / {r.tool}: {note}" for note in r.notes)

    print()
    print("| model | tool | produced | verified | checker (full) | runs on ORT | params (kept) "
          "| MACs (kept) | weights resized | ms median / min | turn medians | speedup "
          "| MAC ratio (dense/pruned) | prune s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("verified: onnxprune's own check (pruned vs masked original on ORT; — = the tool has "
          "none). weights resized: constant Conv/Gemm/MatMul weights that shrank, of all. "
          f"ms median: the lowest of the {args.turns} turns' medians (the least disturbed "
          "turn); min: the fastest run of all turns; turn medians: their range. speedup: dense "
          "median / pruned median.")
    if notes:
        print()
        print("\n".join(f"- {n}" for n in notes))
    print()
    m = len(args.models)
    print("valid models: " + ", ".join(f"{tool} {valid[tool]}/{m}" for tool in TOOLS))


if __name__ == "__main__":
    main()
