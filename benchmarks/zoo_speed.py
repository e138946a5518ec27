"""Measured ORT CPU speed of pruned torchvision models at 224×224: what each ratio and
``round_to`` buys in wall time, and how much of the MACs saved turns into speed.

For each torchvision model (random weights, seed 0, ``benchmarks.common.torchvision_at(name,
224, exporter)``; Inception v3 at 299), each ``--round-to`` value and each ratio, the dense
export is pruned with ``onnxprune.prune(path, ratio=R, round_to=N)`` (verified against the
masked original; ViT and Swin also ``heads=R, mlp=R``); one analysis of the dense model is reused for all of them, as ``onnxprune
sweep`` does. Then the dense model and every pruned model of that architecture are timed on the
ORT CPU EP (``onnxprune.runtime.measure_latency``: optimizations ALL, ``--threads``
intra-op threads, 5 warm-up runs, ``BUDGET_S`` s of timed runs, at least 10) in ``--turns``
passes through all of them, as ``benchmarks.peers`` does, so load from other processes falls on
all of them alike. The median reported is the least disturbed turn's; speedup, MAC ratio and
efficiency are ``onnxprune.evaluate.bench.compare_with_first`` against the dense model (speedup =
dense median / pruned median, MAC ratio = dense MACs / pruned MACs, efficiency = speedup / MAC
ratio). Run from the repository root::

    python -m benchmarks.zoo_speed [--models resnet50 mobilenet_v2 vit_b_16 | all]
        [--exporter torchscript|dynamo] [--ratios 0.3 0.5 0.7] [--round-to 16 1]
        [--threads 1] [--turns 3] [--vit-ratios 0.5]

``--vit-ratios`` (default: ``--ratios``) replaces the ratios for ``vit_b_16`` only, to keep the
run short on a slow machine. Needs torch/torchvision the first time (the export is cached).
"""

from __future__ import annotations

import argparse
import sys
import time

import onnx

import onnxprune
from benchmarks.common import machine, turns_note, torchvision_at
from onnxprune.pipeline import analyze_model
from onnxprune.runtime import count_cost
from onnxprune.evaluate.bench import compare_with_first
from onnxprune.runtime import make_inputs
from onnxprune.runtime import Timing, measure_latency

MODELS = ["resnet50", "mobilenet_v2", "vit_b_16"]
CLASSIFIERS = ["resnet18", "resnet50", "resnext50_32x4d", "vgg11_bn", "mobilenet_v2",
               "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf", "densenet121",
               "shufflenet_v2_x1_0", "squeezenet1_1", "inception_v3", "convnext_tiny", "swin_t",
               "vit_b_16"]   # the zoo's torchvision classifiers (`--models all`)
SIZE = 224
NATIVE_SIZE = {"inception_v3": 299}
TRANSFORMERS = ("vit", "swin")   # also heads=R, mlp=R
BUDGET_S = 1.0


def short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit] + "…"


def bench_model(name: str, ratios: list[float], round_tos: list[int], threads: int, turns: int,
                notes: list[str], exporter: str = "torchscript") -> list[dict]:
    """Rows (dense first) for one architecture: prune every (round_to, ratio), then time all."""
    path = torchvision_at(name, NATIVE_SIZE.get(name, SIZE), exporter)
    dense = onnx.load(path)
    feeds = make_inputs(dense, None, seed=0)
    analyzed = analyze_model(path)
    cost = count_cost(dense)
    entries = [{"model": name, "round_to": None, "ratio": 0.0, "proto": dense,
                "params": cost.params, "macs": cost.macs, "turns": [], "error": None}]
    for round_to in round_tos:
        for ratio in ratios:
            kinds = {"heads": ratio, "mlp": ratio} if name.startswith(TRANSFORMERS) else {}
            entry = {"model": name, "round_to": round_to, "ratio": ratio, "proto": None,
                     "params": None, "macs": None, "turns": [], "error": None}
            start = time.perf_counter()
            try:
                pruned, report = onnxprune.prune(analyzed, ratio=ratio, round_to=round_to,
                                                 verify=True, **kinds)
            except onnxprune.OnnxPruneError as exc:   # VerificationError included
                entry["error"] = short(exc)
                notes.append(f"{name} round_to {round_to} ratio {ratio}: {entry['error']}")
            else:
                cost = count_cost(pruned)
                entry.update(proto=pruned, params=cost.params, macs=cost.macs)
                check = report.get("check") or {}
                if not check.get("ok"):
                    notes.append(f"{name} round_to {round_to} ratio {ratio}: check not ok")
                if kinds and not any(g["prunable"] and g["kind"] == "heads"
                                     for g in report["groups"]):
                    notes.append(f"{name} round_to {round_to} ratio {ratio}: no prunable head "
                                 "groups (heads=R removed nothing)")
            print(f"  {name} round_to {round_to} ratio {ratio}: "
                  f"{'pruned' if entry['proto'] is not None else 'FAILED'} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
            entries.append(entry)

    timed = [e for e in entries if e["proto"] is not None]
    start = time.perf_counter()
    for _ in range(turns):   # interleaved turns through the dense and every pruned model
        for e in timed:
            e["turns"].append(measure_latency(e["proto"], feeds, threads=threads,
                                              budget_s=BUDGET_S))
    print(f"  {name}: timed {len(timed)} models × {turns} turns "
          f"({time.perf_counter() - start:.1f} s)", flush=True)

    rows = []
    for e in entries:
        best = min(e["turns"], key=lambda t: t.median) if e["turns"] else None
        timing = (Timing(median=best.median, p90=best.p90, min=min(t.min for t in e["turns"]),
                         runs=sum(t.runs for t in e["turns"])) if best else None)
        rows.append({"model": name, "round_to": e["round_to"], "ratio": e["ratio"],
                     "batch": 1, "params": e["params"], "macs": e["macs"],
                     "median_s": timing.median if timing else None,
                     "min_s": timing.min if timing else None,
                     "turn_medians_s": [t.median for t in e["turns"]], "error": e["error"]})
        e["proto"] = None
    compare_with_first(rows)   # speedup, mac_ratio, efficiency against the dense row
    return rows


def fmt_count(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.2f}M"


def table_row(r: dict, dense: dict) -> str:
    def kept(key):
        return (f"{fmt_count(r[key])} ({r[key] / dense[key]:.0%})"
                if r[key] is not None and dense[key] else "n/a")

    def x(value, unit="×"):
        return f"{value:.2f}{unit}" if value is not None else "n/a"

    ms = f"{r['median_s'] * 1e3:.1f}" if r["median_s"] is not None else "n/a"
    spread = ("–".join(f"{v * 1e3:.1f}" for v in (min(r["turn_medians_s"]),
                                                   max(r["turn_medians_s"])))
              if r["turn_medians_s"] else "n/a")
    dense_row = r["round_to"] is None
    ratio = "dense" if dense_row else f"{r['ratio']:g}"
    return (f"| {r['model']} | {'—' if dense_row else r['round_to']} "
            f"| {ratio} | {kept('params')} "
            f"| {kept('macs')} | {ms} | {spread} | {x(r['speedup'])} | {x(r['mac_ratio'])} "
            f"| {x(r['efficiency'], '')} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=CLASSIFIERS + ["all"])
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--vit-ratios", nargs="+", type=float, default=None,
                        help="ratios for vit_b_16 only (default: --ratios)")
    parser.add_argument("--round-to", nargs="+", type=int, default=[16, 1])
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--turns", type=int, default=3,
                        help="timing passes through all models of an architecture")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if not all(0.0 < r < 1.0 for r in args.ratios + (args.vit_ratios or [])):
        parser.error("ratios must be in (0, 1)")
    args.models = CLASSIFIERS if "all" in args.models else args.models
    if min(args.round_to) < 1 or args.turns < 1 or args.threads < 1:
        parser.error("--round-to, --turns and --threads must be at least 1")

    print(machine())
    print(f"Command: `{' '.join(['python -m benchmarks.zoo_speed', *argv])}`")
    vit = (f"; vit_b_16 ratios {' '.join(f'{r:g}' for r in args.vit_ratios)}"
           if args.vit_ratios and "vit_b_16" in args.models else "")
    print(f"torchvision models, random weights (seed 0), {args.exporter} export, {SIZE}×{SIZE} "
          f"(Inception v3 {NATIVE_SIZE['inception_v3']}), batch 1; onnxprune default strategy "
          f"(group L2, uniform), verified; ViT and Swin also heads=R, mlp=R{vit}. "
          + turns_note(args.threads, args.turns, BUDGET_S))
    print(flush=True)

    rows, notes = [], []
    for name in args.models:
        ratios = args.vit_ratios if name == "vit_b_16" and args.vit_ratios else args.ratios
        rows += bench_model(name, sorted(ratios), args.round_to, args.threads, args.turns,
                            notes, args.exporter)

    print()
    print("| model | round_to | ratio | params (kept) | MACs (kept) | ms median | turn medians "
          "| speedup | MAC ratio (dense/pruned) | efficiency (speedup/MAC ratio) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    dense = None
    for r in rows:
        dense = r if r["round_to"] is None else dense
        print(table_row(r, dense))
    print()
    print(f"ms median: the lowest of the {args.turns} turns' medians (the least disturbed turn); "
          "turn medians: their range. speedup: dense median / pruned median. MAC ratio: dense "
          "MACs / pruned MACs (the speedup the MACs promise). efficiency: speedup / MAC ratio "
          "(1 = every MAC saved became speed).")
    if notes:
        print()
        print("\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
