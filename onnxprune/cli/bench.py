"""``onnxprune bench`` (measured speed side by side) and ``onnxprune compare`` (what the
outputs paid)."""

from __future__ import annotations

import json

import click
from click.core import ParameterSource

from ..errors import UserError
from ..evaluate import BenchOptions, benchmark, compare_models
from .console import echo, fmt, kept, number, progress_for, show, size, table
from .params import NumberListType, shape_option, shapes_of

CUDA_ONLY = ("tf32", "algo_search", "device_id")

threads_option = click.option("--threads", type=int, default=1, show_default=True,
                              help="Intra-op threads (fixed, so runs are comparable).")
runs_option = click.option(
    "--runs", type=int, default=None,
    help="Exactly this many timed runs per model and batch (instead of --budget).")
budget_option = click.option(
    "--budget", type=float, default=None,
    help="Seconds of timed runs per model and batch (10 to 1000 runs) [default: 1.0].")


def bench_budget(runs, budget) -> float:
    if runs is not None and budget is not None:
        raise UserError("give --runs or --budget, not both")
    return 1.0 if budget is None else budget


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider to time on.")
@click.option("--batch", "batches", type=NumberListType(integers=True), default="1",
              show_default=True, help="Comma-separated batch sizes; each model is timed at each.")
@threads_option
@click.option("--fp16", is_flag=True,
              help="Time a float16 copy of each model (float32 inputs and outputs kept; needs "
                   "onnxprune[fp16]).")
@shape_option
@runs_option
@budget_option
@click.option("--warmup", type=int, default=5, show_default=True,
              help="Untimed runs first (at least 10 on CUDA, for cuDNN's algorithm search).")
@click.option("--nhwc", is_flag=True, help="CUDA: prefer NHWC kernels (prefer_nhwc).")
@click.option("--tf32/--no-tf32", default=True, show_default=True,
              help="CUDA: let fp32 convs and matmuls run in TF32 (use_tf32).")
@click.option("--algo-search", type=click.Choice(["exhaustive", "heuristic", "default"]),
              default="exhaustive", show_default=True,
              help="CUDA: cuDNN convolution algorithm search (cudnn_conv_algo_search).")
@click.option("--device-id", type=int, default=0, show_default=True, help="CUDA: which GPU.")
@click.option("--json", "as_json", is_flag=True,
              help="Everything as one JSON document, raw timings and machine included.")
def bench(models, provider, batches, threads, fp16, input_shape, runs, budget, warmup, nhwc,
          tf32, algo_search, device_id, as_json):
    """Time MODELS side by side on ONNX Runtime: latency, throughput, params, MACs, size, and
    each model's speedup over the first one against the MAC ratio that promised it."""
    ctx = click.get_current_context()
    if provider != "cuda":
        given = [name for name in CUDA_ONLY
                 if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UserError(f"{flag} is a CUDA provider option: use it with --provider cuda")
    options = BenchOptions(provider=provider, threads=threads, runs=runs,
                           budget_s=bench_budget(runs, budget), warmup=warmup, fp16=fp16,
                           nhwc=nhwc, tf32=tf32, algo_search=algo_search.upper(),
                           device_id=device_id)
    result = benchmark(models, batches, options, shapes_of(input_shape),
                       progress=progress_for(as_json))
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    print_bench(result)


def print_bench(result: dict) -> None:
    m, s = result["machine"], result["settings"]
    echo(f"onnxruntime {m['onnxruntime']}, {m['provider']}, {m['threads']} thread(s), "
         f"{s['precision']}, graph optimizations {s['graph_optimization']}; {m['cpu']} "
         f"({m['cores']} cores)")
    if "cuda" in m:
        c = m["cuda"]
        on = {True: "on", False: "off"}
        echo(f"GPU {c['gpu'] or 'unknown'} (device {c['device_id']}): TF32 {on[c['tf32']]}, "
             f"prefer_nhwc {on[c['prefer_nhwc']]}, cudnn_conv_algo_search "
             f"{c['cudnn_conv_algo_search']}, inputs bound on the device (IOBinding)")
    how = f"{s['runs']} timed runs" if s["runs"] else f"{s['budget_s']:g} s of timed runs"
    echo(f"{how} per model and batch after {s['warmup']} warm-up runs; speedup, MAC ratio and "
         "efficiency are against the first model at the same batch")
    if s["precision"] == "fp16" and m["provider"] == "CPUExecutionProvider":
        echo("note: the CPU provider has few float16 kernels: expect casts, not speed")
    rows = table("batch|right", "model", "median ms|right", "p90 ms|right", "min ms|right",
                 "samples/s|right", "params|right", "MACs|right", "size|right",
                 "speedup|right", "MAC ratio|right", "efficiency|right")
    for r in result["rows"]:
        rows.add_row(str(r["batch"]), r["model"], f"{r['median_s'] * 1e3:.3f}",
                     f"{r['p90_s'] * 1e3:.3f}", f"{r['min_s'] * 1e3:.3f}",
                     number(r["throughput"], ".1f"), fmt(r["params"]), fmt(r["macs"]),
                     size(r["file_bytes"]), number(r["speedup"], ".2f", "x"),
                     number(r["mac_ratio"], ".2f", "x"), number(r["efficiency"], ".2f"))
    show(rows)


@click.command()
@click.argument("original", type=click.Path(dir_okay=True))
@click.argument("pruned", type=click.Path(dir_okay=True))
@click.option("--data", default="random", show_default=True,
              help="Inputs both models run on: an .npz with one array per model input "
                   "(samples on axis 0; an array named 'labels' is used as labels), an image "
                   "folder (see --preprocess), or 'random'.")
@click.option("--preprocess", default=None, metavar="SPEC",
              help="How images of a --data folder become inputs (as for prune --calib).")
@click.option("--labels", default=None, type=click.Path(dir_okay=False),
              help="A .npy of integer class ids, one per sample: accuracy and per-class recall.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="How many random inputs (default 32, or one per label), or at most how many "
                   "samples of an .npz or images of a folder (the first ones).")
@shape_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def compare(original, pruned, data, preprocess, labels, samples, input_shape, as_json):
    """How far PRUNED's outputs moved from ORIGINAL's on the same inputs, and, with labels,
    what it cost in accuracy and in which classes."""
    info = compare_models(original, pruned, data, labels, shapes_of(input_shape), preprocess,
                          samples)
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    print_compare(info)


def print_compare(info: dict) -> None:
    a, b = info["cost"]["original"], info["cost"]["pruned"]
    echo(f"{info['pruned']} against {info['original']} on {info['samples']} samples "
         f"({info['data']})")
    echo(f"params {fmt(a['params'])} -> {fmt(b['params'])} ({kept(b['params'], a['params'])} "
         f"kept), MACs {fmt(a['macs'])} -> {fmt(b['macs'])} ({kept(b['macs'], a['macs'])} kept)")
    rows = table("output", "shape|right", "max abs err|right", "mean abs err|right",
                 "cosine mean|right", "cosine min|right", "top-1 agree|right")
    for o in info["outputs"]:
        agree = "n/a" if o["top1_agreement"] is None else f"{o['top1_agreement']:.1%}"
        rows.add_row(o["name"], "x".join(map(str, o["shape"])) or "scalar",
                     f"{o['max_abs_error']:.4g}", f"{o['mean_abs_error']:.4g}",
                     f"{o['cosine_mean']:.5f}", f"{o['cosine_min']:.5f}", agree)
    show(rows)
    if info["labels"]:
        _print_labels(info["labels"])


def _print_labels(lab: dict) -> None:
    echo(f"labels {lab['source']} on output {lab['output']}: accuracy "
         f"{lab['accuracy_before']:.2%} -> {lab['accuracy_after']:.2%} "
         f"(drop {lab['accuracy_drop'] * 100:.2f} points)")
    shown = lab["classes"] if len(lab["classes"]) <= 20 else [
        c for c in lab["classes"] if c["flagged"]]
    if shown:
        rows = table("class|right", "support|right", "recall before|right",
                     "recall after|right", "drop|right", "")
        for c in shown:
            rows.add_row(str(c["class"]), str(c["support"]), f"{c['recall_before']:.2%}",
                         f"{c['recall_after']:.2%}", f"{c['drop'] * 100:.2f}",
                         "<- drops more than the accuracy" if c["flagged"] else "")
        show(rows)
    if lab["flagged"]:
        echo(f"flagged: {len(lab['flagged'])} class(es) lose more recall than the overall "
             f"accuracy: {', '.join(map(str, lab['flagged']))}")
    else:
        echo("flagged: none (no class loses more recall than the overall accuracy)")
