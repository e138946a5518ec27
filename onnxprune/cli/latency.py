"""``onnxprune latency-bundle``: what a deployment device must time for ``--target-latency``
to be predicted for it (``runtime.device_timer`` times it there with onnxruntime alone)."""

from __future__ import annotations

import click

from ..pipeline.latency_bundle import LEVELS, write_bundle
from ..pipeline.options import DEFAULT_ROUND_TO
from ..runtime.hardware import round_to_for
from .console import echo, progress_for
from .params import RoundTo, shape_option, shapes_of


@click.command("latency-bundle")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("folder", type=click.Path(file_okay=False))
@shape_option
@click.option("--round-to", type=RoundTo(), default=DEFAULT_ROUND_TO, show_default=True,
              help="Time widths on multiples of this (the --round-to you will prune with; "
                   "auto: this machine's).")
@click.option("--levels", type=click.IntRange(2, 32), default=LEVELS, show_default=True,
              help="Widths timed per layer side (kept fractions 1/levels .. 1).")
def latency_bundle(model, folder, input_shape, round_to, levels):
    """Write into the new FOLDER the one-node models of MODEL's latency table at a grid of
    widths, with a script that times them. On the device (onnxruntime alone):
    `python FOLDER/device_timer.py FOLDER`, then, here:
    `onnxprune prune MODEL --target-latency F --latency-table FOLDER/table.json
    --latency-device NAME`."""
    round_to = round_to_for() if round_to == "auto" else round_to
    summary = write_bundle(model, folder, shapes_of(input_shape), round_to, levels,
                           progress_for())
    echo(f"wrote {summary.folder}: {summary.models} one-node models ({summary.layers} layers, "
         f"{summary.streams} stream nodes, {summary.grid_points} grid points)")
    echo(f"on the device: python {summary.folder}/device_timer.py {summary.folder} "
         "[--threads N] [--provider cpu|cuda]")
