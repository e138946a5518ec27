"""``onnxprune sweep``: prune models at many ratios (with one or several criteria), time and
compare each against its dense model."""

from __future__ import annotations

import importlib.util
import json

import click

from ..calibration import parse_source
from ..errors import UserError
from ..evaluate import BenchOptions, plot_sweep, sweep as run_sweep, write_csv
from ..evaluate.sweep_files import check_output_path
from .bench import bench_budget, budget_option, runs_option, threads_option
from .console import echo, fmt, number, percent, progress_for, show, size, table
from .params import RatiosType, image_folder, preprocess_option, prune_options_from, \
    pruning_options


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=True),
                metavar="MODEL...")
@click.option("--ratios", type=RatiosType(), default="0.1:0.9:0.1", show_default=True,
              help="Ratios to prune at: START:STOP:STEP (STOP included) or a comma list, each "
                   "in [0, 1). The dense model is always the first row (ratio 0).")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Write each pruned model here, as NAME.rRATIO.onnx (NAME: the model's; "
                   "NAME.CRITERION.rRATIO.onnx for several criteria); else they wait for "
                   "their timing in a temporary folder, removed afterwards.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Write one row per model, criterion and ratio as CSV.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG (needs matplotlib): latency, size, speedup and fidelity against "
                   "the ratio; for several models or criteria, each model's quality against "
                   "its measured speedup, one line per criterion.")
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
@click.option("--overlap-timing", is_flag=True,
              help="With --workers 2 or more: time each group of pruned copies as soon as it "
                   "is made, on one worker while the others go on pruning, instead of all "
                   "of them after the last prune. Faster on a few cores; the timings then "
                   "share the machine with pruning work (each group's speedups are against "
                   "the dense model timed in the same group).")
@pruning_options(sweep=True)
@click.option("--json", "as_json", is_flag=True,
              help="Everything as one JSON document on stdout (rows, settings, machine).")
def sweep(models, ratios, out_dir, csv_path, plot, data, preprocess, labels, batch, threads, runs,
          budget, overlap_timing, calib, as_json, **params):
    """Prune each MODEL at a range of ratios (with each --criterion) and measure every pruned
    copy against its dense model: latency, speedup against the MAC ratio, params and MACs
    kept, and fidelity (cosine, top-1 agreement, accuracy with labels). A ratio, criterion or
    model that fails is a row with its error. Every option of prune but the ratio, targets,
    steps, blocks and --allow-cache-change applies to each ratio."""
    check_output_path(csv_path, "--csv")
    check_output_path(plot, "--plot", ".png")
    if plot and importlib.util.find_spec("matplotlib") is None:
        raise UserError("--plot needs matplotlib: pip install 'onnxprune[plot]'")
    bench = BenchOptions(threads=threads, runs=runs, budget_s=bench_budget(runs, budget))
    criteria = params.pop("criterion")
    options, given = prune_options_from({**params, "criterion": criteria[0]},
                                        _sources(calib, preprocess, data))
    result = run_sweep(list(models), ratios, options, batch, bench, data, labels,
                       preprocess if image_folder(data) else None, out_dir,
                       progress_for(as_json), criteria, given, overlap_timing)
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
    s, m = result["settings"], result["machine"]
    p = s["prune"]
    several_models, several = len(result["models"]) > 1, len(result["criteria"]) > 1
    what = (f"{len(result['models'])} models" if several_models else result["models"][0])
    echo(f"sweep of {what}: criteri{'a' if several else 'on'} {', '.join(result['criteria'])}, "
         f"allocation {p['allocation']}, compensate {p['compensate']}, round-to {p['round_to']}"
         + "".join(f", {k} {p[k]:g}" for k in ("heads", "mlp", "hidden") if p[k] is not None)
         + (f", calib {' + '.join(p['calib'])}" if p["calib"] else ""))
    how = f"{s['runs']} timed runs" if s["runs"] else f"{s['budget_s']:g} s of timed runs"
    echo(f"latency at batch {s['batch']}: onnxruntime {m['onnxruntime']}, {m['provider']}, "
         f"{m['threads']} thread(s), graph optimizations {s['graph_optimization']}, {how} per "
         f"model after {s['warmup']} warm-up runs; {m['cpu']} ({m['cores']} cores)"
         + ("; each group timed beside the workers' pruning" if s["timing_beside_pruning"]
            else ""))
    for section in result["sweeps"]:
        _print_model(result, section, several_models, several)
    failed = [r for r in result["rows"] if r["error"]]
    if failed:
        echo(f"{len(failed)} row(s) failed; the others are complete")
    written = [r["path"] for r in result["rows"] if r["path"] and r["ratio"]]
    for path in [result["csv"], result["plot"]] + written:
        if path:
            echo(f"wrote {path}")


def _print_model(result: dict, section: dict, several_models: bool, several: bool) -> None:
    """One model's table (a criterion column when there are several) and its errors."""
    rows = [r for r in result["rows"] if r["model"] == section["model"]]
    where = f"{section['model']}: " if several_models else ""
    if section["error"]:
        echo(f"{where}error: {section['error']}")
        return
    f = section["fidelity"]
    echo(f"{where}fidelity against the dense model on {f['samples']} samples ({f['data']})"
         + (f", labels {f['labels']}" if f["labels"] else "")
         + "; speedup and MAC ratio against the dense model (ratio 0)")
    head = ("criterion",) if several else ()
    out = table(*head, "ratio|right", "params|right", "kept|right", "MACs|right", "kept|right",
                "median ms|right", "p90 ms|right", "min ms|right", "speedup|right",
                "MAC ratio|right", "cos mean|right", "cos min|right", "max abs err|right",
                "top-1|right", "accuracy|right", "size|right")
    for r in rows:
        first = (r["criterion"] or "dense",) if several else ()
        ratio = "" if r["ratio"] is None else f"{r['ratio']:g}"
        if r["error"]:
            out.add_row(*first, ratio, "failed", *[""] * 14)
            continue
        out.add_row(*first, ratio, fmt(r["params"]), percent(r["params_kept"]),
                    fmt(r["macs"]), percent(r["macs_kept"]), f"{r['latency_median_ms']:.3f}",
                    f"{r['latency_p90_ms']:.3f}", f"{r['latency_min_ms']:.3f}",
                    number(r["speedup"], ".2f", "x"), number(r["mac_ratio"], ".2f", "x"),
                    f"{r['cosine_mean']:.5f}", f"{r['cosine_min']:.5f}",
                    f"{r['max_abs_error']:.4g}", percent(r["top1_agreement"]),
                    percent(r["accuracy"]), size(r["size_bytes"]))
    show(out)
    for r in rows:
        if r["error"]:
            at = f"criterion {r['criterion']}" if r["ratio"] is None else \
                (f"{r['criterion']} " if several else "") + f"ratio {r['ratio']:g}"
            echo(f"{where}{at}: error: {r['error']}")
