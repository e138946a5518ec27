"""``onnxprune sweep``: prune at many ratios, time and compare each against the dense model."""

from __future__ import annotations

import importlib.util
import json

import click

from ..calibration import parse_source
from ..errors import UserError
from ..evaluate import BenchOptions, plot_sweep, sweep as run_sweep, write_csv
from ..evaluate.sweep import check_output_path
from .bench import bench_budget, budget_option, runs_option, threads_option
from .console import echo, fmt, number, percent, progress_for, show, size, table
from .params import RatiosType, image_folder, preprocess_option, prune_options_from, \
    pruning_options


@click.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--ratios", type=RatiosType(), default="0.1:0.9:0.1", show_default=True,
              help="Ratios to prune at: START:STOP:STEP (STOP included) or a comma list, each "
                   "in [0, 1). The dense model is always the first row (ratio 0).")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Write each pruned model here, as NAME.rRATIO.onnx (NAME: the model's); "
                   "else they stay in memory.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Write one row per ratio as CSV.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG of latency, size, speedup and fidelity against the ratio "
                   "(needs matplotlib).")
@click.option("--data", default="random", show_default=True,
              help="Inputs each pruned model is compared with the dense one on: an .npz with "
                   "one array per model input (an array named 'labels' is used as labels), an "
                   "image folder (see --preprocess), or 'random'.")
@preprocess_option("a --data or --calib folder")
@click.option("--labels", default=None, type=click.Path(dir_okay=False),
              help="A .npy of integer class ids, one per --data sample: accuracy per ratio.")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Batch size the latency is measured at.")
@threads_option
@runs_option
@budget_option
@pruning_options(sweep=True)
@click.option("--json", "as_json", is_flag=True,
              help="Everything as one JSON document on stdout (rows, settings, machine).")
def sweep(model, ratios, out_dir, csv_path, plot, data, preprocess, labels, batch, threads, runs,
          budget, calib, as_json, **params):
    """Prune MODEL at a range of ratios and measure each against the dense model: latency,
    speedup against the MAC ratio, params and MACs kept, and fidelity (cosine, top-1
    agreement, accuracy with labels). A ratio that fails is a row with its error. Every
    option of prune but the ratio, targets and steps applies to each ratio."""
    check_output_path(csv_path, "--csv")
    check_output_path(plot, "--plot", ".png")
    if plot and importlib.util.find_spec("matplotlib") is None:
        raise UserError("--plot needs matplotlib: pip install 'onnxprune[plot]'")
    bench = BenchOptions(threads=threads, runs=runs, budget_s=bench_budget(runs, budget))
    options, given = prune_options_from(params, _sources(calib, preprocess, data))
    options.check(given - {"executor"})     # a sweep's ratios always run on the executor
    result = run_sweep(model, ratios, options, batch, bench, data, labels,
                       preprocess if image_folder(data) else None, out_dir,
                       progress_for(as_json))
    if csv_path:
        write_csv(result, csv_path)
    if plot:
        plot_sweep(result, plot)
    result.update(csv=csv_path, plot=plot, out_dir=out_dir)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    print_sweep(result)


def _sources(values, preprocess, data):
    """--calib as calibration sources; --preprocess applies to every image folder among
    --data and --calib, so it must name at least one."""
    sources = [parse_source(v) for v in values]
    if preprocess and not image_folder(data) and not any(image_folder(s.data) for s in sources):
        raise UserError("--preprocess goes with an image folder (--data or --calib)")
    return [parse_source(v, preprocess if image_folder(s.data) else None)
            for v, s in zip(values, sources)] or None


def print_sweep(result: dict) -> None:
    s, m, f = result["settings"], result["machine"], result["fidelity"]
    p = s["prune"]
    echo(f"sweep of {result['model']}: criterion {p['criterion']}, allocation "
         f"{p['allocation']}, compensate {p['compensate']}, round-to {p['round_to']}"
         + "".join(f", {k} {p[k]:g}" for k in ("heads", "mlp", "hidden") if p[k] is not None)
         + (f", calib {' + '.join(p['calib'])}" if p["calib"] else ""))
    how = f"{s['runs']} timed runs" if s["runs"] else f"{s['budget_s']:g} s of timed runs"
    echo(f"latency at batch {s['batch']}: onnxruntime {m['onnxruntime']}, {m['provider']}, "
         f"{m['threads']} thread(s), graph optimizations {s['graph_optimization']}, {how} per "
         f"model after {s['warmup']} warm-up runs; {m['cpu']} ({m['cores']} cores)")
    echo(f"fidelity against the dense model on {f['samples']} samples ({f['data']})"
         + (f", labels {f['labels']}" if f["labels"] else "")
         + "; speedup and MAC ratio against the dense model (ratio 0)")
    rows = table("ratio|right", "params|right", "kept|right", "MACs|right", "kept|right",
                 "median ms|right", "p90 ms|right", "min ms|right", "speedup|right",
                 "MAC ratio|right", "cos mean|right", "cos min|right", "max abs err|right",
                 "top-1|right", "accuracy|right", "size|right")
    for r in result["rows"]:
        if r["error"]:
            rows.add_row(f"{r['ratio']:g}", "failed", *[""] * 14)
            continue
        rows.add_row(f"{r['ratio']:g}", fmt(r["params"]), percent(r["params_kept"]),
                     fmt(r["macs"]), percent(r["macs_kept"]), f"{r['latency_median_ms']:.3f}",
                     f"{r['latency_p90_ms']:.3f}", f"{r['latency_min_ms']:.3f}",
                     number(r["speedup"], ".2f", "x"), number(r["mac_ratio"], ".2f", "x"),
                     f"{r['cosine_mean']:.5f}", f"{r['cosine_min']:.5f}",
                     f"{r['max_abs_error']:.4g}", percent(r["top1_agreement"]),
                     percent(r["accuracy"]), size(r["size_bytes"]))
    show(rows)
    failed = [r for r in result["rows"] if r["error"]]
    for r in failed:
        echo(f"ratio {r['ratio']:g}: error: {r['error']}")
    if failed:
        echo(f"{len(failed)} ratio(s) failed; the others are complete")
    written = [r["path"] for r in result["rows"][1:] if r["path"]]
    for path in [result["csv"], result["plot"]] + written:
        if path:
            echo(f"wrote {path}")
