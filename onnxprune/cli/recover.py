"""``onnxprune recover``: train a pruned model to reproduce its dense original (distillation
on unlabeled inputs; the ``grad`` extra), and the options ``prune --recover`` shares."""

from __future__ import annotations

import click

from ..io import check_writable, save_model, write_atomically
from ..pipeline.recover import recover_pruned
from ..recovery import LOSSES, TRAIN, RecoverOptions
from .console import echo, progress_for, show, table
from .params import calib_sources, choice, preprocess_option, shape_option, shapes_of


def recovery_options(f):
    """How recovery trains (a RecoverOptions' fields), as ``--recover-*`` flags."""
    decorators = [
        click.option("--recover-budget", type=float, default=RecoverOptions.budget,
                     show_default=True, help="Seconds of training at most."),
        click.option("--recover-train", type=choice(TRAIN), default=RecoverOptions.train,
                     show_default=True,
                     help="Train the vector constants (biases, normalization scales and "
                          "shifts) or all float constants."),
        click.option("--recover-loss", type=choice(LOSSES), default=RecoverOptions.loss,
                     show_default=True,
                     help="Per output: KL on probabilities and scaled MSE otherwise (auto), "
                          "or one of them for all."),
        click.option("--recover-lr", type=float, default=None,
                     help="Adam's learning rate (default 1e-3 for biases, 1e-4 for all)."),
        click.option("--recover-held-out", type=float, default=RecoverOptions.held_out,
                     show_default=True,
                     help="Share of the samples held out for early stopping."),
        click.option("--recover-samples", type=int, default=RecoverOptions.samples,
                     show_default=True,
                     help="Samples drawn from a generated --calib source (natural, inverted, random)."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


# Only prune knows which channels of each thinned tensor its plan kept.
features_option = click.option(
    "--recover-features", type=float, default=RecoverOptions.features, show_default=True,
    help="Weight of the kept channels of thinned intermediate tensors (those linear layers "
         "read) in the recovery loss, beside the outputs (0: outputs only).")

RECOVERY_FLAGS = ("recover_budget", "recover_train", "recover_loss", "recover_lr",
                  "recover_held_out", "recover_samples", "recover_features")


def recover_options_from(params: dict, seed: int = 0) -> RecoverOptions:
    options = RecoverOptions(budget=params.pop("recover_budget"),
                             train=params.pop("recover_train"),
                             loss=params.pop("recover_loss"), lr=params.pop("recover_lr"),
                             held_out=params.pop("recover_held_out"),
                             samples=params.pop("recover_samples"), seed=seed,
                             features=params.pop("recover_features", 0.0))
    options.check()
    return options


@click.command()
@click.argument("dense", type=click.Path(dir_okay=False))
@click.argument("pruned", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(), required=True,
              help="Where to write the recovered model.")
@click.option("--calib", multiple=True, metavar="DATA", required=True,
              help="Unlabeled inputs to distil on: an .npz (one array per input, samples on "
                   "axis 0), a folder of images (see --preprocess), or a generated source: "
                   "'natural' (dead-leaves images), 'inverted' (those optimized through the "
                   "dense model) or 'random'. Repeatable.")
@preprocess_option()
@shape_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--report", "report_path", type=click.Path(), default=None,
              help="Write what recovery did as JSON.")
@recovery_options
def recover(dense, pruned, output, calib, preprocess, input_shape, seed, report_path,
            **params):
    """Train PRUNED (pruned from DENSE) to reproduce DENSE's outputs; write it to OUTPUT.

    Only initializer values change; the result passes the full checker and runs on ONNX
    Runtime with the same inputs and outputs. Needs PyTorch and onnx2torch
    (pip install 'onnxprune[grad]')."""
    options = recover_options_from(params, seed)
    check_writable(output)
    if report_path:
        check_writable(report_path)
    model, report = recover_pruned(dense, pruned, calib_sources(calib, preprocess), options,
                                   shapes_of(input_shape), progress_for())
    if report_path:
        import json

        write_atomically(report_path, lambda tmp: _dump(report, tmp, json))
    save_model(model, output)
    print_recovery(report)
    echo(f"wrote {output}")


def _dump(report, path, json) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)


def print_recovery(r: dict) -> None:
    """The recovery summary: what trained, how long, loss and held-out fidelity."""
    loss = r["loss"]
    echo(f"recovery: trained {r['tensors']} {r['train']} tensors ({r['params']:,} params) on "
         f"{r['samples']['train']} samples, {r['steps']} steps in {r['seconds']:.0f} s "
         f"({r['stopped']}); held-out loss {loss['held_out_before']:.4g} → "
         f"{loss['held_out_after']:.4g} on {r['samples']['held_out']} samples")
    rows = table("output", "loss", "held-out cosine", "top-1 agreement")
    for o in r["outputs"][:3]:
        rows.add_row(o["name"], o["loss"], f"{o['cosine_before']:.3f} → {o['cosine_after']:.3f}",
                     "-" if o["top1_before"] is None else
                     f"{o['top1_before']:.0%} → {o['top1_after']:.0%}")
    show(rows)
    for note in r["notes"]:
        echo(f"  note: {note}")
