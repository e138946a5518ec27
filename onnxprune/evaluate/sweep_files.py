"""What a sweep writes besides its JSON: the CSV (one row per model, criterion and ratio) and
the PNG (one model and criterion: four panels against the ratio; several: each model's quality
against its measured speedup, one line per criterion), and the checks that make a bad output
path fail before any pruning."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from ..errors import UserError
from ..io import check_writable, write_atomically

CSV_COLUMNS = ("model", "criterion", "ratio", "params", "macs", "params_kept", "macs_kept",
               "latency_median_ms", "latency_p90_ms", "latency_min_ms", "speedup", "mac_ratio",
               "cosine_mean", "cosine_min", "max_abs_error", "top1_agreement", "accuracy",
               "error")


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


def check_out_dir(out_dir) -> None:
    if out_dir is None:
        return
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise UserError(f"--out-dir {out_dir} is a file, not a folder")
    if not target.exists() and not target.parent.is_dir():
        raise UserError(f"--out-dir: folder does not exist: {target.parent}")


def write_csv(result: dict, path) -> None:
    """One row per model, criterion and ratio, ``CSV_COLUMNS``; unknown numbers (a failed
    ratio, no labels) and the dense rows' criterion are empty cells. Floats are written in
    full (``repr``) so they equal the JSON's."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(CSV_COLUMNS)
            for row in result["rows"]:
                out.writerow(["" if row[c] is None else repr(row[c]) if isinstance(row[c], float)
                              else row[c] for c in CSV_COLUMNS])
    write_atomically(path, write)


def plot_sweep(result: dict, path) -> None:
    """The sweep as a PNG: for one model and one criterion, four panels against the ratio;
    otherwise one panel per model of quality against measured speedup. Failed ratios are
    gaps."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'onnxprune[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if len(result["models"]) == 1 and len(result["criteria"]) == 1:
        fig = _ratio_panels(plt, result)
    else:
        fig = _frontier_panels(plt, result)
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def _column(rows: list[dict], name: str, scale: float = 1.0) -> list[float]:
    return [math.nan if r[name] is None else r[name] * scale for r in rows]


def _ratio_panels(plt, result: dict):
    """Latency, params and MACs kept, speedup against MAC ratio, and fidelity, against the
    ratio (2x2)."""
    rows = result["rows"]
    x = [r["ratio"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    (lat, kept), (speed, fid) = axes
    lat.fill_between(x, _column(rows, "latency_min_ms"), _column(rows, "latency_p90_ms"),
                     alpha=0.2, label="min to p90")
    lat.plot(x, _column(rows, "latency_median_ms"), marker="o", label="median")
    lat.set_ylabel("latency (ms)")
    lat.set_ylim(bottom=0)
    kept.plot(x, _column(rows, "params_kept", 100), marker="o", label="params")
    kept.plot(x, _column(rows, "macs_kept", 100), marker="s", label="MACs")
    kept.set_ylabel("kept (%)")
    kept.set_ylim(0, 105)
    speed.plot(x, _column(rows, "speedup"), marker="o", label="measured speedup")
    speed.plot(x, _column(rows, "mac_ratio"), marker="s", linestyle="--", label="MAC ratio")
    speed.axhline(1.0, color="grey", linewidth=0.8)
    speed.set_ylabel("x dense")
    fid.plot(x, _column(rows, "cosine_mean"), marker="o", label="cosine mean")
    if any(r["top1_agreement"] is not None for r in rows):
        fid.plot(x, _column(rows, "top1_agreement"), marker="s", label="top-1 agreement")
    if any(r["accuracy"] is not None for r in rows):
        fid.plot(x, _column(rows, "accuracy"), marker="^", label="accuracy")
    fid.set_ylabel("fidelity")
    for ax in (speed, fid):
        ax.set_xlabel("ratio")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    s, f = result["settings"], result["sweeps"][0]["fidelity"]
    fig.suptitle(f"{os.path.basename(result['models'][0])}: batch {s['batch']}, "
                 f"{s['threads']} thread(s), {result['criteria'][0]}; fidelity on "
                 f"{f['samples']} samples ({f['data']})", fontsize=10)
    fig.tight_layout()
    return fig


def quality_measure(rows: list[dict]) -> str:
    """What a model's quality axis shows: accuracy with labels, else top-1 agreement with
    the dense model where the outputs are class scores, else the mean cosine."""
    for name in ("accuracy", "top1_agreement"):
        if any(r[name] is not None for r in rows):
            return name
    return "cosine_mean"


def _frontier_panels(plt, result: dict):
    """One panel per model: its quality against the measured speedup, a line per criterion
    from the dense point: which criterion keeps most at the speed a deployment needs."""
    models = result["models"]
    columns = min(3, len(models))
    lines = math.ceil(len(models) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.6 * lines),
                             squeeze=False)
    for ax, model in zip(axes.ravel(), models):
        rows = [r for r in result["rows"] if r["model"] == model and r["ratio"] is not None]
        measure = quality_measure(rows)
        dense = [r for r in rows if r["criterion"] is None]
        for criterion in result["criteria"]:
            line = sorted(dense + [r for r in rows if r["criterion"] == criterion],
                          key=lambda r: r["ratio"])
            ax.plot(_column(line, "speedup"), _column(line, measure), marker="o",
                    label=criterion)
        ax.set_title(os.path.basename(model), fontsize=9)
        ax.set_xlabel("measured speedup (x dense)")
        ax.set_ylabel(measure.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.ravel()[len(models):]:
        ax.axis("off")
    s = result["settings"]
    fig.suptitle(f"batch {s['batch']}, {s['threads']} thread(s), ratios "
                 f"{', '.join(f'{r:g}' for r in s['ratios'][1:])}", fontsize=10)
    fig.tight_layout()
    return fig
