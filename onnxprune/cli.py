"""Command line: ``onnxprune inspect``, ``prune``, ``sensitivity``, ``demo``, ``bench``,
``compare``, ``sweep``.

Every failure is one line on stderr and a non-zero exit (2: bad input, 1: internal error);
the output file is written only after the pruned model has passed verification.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from importlib import resources

import click

from . import api
from .allocation import ALLOCATIONS
from .calibration import parse_source
from .compensation import DAMPING, METHODS
from .importance import CRITERIA, NORMALIZATIONS, REDUCTIONS
from .errors import EXIT_INTERNAL, OnnxPruneError, UserError, one_line
from .io import check_writable, save_model, write_atomically

REPORT_BUG = "please report it with the model and command at the onnxprune issue tracker"


def parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]] | None:
    """``name:1x3x224x224`` → {name: (1, 3, 224, 224)}."""
    shapes = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise UserError(f"--input-shape expects NAME:D1xD2x..., got {value!r}")
        shapes[name] = shape
    return shapes or None


def _fmt(n) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _ratio(after, before) -> str:
    return f"{after / before:.1%}" if before and after is not None else "n/a"


def _walk_bodies(entries):
    for entry in entries:
        yield entry
        yield from _walk_bodies(entry.get("bodies", []))


def print_prune_summary(report: dict) -> None:
    groups = report["groups"]
    pruned = [g for g in groups if g["removed"]]
    removed = sum(len(g["removed"]) * g["width"] for g in groups)
    total = sum(g["channels"] for g in groups)
    click.echo(f"groups: {len(groups)} found, {sum(g['prunable'] for g in groups)} prunable, "
               f"{len(pruned)} pruned; channels removed: {removed} of {total}")
    for g in pruned[:12]:
        click.echo(f"  group {g['id']:>3} ({g['kind']}): {g['channels']:>5} -> "
                   f"{len(g['kept']) * g['width']:>5}"
                   f"  ({', '.join(g['sources'][:2])}{' ...' if len(g['sources']) > 2 else ''})")
    if len(pruned) > 12:
        click.echo(f"  ... {len(pruned) - 12} more (see --report)")
    for key in ("params", "macs"):
        c = report[key]
        click.echo(f"{key:>6}: {_fmt(c['before'])} -> {_fmt(c['after'])} "
                   f"({_ratio(c['after'], c['before'])} kept; "
                   f"plan said {_fmt(c['planned_after'])})")
    if report.get("bodies"):
        bodies = list(_walk_bodies(report["bodies"]))
        inside = sum(b.get("channels_removed", 0) for b in bodies)
        click.echo(f"inside control flow: {sum(b['pruned'] for b in bodies)} of {len(bodies)} "
                   f"branches/bodies pruned on their own, {inside} channels removed")
    if report["barriers"]:
        click.echo(f"barriers: {len(report['barriers'])} ops left alone "
                   f"(first: {report['barriers'][0]['node']}: {report['barriers'][0]['reason']})")
    if report.get("target"):
        t = report["target"]
        how = (f"ratio {t['ratio']:.3f}" if t["ratio"] is not None
               else f"{len(report['steps'])} steps")
        click.echo(f"target: keep {t['fraction']:.1%} of the {t['kind']} -> {how} "
                   f"(keeps {t['planned']:.1%})")
        if t["kind"] == "latency":
            fixes = f", after {t['corrections']} correction(s)" if t["corrections"] else ""
            click.echo(f"  latency on ORT CPU ({t['threads']} thread(s), fastest run): "
                       f"{t['dense_seconds'] * 1e3:.2f} ms -> {t['pruned_seconds'] * 1e3:.2f} ms "
                       f"({t['measured']:.1%}, table predicted {t['planned']:.1%}; "
                       f"{'met' if t['met'] else 'MISSED'}{fixes})")
    for step in report.get("steps") or []:
        check = {True: "OK", False: "FAIL", None: "not run"}[step["check_ok"]]
        click.echo(f"  step {step['step']}: ratio {step['ratio']:.3f}, params "
                   f"{_fmt(step['params'])}, macs {_fmt(step['macs'])}, check {check}")
    if report.get("changes_function"):
        click.echo("  note: the hidden size was pruned, so LayerNorm/RMSNorm now average over "
                   "fewer channels: the model computes a different function (check its accuracy)")
    check = report.get("check")
    if check:
        click.echo(f" check: onnx.checker(full)={'pass' if check['checker'] else 'FAIL'}, "
                   f"onnxruntime={'runs' if check['runs'] else 'FAIL'}, "
                   f"same IO={'yes' if check['same_io'] else 'NO'}, mask-equivalence max rel "
                   f"error={check['max_rel_error']:.2e} (tolerance {check['tolerance']:.0e}) "
                   f"-> {'OK' if check['ok'] else 'FAIL'}")


def _dump_json(data, path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def _run_prune(model, output, ratio, round_to, exclude, input_shape, report_path, tolerance,
               heads=None, mlp=None, hidden=None, strategy=None, calib=None, targets=None,
               in_place=False):
    shapes = parse_shapes(input_shape)
    same = os.path.exists(output) and os.path.exists(str(model)) and \
        os.path.samefile(output, str(model))
    if same and not in_place:
        raise UserError("the output path is the input file; choose another -o, or give "
                        "--in-place to replace the input")
    check_writable(output)
    if report_path:
        check_writable(report_path)
    pruned, report = api.prune(model, ratio=ratio, round_to=round_to, exclude=tuple(exclude),
                               input_shapes=shapes, tolerance=tolerance, heads=heads, mlp=mlp,
                               hidden=hidden, strategy=strategy, calib=calib, **(targets or {}))
    report["output"] = str(output)
    if report_path:     # first: a report that cannot be written leaves no model behind
        write_atomically(report_path, lambda tmp: _dump_json(report, tmp))
    save_model(pruned, output)
    print_prune_summary(report)
    click.echo(f"wrote {output}")


def _calib_sources(values, preprocess):
    """--calib values (PATH or PATH@WEIGHT, repeatable) as calibration sources, or None."""
    if not values:
        if preprocess:
            raise UserError("--preprocess goes with --calib IMAGE_FOLDER")
        return None
    return [parse_source(v, preprocess) for v in values]


_shape_option = click.option("--input-shape", multiple=True, metavar="NAME:1x3x224x224",
                             help="Concrete input shape for checks and MACs (dynamic dims).")

# Options that more than one command takes: defined once, so the flags, defaults and help stay
# the same everywhere (prune and sweep; bench and sweep).


def _heads_option(default: str = "--ratio"):
    return click.option("--heads", type=float, default=None,
                        help=f"Fraction of attention heads to remove (default: {default}).")


def _mlp_option(default: str = "--ratio"):
    return click.option("--mlp", type=float, default=None,
                        help="Fraction of MLP neurons (between Linear layers) to remove "
                             f"(default: {default}).")


def _preprocess_option(what: str = "a --calib folder"):
    return click.option(
        "--preprocess", default=None, metavar="SPEC",
        help=f"How images of {what} become inputs, e.g. 'resize=256 crop=224 "
             "mean=0.485,0.456,0.406 std=0.229,0.224,0.225' (keys: resize, crop, scale, "
             "mean, std, color, layout), or a .json file with those keys.")


_round_to_option = click.option("--round-to", type=int, default=api.DEFAULT_ROUND_TO,
                                show_default=True,
                                help="Keep channel counts that are multiples of N.")
_criterion_option = click.option("--criterion", default="l2", show_default=True,
                                 help=f"How channels are scored: {', '.join(sorted(CRITERIA))}.")
_allocation_option = click.option("--allocation", default="uniform", show_default=True,
                                  help=f"Spread the ratio over groups: {', '.join(ALLOCATIONS)}.")
_calib_option = click.option(
    "--calib", multiple=True, metavar="DATA[@WEIGHT]",
    help="Calibration inputs for data-driven criteria and compensation: an .npz with "
         "one array per model input (samples on axis 0); a folder of images (see "
         "--preprocess); 'random' inputs; or 'synthetic' (random inputs matched to "
         "the BatchNorm statistics, obspa's default). Repeat it to fuse several sets, "
         "each with a weight: --calib general.npz@0.3 --calib task.npz@0.7.")
_compensate_option = click.option(
    "--compensate", default=None,
    help=f"Re-fit the layers that read removed channels: {', '.join(METHODS)} "
         "(default: obs for --criterion obspa, else none). Needs --calib, except "
         "with obspa.")
_threads_option = click.option("--threads", type=int, default=1, show_default=True,
                               help="Intra-op threads (fixed, so runs are comparable).")
_runs_option = click.option(
    "--runs", type=int, default=None,
    help="Exactly this many timed runs per model and batch (instead of --budget).")
_budget_option = click.option(
    "--budget", type=float, default=None,
    help="Seconds of timed runs per model and batch (10 to 1000 runs) [default: 1.0].")


@click.group()
@click.version_option(package_name="onnxprune")
def cli():
    """Structural pruning of ONNX models: find coupled channels, remove them, prove it."""


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Where to write the pruned model (default: MODEL.pruned.onnx).")
@click.option("--in-place", is_flag=True,
              help="Replace MODEL itself with the pruned model (atomically; never without "
                   "this flag).")
@click.option("--ratio", type=float, default=0.5, show_default=True,
              help="Fraction of channels to remove from every prunable group.")
@_heads_option()
@_mlp_option()
@click.option("--hidden", type=float, default=None,
              help="Fraction of the hidden size (channels a LayerNorm/RMSNorm reads across) to "
                   "remove. Off by default: it changes what the norms compute.")
@_round_to_option
@click.option("--exclude", multiple=True, metavar="NODE",
              help="Node name (or glob) whose channels must not be pruned; repeatable.")
@_shape_option
@click.option("--report", "report_path", type=click.Path(), default=None,
              help="Write the plan and results as JSON.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Max relative error against the masked original.")
@_criterion_option
@click.option("--group-reduction", default="sum", show_default=True,
              help=f"Combine a group's member scores by {', '.join(REDUCTIONS)}.")
@click.option("--normalize", "normalization", default="mean", show_default=True,
              help=f"Make groups comparable for --allocation global: {', '.join(NORMALIZATIONS)}.")
@_allocation_option
@click.option("--rank-by", default="score", show_default=True,
              help="Global allocation ranks components by their normalized 'score', or by "
                   "'score-per-mac' (importance against the MACs each one costs).")
@click.option("--max-ratio", type=float, default=0.9, show_default=True,
              help="Most of one group that --allocation global may remove.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the random criterion and the check inputs.")
@_calib_option
@_preprocess_option()
@click.option("--target-macs", type=float, default=None,
              help="Keep this fraction of the MACs: the ratio is searched for (replaces --ratio).")
@click.option("--target-latency", type=float, default=None,
              help="Keep this fraction of the dense model's latency on ONNX Runtime CPU here: "
                   "searched on a per-layer latency table, then the result is timed.")
@click.option("--latency-threads", type=int, default=1, show_default=True,
              help="Intra-op threads ONNX Runtime uses when timing for --target-latency.")
@click.option("--steps", type=int, default=1, show_default=True,
              help="Prune in this many smaller steps, re-scoring (and re-calibrating and "
                   "re-compensating) the model between steps; each step is verified.")
@click.option("--target-params", type=float, default=None,
              help="Keep this fraction of the params: the ratio is searched for.")
@_compensate_option
@click.option("--obs-damping", type=float, default=DAMPING, show_default=True,
              help="Damping of the OBS update, relative to the mean of diag(H). Larger is safer "
                   "with few calibration samples per input feature (see RESULTS.md).")
def prune(model, output, in_place, ratio, heads, mlp, hidden, round_to, exclude, input_shape,
          report_path, tolerance, criterion, group_reduction, normalization, allocation, rank_by,
          max_ratio, seed, calib, preprocess, target_macs, target_latency, latency_threads, steps,
          target_params, compensate, obs_damping):
    """Prune MODEL and write a smaller, verified model."""
    calib = _calib_sources(calib, preprocess)
    strategy = api.Strategy(criterion, group_reduction, normalization, allocation, max_ratio,
                            seed, compensate, obs_damping, rank_by)
    if in_place and output is not None:
        raise UserError("give -o or --in-place, not both")
    if in_place:
        output = model
    _run_prune(model, output or api.default_output_path(model), ratio, round_to, exclude,
               input_shape, report_path, tolerance, heads, mlp, hidden, strategy, calib,
               {"target_macs": target_macs, "target_params": target_params, "steps": steps,
                "target_latency": target_latency, "latency_threads": latency_threads},
               in_place)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--exclude", multiple=True, metavar="NODE")
@_shape_option
def inspect(model, as_json, exclude, input_shape):
    """List the channel groups of MODEL and its params/MACs."""
    info = api.inspect(model, exclude=tuple(exclude), input_shapes=parse_shapes(input_shape))
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    click.echo(f"opset {info['opset']}, {info['nodes']} nodes, params {_fmt(info['params'])}, "
               f"MACs {_fmt(info['macs'])}")
    click.echo(f"{'group':>5} {'kind':<8} {'channels':>8} {'units':>6}  {'prunable':<8} members")
    for g in info["groups"]:
        why = "" if g["prunable"] else f"  [{g.get('reason')}]"
        members = ", ".join(g["members"][:4]) + (" ..." if len(g["members"]) > 4 else "")
        click.echo(f"{g['id']:>5} {g['kind']:<8} {g['channels']:>8} {g['units']:>6}  "
                   f"{'yes' if g['prunable'] else 'no':<8} {members}{why}")
    click.echo(f"{sum(g['prunable'] for g in info['groups'])} of {len(info['groups'])} groups "
               f"prunable; {len(info['barriers'])} barrier ops")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--calib", multiple=True, default=("synthetic",), show_default=True,
              metavar="DATA[@WEIGHT]", help="Inputs the distortion is measured on (as for "
              "prune: .npz, image folder, random, synthetic; repeat to fuse weighted sets).")
@click.option("--preprocess", default=None, metavar="SPEC",
              help="Preprocessing of a --calib image folder (as for prune).")
@click.option("--ratios", default="0.25,0.5,0.75", show_default=True,
              help="Comma-separated shares of each group to mask.")
@click.option("--criterion", default="l2", show_default=True,
              help="Which components of a group are masked first (the lowest-scoring).")
@click.option("--exclude", multiple=True, metavar="NODE")
@_shape_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plot", type=click.Path(), default=None,
              help="Write a PNG of distortion against ratio per group (needs matplotlib).")
def sensitivity(model, calib, preprocess, ratios, criterion, exclude, input_shape, as_json,
                plot):
    """How much each group hurts MODEL's outputs when pruned alone, and its dead channels."""
    calib = _calib_sources(calib, preprocess)
    try:
        values = tuple(float(r) for r in ratios.split(","))
    except ValueError:
        raise UserError(f"--ratios expects numbers like 0.25,0.5, got {ratios!r}") from None
    if plot and not plot.lower().endswith(".png"):
        raise UserError("--plot writes a PNG: give a path ending in .png")
    info = api.sensitivity(model, calib, values, api.Strategy(criterion),
                           parse_shapes(input_shape), tuple(exclude),
                           progress=None if as_json else _progress)
    if plot:
        _plot_sensitivity(info, plot)
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    click.echo(f"distortion = |y_masked - y|^2 / |y|^2 on {info['calibration']['samples']} "
               f"samples ({info['calibration']['source']}); lowest-{criterion} components first"
               + (f", re-fitted by {info['compensation']} compensation"
                  if info["compensation"] != "none" else ""))
    head = "".join(f"{f'r={r:g}':>10}" for r in values)
    click.echo(f"{'group':>5} {'kind':<8} {'channels':>8} {head}  source")
    for g in sorted(info["groups"], key=lambda g: -g["distortion"][values[-1]]):
        cells = "".join(f"{g['distortion'][r]:>10.4f}" for r in values)
        click.echo(f"{g['group']:>5} {g['kind']:<8} {g['channels']:>8} {cells}  {g['source']}")
    dead = sorted(info["dead_channels"], key=lambda d: -d["mean_zero_rate"])
    if dead:
        click.echo("dead channels (share of exact zeros where linear layers read):")
        for d in dead[:10]:
            click.echo(f"  {d['mean_zero_rate']:6.1%} zeros, {d['dead']:>4} of "
                       f"{d['channels']:>4} channels always 0  {d['tensor']}")
    if plot:
        click.echo(f"wrote {plot}")


def _progress(done: int, total: int) -> None:
    click.echo(f"\rmeasuring group {done}/{total}", nl=done == total, err=True)


def _plot_sensitivity(info: dict, path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'onnxprune[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g in info["groups"]:
        ratios = sorted(g["distortion"], key=float)
        ax.plot([float(r) for r in ratios], [g["distortion"][r] for r in ratios], marker="o",
                alpha=0.7, label=f"{g['group']} {g['kind']} ({g['channels']})")
    ax.set_xlabel("share of the group masked")
    ax.set_ylabel("output distortion |Δy|² / |y|²")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_title(f"sensitivity per group ({info['criterion']} order)")
    if len(info["groups"]) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@cli.command()
@click.option("-o", "--output", type=click.Path(), default="demo_digits.pruned.onnx",
              show_default=True)
@click.option("--ratio", type=float, default=0.5, show_default=True)
def demo(output, ratio):
    """Prune the bundled digits CNN (a small trained model) and show what happened."""
    model = resources.files("onnxprune").joinpath("data/demo_digits.onnx")
    with resources.as_file(model) as path:
        click.echo(f"pruning the bundled demo model {path.name} at ratio {ratio}")
        _run_prune(str(path), output, ratio, api.DEFAULT_ROUND_TO, (), (), None, 1e-4)


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider to time on.")
@click.option("--batch", "batches", default="1", show_default=True, metavar="N[,N...]",
              help="Comma-separated batch sizes; each model is timed at each.")
@_threads_option
@click.option("--fp16", is_flag=True,
              help="Time a float16 copy of each model (float32 inputs and outputs kept; needs "
                   "onnxprune[fp16]).")
@_shape_option
@_runs_option
@_budget_option
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
    from .verify.bench import BenchOptions, benchmark, parse_batches

    if runs is not None and budget is not None:
        raise UserError("give --runs or --budget, not both")
    options = BenchOptions(provider=provider, threads=threads, runs=runs,
                           budget_s=1.0 if budget is None else budget, warmup=warmup,
                           fp16=fp16, nhwc=nhwc, tf32=tf32, algo_search=algo_search.upper(),
                           device_id=device_id)
    show = not as_json and sys.stderr.isatty()
    try:
        result = benchmark(models, parse_batches(batches), options, parse_shapes(input_shape),
                           progress=_bench_progress if show else None)
    finally:
        if show:
            click.echo(f"\r{'':78}\r", nl=False, err=True)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    _print_bench(result)


def _bench_progress(done: int, total: int, label: str) -> None:
    """One line on a terminal's stderr, rewritten in place (never in pipes or logs)."""
    if done < total:
        click.echo(f"\r{f'{label} ({done}/{total} measured)'[:78]:<78}", nl=False, err=True)


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def _times(value, fmt: str, suffix: str = "") -> str:
    return "n/a" if value is None else format(value, fmt) + suffix


def _print_bench(result: dict) -> None:
    m, s = result["machine"], result["settings"]
    click.echo(f"onnxruntime {m['onnxruntime']}, {m['provider']}, {m['threads']} thread(s), "
               f"{s['precision']}, graph optimizations {s['graph_optimization']}; {m['cpu']} "
               f"({m['cores']} cores)")
    if "cuda" in m:
        c = m["cuda"]
        on = {True: "on", False: "off"}
        click.echo(f"GPU {c['gpu'] or 'unknown'} (device {c['device_id']}): TF32 {on[c['tf32']]}, "
                   f"prefer_nhwc {on[c['prefer_nhwc']]}, cudnn_conv_algo_search "
                   f"{c['cudnn_conv_algo_search']}, inputs bound on the device (IOBinding)")
    how = f"{s['runs']} timed runs" if s["runs"] else f"{s['budget_s']:g} s of timed runs"
    click.echo(f"{how} per model and batch after {s['warmup']} warm-up runs; speedup, MAC ratio "
               "and efficiency are against the first model at the same batch")
    if s["precision"] == "fp16" and m["provider"] == "CPUExecutionProvider":
        click.echo("note: the CPU provider has few float16 kernels: expect casts, not speed")
    width = min(max(len(r["model"]) for r in result["rows"]), 48)
    click.echo(f"{'batch':>5}  {'model':<{width}} {'median ms':>10} {'p90 ms':>9} {'min ms':>9} "
               f"{'samples/s':>10} {'params':>8} {'MACs':>8} {'size':>8} {'speedup':>8} "
               f"{'MAC ratio':>9} {'efficiency':>10}")
    for r in result["rows"]:
        name = r["model"] if len(r["model"]) <= width else "..." + r["model"][-(width - 3):]
        click.echo(f"{r['batch']:>5}  {name:<{width}} {r['median_s'] * 1e3:>10.3f} "
                   f"{r['p90_s'] * 1e3:>9.3f} {r['min_s'] * 1e3:>9.3f} "
                   f"{_times(r['throughput'], '.1f'):>10} {_fmt(r['params']):>8} "
                   f"{_fmt(r['macs']):>8} {_bytes(r['file_bytes']):>8} "
                   f"{_times(r['speedup'], '.2f', 'x'):>8} {_times(r['mac_ratio'], '.2f', 'x'):>9} "
                   f"{_times(r['efficiency'], '.2f'):>10}")


@cli.command()
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
@click.option("--samples", type=int, default=None,
              help="How many random inputs (default 32, or one per label), or at most how many "
                   "images of a folder.")
@_shape_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def compare(original, pruned, data, preprocess, labels, samples, input_shape, as_json):
    """How far PRUNED's outputs moved from ORIGINAL's on the same inputs, and, with labels,
    what it cost in accuracy and in which classes."""
    from .verify.compare import compare_models

    if samples is not None and samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")
    info = compare_models(original, pruned, data, labels, parse_shapes(input_shape), preprocess,
                          samples)
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    _print_compare(info)


def _print_compare(info: dict) -> None:
    a, b = info["cost"]["original"], info["cost"]["pruned"]
    click.echo(f"{info['pruned']} against {info['original']} on {info['samples']} samples "
               f"({info['data']})")
    click.echo(f"params {_fmt(a['params'])} -> {_fmt(b['params'])} "
               f"({_ratio(b['params'], a['params'])} kept), MACs {_fmt(a['macs'])} -> "
               f"{_fmt(b['macs'])} ({_ratio(b['macs'], a['macs'])} kept)")
    width = max([6] + [len(o["name"]) for o in info["outputs"]])
    click.echo(f"{'output':<{width}} {'shape':>14} {'max abs err':>12} {'mean abs err':>12} "
               f"{'cosine mean':>11} {'cosine min':>10} {'top-1 agree':>11}")
    for o in info["outputs"]:
        agree = "n/a" if o["top1_agreement"] is None else f"{o['top1_agreement']:.1%}"
        click.echo(f"{o['name']:<{width}} {'x'.join(map(str, o['shape'])) or 'scalar':>14} "
                   f"{o['max_abs_error']:>12.4g} {o['mean_abs_error']:>12.4g} "
                   f"{o['cosine_mean']:>11.5f} {o['cosine_min']:>10.5f} {agree:>11}")
    lab = info["labels"]
    if not lab:
        return
    click.echo(f"labels {lab['source']} on output {lab['output']}: accuracy "
               f"{lab['accuracy_before']:.2%} -> {lab['accuracy_after']:.2%} "
               f"(drop {lab['accuracy_drop'] * 100:.2f} points)")
    shown = lab["classes"] if len(lab["classes"]) <= 20 else [
        c for c in lab["classes"] if c["flagged"]]
    if shown:
        click.echo(f"{'class':>7} {'support':>8} {'recall before':>14} {'recall after':>13} "
                   f"{'drop':>8}")
    for c in shown:
        click.echo(f"{c['class']:>7} {c['support']:>8} {c['recall_before']:>14.2%} "
                   f"{c['recall_after']:>13.2%} {c['drop'] * 100:>8.2f}"
                   + ("  <- drops more than the accuracy" if c["flagged"] else ""))
    if lab["flagged"]:
        click.echo(f"flagged: {len(lab['flagged'])} class(es) lose more recall than the overall "
                   f"accuracy: {', '.join(map(str, lab['flagged']))}")
    else:
        click.echo("flagged: none (no class loses more recall than the overall accuracy)")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--ratios", default="0.1:0.9:0.1", show_default=True, metavar="START:STOP:STEP",
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
@_preprocess_option("a --data or --calib folder")
@click.option("--labels", default=None, type=click.Path(dir_okay=False),
              help="A .npy of integer class ids, one per --data sample: accuracy per ratio.")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Batch size the latency is measured at.")
@_threads_option
@_runs_option
@_budget_option
@_shape_option
@_criterion_option
@_calib_option
@_compensate_option
@_round_to_option
@_heads_option("each ratio")
@_mlp_option("each ratio")
@_allocation_option
@click.option("--json", "as_json", is_flag=True,
              help="Everything as one JSON document on stdout (rows, settings, machine).")
def sweep(model, ratios, out_dir, csv_path, plot, data, preprocess, labels, batch, threads, runs,
          budget, input_shape, criterion, calib, compensate, round_to, heads, mlp, allocation,
          as_json):
    """Prune MODEL at a range of ratios and measure each against the dense model: latency,
    speedup against the MAC ratio, params and MACs kept, and fidelity (cosine, top-1
    agreement, accuracy with labels). A ratio that fails is a row with its error."""
    from .verify.bench import BenchOptions
    from .verify.sweep import check_output_path, parse_ratios, plot_sweep, write_csv
    from .verify.sweep import sweep as run_sweep

    values = parse_ratios(ratios)
    check_output_path(csv_path, "--csv")
    check_output_path(plot, "--plot", ".png")
    if plot and importlib.util.find_spec("matplotlib") is None:
        raise UserError("--plot needs matplotlib: pip install 'onnxprune[plot]'")
    if runs is not None and budget is not None:
        raise UserError("give --runs or --budget, not both")
    options = BenchOptions(threads=threads, runs=runs,
                           budget_s=1.0 if budget is None else budget)
    strategy = api.Strategy(criterion, allocation=allocation, compensate=compensate)
    show = sys.stderr.isatty()
    try:
        result = run_sweep(model, values, batch, options, data, labels,
                           preprocess if os.path.isdir(data) else None, parse_shapes(input_shape),
                           out_dir, _sweep_progress if show else None, strategy=strategy,
                           calib=_sweep_sources(calib, preprocess, data), round_to=round_to,
                           heads=heads, mlp=mlp)
    finally:
        if show:
            click.echo(f"\r{'':78}\r", nl=False, err=True)
    if csv_path:
        write_csv(result, csv_path)
    if plot:
        plot_sweep(result, plot)
    result.update(csv=csv_path, plot=plot, out_dir=out_dir)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    _print_sweep(result)


def _sweep_sources(values, preprocess, data):
    """--calib as calibration sources; --preprocess applies to every image folder among
    --data and --calib, so it must name at least one."""
    if preprocess and not os.path.isdir(data) and not any(
            os.path.isdir(parse_source(v).data) for v in values):
        raise UserError("--preprocess goes with an image folder (--data or --calib)")
    sources = [parse_source(v) for v in values]
    return [parse_source(v, preprocess if os.path.isdir(s.data) else None)
            for v, s in zip(values, sources)] or None


def _sweep_progress(done: int, total: int, label: str) -> None:
    """One line on a terminal's stderr, rewritten in place (never in pipes or logs)."""
    click.echo(f"\r{f'sweep {done}/{total}: {label}'[:78]:<78}", nl=False, err=True)


def _pct(value) -> str:
    return _times(value, ".1%")


def _print_sweep(result: dict) -> None:
    s, m, f = result["settings"], result["machine"], result["fidelity"]
    p = s["prune"]
    click.echo(f"sweep of {result['model']}: criterion {p['criterion']}, allocation "
               f"{p['allocation']}, compensate {p['compensate']}, round-to {p['round_to']}"
               + "".join(f", {k} {p[k]:g}" for k in ("heads", "mlp") if p[k] is not None)
               + (f", calib {' + '.join(p['calib'])}" if p["calib"] else ""))
    how = f"{s['runs']} timed runs" if s["runs"] else f"{s['budget_s']:g} s of timed runs"
    click.echo(f"latency at batch {s['batch']}: onnxruntime {m['onnxruntime']}, {m['provider']}, "
               f"{m['threads']} thread(s), graph optimizations {s['graph_optimization']}, {how} "
               f"per model after {s['warmup']} warm-up runs; {m['cpu']} ({m['cores']} cores)")
    click.echo(f"fidelity against the dense model on {f['samples']} samples ({f['data']})"
               + (f", labels {f['labels']}" if f["labels"] else "")
               + "; speedup and MAC ratio against the dense model (ratio 0)")
    click.echo(f"{'ratio':>6} {'params':>8} {'kept':>7} {'MACs':>8} {'kept':>7} {'median ms':>10} "
               f"{'p90 ms':>9} {'min ms':>9} {'speedup':>8} {'MAC ratio':>9} {'cos mean':>9} "
               f"{'cos min':>9} {'max abs err':>11} {'top-1':>7} {'accuracy':>8} {'size':>8}")
    for r in result["rows"]:
        if r["error"]:
            click.echo(f"{r['ratio']:>6g}  error: {r['error']}")
            continue
        click.echo(f"{r['ratio']:>6g} {_fmt(r['params']):>8} {_pct(r['params_kept']):>7} "
                   f"{_fmt(r['macs']):>8} {_pct(r['macs_kept']):>7} "
                   f"{r['latency_median_ms']:>10.3f} {r['latency_p90_ms']:>9.3f} "
                   f"{r['latency_min_ms']:>9.3f} {_times(r['speedup'], '.2f', 'x'):>8} "
                   f"{_times(r['mac_ratio'], '.2f', 'x'):>9} {r['cosine_mean']:>9.5f} "
                   f"{r['cosine_min']:>9.5f} {r['max_abs_error']:>11.4g} "
                   f"{_pct(r['top1_agreement']):>7} {_pct(r['accuracy']):>8} "
                   f"{_bytes(r['size_bytes']):>8}")
    failed = sum(1 for r in result["rows"] if r["error"])
    if failed:
        click.echo(f"{failed} ratio(s) failed; the others are complete")
    written = [r["path"] for r in result["rows"][1:] if r["path"]]
    for path in [result["csv"], result["plot"]] + written:
        if path:
            click.echo(f"wrote {path}")


def main(argv=None) -> int:
    try:
        cli.main(args=argv, prog_name="onnxprune", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_INTERNAL
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except OnnxPruneError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - never a traceback, but say it is our bug
        click.echo(f"internal error: {type(exc).__name__}: {one_line(str(exc))}; {REPORT_BUG}",
                   err=True)
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
