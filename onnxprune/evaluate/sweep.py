"""A ratio sweep: prune one model at several ratios and measure what each ratio buys and costs.

Picking a ratio is a trade between measured speed and fidelity, and neither is linear in the
ratio (``round_to`` steps, blocked kernels, layers that suddenly lose their last channels), so
it has to be measured across the range rather than guessed from one point. Every ratio is
pruned and verified as ``prune`` does; the dense model and all pruned ones are then timed in
ONE interleaved ``benchmark`` (drift on a busy machine falls on all of them alike, and every
speedup is against the same dense timing), and compared with the dense model on the same inputs
(``compare``'s measures, the dense outputs computed once). A ratio that fails is a row with its
error, not the end of the sweep.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import onnx

from ..errors import UserError, VerificationError
from ..io import check_writable, load_model, save_model, write_atomically
from ..io.weights import discard_written
from ..parallel import Failed, InProcess
from ..pipeline import PruneOptions, analyze_model, prune, score_model
from ..progress import task
from .bench import BenchOptions, batch_shapes, benchmark, model_overrides
from .compare import compare_with_reference, reference_run

MAX_RATIOS = 100   # a typo like 0:0.9:0.001 should be an error, not a day of pruning
CSV_COLUMNS = ("ratio", "params", "macs", "params_kept", "macs_kept", "latency_median_ms",
               "latency_p90_ms", "latency_min_ms", "speedup", "mac_ratio", "cosine_mean",
               "cosine_min", "max_abs_error", "top1_agreement", "accuracy", "error")
NOT_SWEPT = ("ratio", "target_macs", "target_params", "target_latency", "steps", "verify")


# --- ratios ---------------------------------------------------------------------------------

def parse_ratios(text: str) -> tuple[float, ...]:
    """``start:stop:step`` (stop included within float tolerance) or ``0.25,0.5`` → sorted,
    unique ratios in [0, 1). Typed by people, so each mistake is a one-line error."""
    text = str(text).strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise UserError(f"--ratios expects START:STOP:STEP or a comma list, got {text!r}")
        start, stop, step = (_number(p, text) for p in parts)
        if not step > 0:
            raise UserError(f"--ratios {text!r}: the step must be positive")
        if stop < start:
            raise UserError(f"--ratios {text!r}: the stop is below the start")
        count = math.floor((stop - start) / step + 1e-9) + 1
        if count > MAX_RATIOS:
            raise UserError(f"--ratios {text!r} gives {count} ratios; at most {MAX_RATIOS}")
        values = [round(start + k * step, 10) for k in range(count)]
    else:
        values = [_number(p, text) for p in text.split(",")]
    for value in values:
        if not 0.0 <= value < 1.0:
            raise UserError(f"--ratios must be in [0, 1), got {value:g} (from {text!r})")
    return tuple(sorted(set(values)))


def _number(part: str, text: str) -> float:
    try:
        value = float(part)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"--ratios expects numbers like 0.1:0.9:0.1 or 0.25,0.5, got {text!r}")
    return value


# --- output paths ---------------------------------------------------------------------------

def check_output_path(path, what: str, suffix: str | None = None) -> None:
    """Fail before any work, not after minutes of it: the folder must exist and, for a plot,
    the name must say PNG."""
    if path is None:
        return
    target = Path(path)
    if suffix and target.suffix.lower() != suffix:
        raise UserError(f"{what} writes a {suffix[1:].upper()}: give a path ending in {suffix}")
    if target.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file name")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{what}: folder does not exist: {folder}")
    check_writable(target)


def _check_out_dir(out_dir) -> None:
    if out_dir is None:
        return
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise UserError(f"--out-dir {out_dir} is a file, not a folder")
    if not target.exists() and not target.parent.is_dir():
        raise UserError(f"--out-dir: folder does not exist: {target.parent}")


# --- the sweep ------------------------------------------------------------------------------

def sweep(model, ratios: Sequence[float], options: PruneOptions | None = None, batch: int = 1,
          bench: BenchOptions | None = None, data: str = "random", labels=None,
          preprocess: str | None = None, out_dir=None, progress=None) -> dict:
    """Prune ``model`` at every ratio with ``options`` (everything but the ratio: strategy,
    calibration, round_to, heads, mlp, exclude, input shapes, seed, ...), time all of them
    against the dense model at ``batch`` and compare each with it on ``data`` (as ``compare``
    reads it, with ``labels``).

    The dense model is always the first row (ratio 0). With ``out_dir`` each pruned model is
    saved there as ``STEM.rRATIO.onnx``. ``progress``: see :mod:`onnxprune.progress`. Returns
    a JSON-ready dict: ``rows`` (one per ratio, ``CSV_COLUMNS`` and more), ``machine``,
    ``settings``, ``fidelity``."""
    ratios, bench = _ratios_with_dense(ratios), bench or BenchOptions()
    options = options or PruneOptions()
    _check_inputs(options, bench, batch, out_dir)
    shapes = options.input_shapes
    dense = load_model(model)
    batch_shapes(dense, batch, model_overrides(dense, shapes), _label(model))
    with task(progress, "reading the comparison data and running the dense model"):
        reference = reference_run(model if _is_path(model) else dense, data, labels, shapes,
                                  preprocess)     # a path: errors name the file
    fidelity = {0.0: compare_with_reference(reference, dense)}
    analyzed = analyze_model(dense, options.exclude)
    executor = options.executor or InProcess()
    scoring = score_model(analyzed, options.strategy, options.calib, shapes, options.seed,
                          progress, executor)   # once for every ratio
    rows = [_empty_row(0.0, str(model) if _is_path(model) else None)]
    timed = [model if _is_path(model) else dense]   # a path: its file size, external data too
    shared = (analyzed, options.replace(executor=None), scoring, reference, out_dir, model)
    done = executor.map(shared, _ratio_row, ratios[1:], progress=progress,
                        description="pruning and comparing each ratio")
    for ratio, result in zip(ratios[1:], done):
        if isinstance(result, Failed):
            result = ({**_empty_row(ratio), "error": result.error}, None, None)
        row, compared, pruned = result
        rows.append(row)
        if compared is not None:
            fidelity[ratio] = compared
            timed.append(row["path"] or pruned)
    if executor.kind == "ray":      # on a node that times nothing else meanwhile
        times = executor.map((timed, batch, bench, shapes), _time_all, [None], timing=True)[0]
        if isinstance(times, Failed):
            raise UserError(f"timing the sweep's models failed twice: {times.error}")
    else:
        times = benchmark(timed, (batch,), bench, shapes, progress=progress)
    _merge(rows, times["rows"], fidelity)
    settings = {**times["settings"], "batch": batch, "ratios": list(ratios),
                "prune": _describe(options), **executor.describe()}
    return {"model": _label(model), "settings": settings, "machine": times["machine"],
            "fidelity": {"data": reference.data, "samples": reference.samples,
                         "labels": reference.label_source},
            "rows": rows}


def _ratio_row(shared, ratio: float):
    """Prune at one ratio (where the executor runs it; ``shared`` reached it once): its row,
    its comparison with the dense model and the pruned model (both None when the ratio
    failed: the row then holds the error)."""
    analyzed, options, scoring, reference, out_dir, model = shared
    row = _empty_row(ratio)
    try:
        pruned, report = prune(analyzed, options.replace(ratio=ratio), scoring=scoring)
        compared = compare_with_reference(reference, pruned)
        row["max_rel_error"] = report["check"]["max_rel_error"]
        if out_dir is not None:
            row["path"] = str(_save(pruned, out_dir, model, ratio))
            discard_written(pruned, keep=[analyzed.model])  # timed from its file now
    except (UserError, VerificationError) as exc:
        row["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return row, None, None
    return row, compared, pruned


def _time_all(shared, _):
    """Every model of the sweep in one interleaved benchmark (on one node, alone there)."""
    timed, batch, bench, shapes = shared
    return benchmark(timed, (batch,), bench, shapes)


def _ratios_with_dense(ratios: Sequence[float]) -> list[float]:
    """The ratios in order with 0 (the dense reference) first, once."""
    values = sorted({round(float(r), 10) for r in ratios} | {0.0})
    for value in values:
        if not 0.0 <= value < 1.0:
            raise UserError(f"ratios must be in [0, 1), got {value:g}")
    if len(values) > MAX_RATIOS + 1:
        raise UserError(f"{len(values) - 1} ratios; at most {MAX_RATIOS}")
    return values


def _check_inputs(options: PruneOptions, bench: BenchOptions, batch: int, out_dir) -> None:
    """Everything that would fail at every ratio fails once, before any pruning."""
    fixed = sorted(name for name in options.given() if name in NOT_SWEPT)
    if fixed:
        raise UserError(f"a sweep sets the ratio itself and prunes in one verified step: it "
                        f"takes no {', '.join(fixed)}")
    bench.check()
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    options.check()
    _check_out_dir(out_dir)


def _empty_row(ratio: float, path: str | None = None) -> dict:
    row = {name: None for name in CSV_COLUMNS}
    row.update(ratio=ratio, size_bytes=None, efficiency=None, runs=None, max_rel_error=None,
               path=path, outputs=None)
    return row


def _save(pruned: onnx.ModelProto, out_dir, model, ratio: float) -> Path:
    os.makedirs(out_dir, exist_ok=True)
    stem = Path(_label(model)).stem if _is_path(model) else "model"
    return save_model(pruned, Path(out_dir) / f"{stem}.r{ratio:g}.onnx")


def _merge(rows: list[dict], timed: list[dict], fidelity: dict) -> None:
    """Fill the rows that were pruned (in order) from the bench rows and the comparisons."""
    ok = [row for row in rows if row["error"] is None]
    dense = timed[0]
    for row, t in zip(ok, timed):
        row.update(params=t["params"], macs=t["macs"], size_bytes=t["file_bytes"],
                   params_kept=_share(t["params"], dense["params"]),
                   macs_kept=_share(t["macs"], dense["macs"]),
                   latency_median_ms=t["median_s"] * 1e3, latency_p90_ms=t["p90_s"] * 1e3,
                   latency_min_ms=t["min_s"] * 1e3, speedup=t["speedup"],
                   mac_ratio=t["mac_ratio"], efficiency=t["efficiency"], runs=t["runs"])
        row.update(fidelity_summary(fidelity[row["ratio"]]))


def _share(value, whole) -> float | None:
    return value / whole if value is not None and whole else None


def fidelity_summary(report: dict) -> dict:
    """One row's fidelity from a ``compare`` report. A row needs one number per measure, so
    over several outputs it takes the worst (lowest cosine, largest error); top-1 agreement is
    that of the labels' output, else of the first output of class scores."""
    outs = report["outputs"]
    scores = [o for o in outs if o["top1_agreement"] is not None]
    if report["labels"]:
        scores = [o for o in outs if o["name"] == report["labels"]["output"]] or scores
    return {"cosine_mean": min(o["cosine_mean"] for o in outs),
            "cosine_min": min(o["cosine_min"] for o in outs),
            "max_abs_error": max(o["max_abs_error"] for o in outs),
            "top1_agreement": scores[0]["top1_agreement"] if scores else None,
            "accuracy": report["labels"]["accuracy_after"] if report["labels"] else None,
            "outputs": [{k: o[k] for k in ("name", "max_abs_error", "mean_abs_error",
                                           "cosine_mean", "cosine_min", "top1_agreement")}
                        for o in outs]}


def _describe(options: PruneOptions) -> dict:
    strategy, calib = options.strategy, options.calib
    return {"criterion": strategy.criterion, "allocation": strategy.allocation,
            "compensate": strategy.compensation, "round_to": options.round_to,
            "heads": options.heads, "mlp": options.mlp, "hidden": options.hidden,
            "calib": None if calib is None else [_source(c) for c in _as_list(calib)],
            "exclude": list(options.exclude), "reduction": strategy.reduction,
            "normalization": strategy.normalize_by, "max_ratio": strategy.group_cap,
            "rank_by": strategy.rank_by, "damping": strategy.damping, "seed": options.seed}


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _source(source) -> str:
    describe = getattr(source, "describe", None)
    text = describe() if describe else (source if isinstance(source, str) else "feeds")
    weight = getattr(source, "weight", 1.0)
    return text if weight == 1.0 else f"{text}@{weight:g}"


def _is_path(model) -> bool:
    return isinstance(model, (str, os.PathLike))


def _label(model) -> str:
    return str(model) if _is_path(model) else "<ModelProto>"


# --- CSV and plot ---------------------------------------------------------------------------

def write_csv(result: dict, path) -> None:
    """One row per ratio, ``CSV_COLUMNS``; unknown numbers (a failed ratio, no labels) are
    empty cells. Floats are written in full (``repr``) so they equal the JSON's."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(CSV_COLUMNS)
            for row in result["rows"]:
                out.writerow(["" if row[c] is None else repr(row[c]) if isinstance(row[c], float)
                              else row[c] for c in CSV_COLUMNS])
    write_atomically(path, write)


def plot_sweep(result: dict, path) -> None:
    """A 2x2 PNG against the ratio: latency, params and MACs kept, speedup and MAC ratio,
    fidelity. Failed ratios are gaps."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'onnxprune[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = result["rows"]
    x = [r["ratio"] for r in rows]

    def col(name, scale=1.0):
        return [math.nan if r[name] is None else r[name] * scale for r in rows]

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    (lat, kept), (speed, fid) = axes
    lat.fill_between(x, col("latency_min_ms"), col("latency_p90_ms"), alpha=0.2,
                     label="min to p90")
    lat.plot(x, col("latency_median_ms"), marker="o", label="median")
    lat.set_ylabel("latency (ms)")
    lat.set_ylim(bottom=0)
    kept.plot(x, col("params_kept", 100), marker="o", label="params")
    kept.plot(x, col("macs_kept", 100), marker="s", label="MACs")
    kept.set_ylabel("kept (%)")
    kept.set_ylim(0, 105)
    speed.plot(x, col("speedup"), marker="o", label="measured speedup")
    speed.plot(x, col("mac_ratio"), marker="s", linestyle="--", label="MAC ratio")
    speed.axhline(1.0, color="grey", linewidth=0.8)
    speed.set_ylabel("x dense")
    fid.plot(x, col("cosine_mean"), marker="o", label="cosine mean")
    if any(r["top1_agreement"] is not None for r in rows):
        fid.plot(x, col("top1_agreement"), marker="s", label="top-1 agreement")
    if any(r["accuracy"] is not None for r in rows):
        fid.plot(x, col("accuracy"), marker="^", label="accuracy")
    fid.set_ylabel("fidelity")
    for ax in (speed, fid):
        ax.set_xlabel("ratio")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    s = result["settings"]
    f = result["fidelity"]
    fig.suptitle(f"{os.path.basename(result['model'])}: batch {s['batch']}, "
                 f"{s['threads']} thread(s), {s['prune']['criterion']}; fidelity on "
                 f"{f['samples']} samples ({f['data']})", fontsize=10)
    fig.tight_layout()
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
