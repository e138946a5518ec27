"""``onnxprune inspect`` (channel groups) and ``onnxprune sensitivity`` (what each group
costs when pruned alone): reports that prune nothing."""

from __future__ import annotations

import json

import click

from .. import pipeline
from ..errors import UserError
from ..pipeline import Strategy
from .console import echo, fmt, progress_for, show, table
from ..importance import CRITERIA
from .params import (NumberListType, choice, calib_sources, executor_from, executor_options,
                     preprocess_option, shape_option, shapes_of)

SHOWN_DEAD = 10


@click.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--exclude", multiple=True, metavar="NODE")
@shape_option
def inspect(model, as_json, exclude, input_shape):
    """List the channel groups of MODEL and its params/MACs."""
    info = pipeline.inspect(model, exclude=tuple(exclude), input_shapes=shapes_of(input_shape))
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    echo(f"opset {info['opset']}, {info['nodes']} nodes, params {fmt(info['params'])}, "
         f"MACs {fmt(info['macs'])}")
    rows = table("group|right", "kind", "channels|right", "units|right", "prunable", "members")
    for g in info["groups"]:
        why = "" if g["prunable"] else f"  [{g.get('reason')}]"
        members = ", ".join(g["members"][:4]) + (" ..." if len(g["members"]) > 4 else "")
        rows.add_row(str(g["id"]), g["kind"], str(g["channels"]), str(g["units"]),
                     "yes" if g["prunable"] else "no", members + why)
    show(rows)
    echo(f"{sum(g['prunable'] for g in info['groups'])} of {len(info['groups'])} groups "
         f"prunable; {len(info['barriers'])} barrier ops")


@click.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--calib", multiple=True, default=("synthetic",), show_default=True,
              metavar="DATA[@WEIGHT]", help="Inputs the distortion is measured on (as for "
              "prune: .npz, image folder, random, synthetic; repeat to fuse weighted sets).")
@preprocess_option()
@click.option("--ratios", type=NumberListType(), default="0.25,0.5,0.75", show_default=True,
              help="Comma-separated shares of each group to mask.")
@click.option("--criterion", type=choice(CRITERIA), default="l2",
              show_default=True,
              help="Which components of a group are masked first (the lowest-scoring).")
@click.option("--exclude", multiple=True, metavar="NODE")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random and synthetic inputs and the random criterion.")
@shape_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plot", type=click.Path(), default=None,
              help="Write a PNG of distortion against ratio per group (needs matplotlib).")
@executor_options
def sensitivity(model, calib, preprocess, ratios, criterion, exclude, seed, input_shape,
                as_json, plot, **params):
    """How much each group hurts MODEL's outputs when pruned alone, and its dead channels."""
    executor = executor_from(params)[0]
    calib = calib_sources(calib, preprocess)
    if plot and not plot.lower().endswith(".png"):
        raise UserError("--plot writes a PNG: give a path ending in .png")
    info = pipeline.sensitivity(model, calib, ratios, Strategy(criterion),
                                shapes_of(input_shape), tuple(exclude),
                                progress=progress_for(as_json), seed=seed,
                                executor=executor)
    if plot:
        _plot_sensitivity(info, plot)
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    _print_sensitivity(info, ratios, criterion)
    if plot:
        echo(f"wrote {plot}")


def _print_sensitivity(info: dict, ratios, criterion: str) -> None:
    echo(f"distortion = |y_masked - y|^2 / |y|^2 on {info['calibration']['samples']} samples "
         f"({info['calibration']['source']}); lowest-{criterion} components first"
         + (f", re-fitted by {info['compensation']} compensation"
            if info["compensation"] != "none" else ""))
    rows = table("group|right", "kind", "channels|right",
                 *(f"r={r:g}|right" for r in ratios), "source")
    for g in sorted(info["groups"], key=lambda g: -g["distortion"][ratios[-1]]):
        rows.add_row(str(g["group"]), g["kind"], str(g["channels"]),
                     *(f"{g['distortion'][r]:.4f}" for r in ratios), g["source"])
    show(rows)
    dead = sorted(info["dead_channels"], key=lambda d: -d["mean_zero_rate"])
    if dead:
        rows = table("zeros|right", "always 0|right", "channels|right", "tensor",
                     title="dead channels (share of exact zeros where linear layers read)")
        for d in dead[:SHOWN_DEAD]:
            rows.add_row(f"{d['mean_zero_rate']:.1%}", str(d["dead"]), str(d["channels"]),
                         d["tensor"])
        show(rows)


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

