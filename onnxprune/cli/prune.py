"""``onnxprune prune`` and ``onnxprune demo``: write a smaller, verified model."""

from __future__ import annotations

import json
import os
from importlib import resources

import click

from .. import pipeline
from ..errors import UserError
from ..io import check_writable, save_model, write_atomically
from .console import echo, fmt, kept, progress_for, show, table
from .params import calib_sources, prune_options_from, pruning_options
from .recover import (RECOVERY_FLAGS, features_option, print_recovery, recover_options_from,
                      recovery_options)

SHOWN_GROUPS = 12
SHOWN_OUTPUTS = 3


def default_output_path(path) -> str:
    root, ext = os.path.splitext(str(path))
    return f"{root}.pruned{ext or '.onnx'}"


@click.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Where to write the pruned model (default: MODEL.pruned.onnx).")
@click.option("--in-place", is_flag=True,
              help="Replace MODEL itself with the pruned model (atomically; never without "
                   "this flag).")
@click.option("--report", "report_path", type=click.Path(), default=None,
              help="Write the plan and results as JSON.")
@pruning_options()
@click.option("--recover", "recover", is_flag=True,
              help="Then train the pruned model to reproduce MODEL on the --calib inputs "
                   "(distillation; needs the grad extra). See `onnxprune recover`.")
@recovery_options
@features_option
def prune(model, output, in_place, report_path, calib, preprocess, recover, **params):
    """Prune MODEL and write a smaller, verified model."""
    recovery = recover_options_from(params, params.get("seed", 0))
    options, given = prune_options_from(params, calib_sources(calib, preprocess))
    if "blocks" in given and not given & {"ratio", "heads", "mlp", "hidden"}:
        options = options.replace(ratio=0.0)        # depth alone
    if recover:
        options = options.replace(recover=recovery)
    elif any(click.get_current_context().get_parameter_source(name) ==
             click.core.ParameterSource.COMMANDLINE for name in RECOVERY_FLAGS):
        raise UserError("the --recover-* options set how --recover trains: add --recover")
    options.check(given)
    if in_place and output is not None:
        raise UserError("give -o or --in-place, not both")
    run_prune(model, model if in_place else output or default_output_path(model), options,
              report_path, in_place)


@click.command()
@click.option("-o", "--output", type=click.Path(), default="demo_digits.pruned.onnx",
              show_default=True)
@click.option("--ratio", type=float, default=0.5, show_default=True)
def demo(output, ratio):
    """Prune the bundled digits CNN (a small trained model) and show what happened."""
    model = resources.files("onnxprune").joinpath("data/demo_digits.onnx")
    with resources.as_file(model) as path:
        echo(f"pruning the bundled demo model {path.name} at ratio {ratio}")
        run_prune(str(path), output, pipeline.PruneOptions(ratio=ratio))


def run_prune(model, output, options: pipeline.PruneOptions, report_path=None,
              in_place: bool = False) -> None:
    """Prune, write the report (first: one that cannot be written leaves no model behind),
    then the model, then say what happened."""
    same = os.path.exists(output) and os.path.exists(str(model)) and \
        os.path.samefile(output, str(model))
    if same and not in_place:
        raise UserError("the output path is the input file; choose another -o, or give "
                        "--in-place to replace the input")
    check_writable(output)
    if report_path:
        check_writable(report_path)
    pruned, report = pipeline.prune(model, options, progress=progress_for())
    nothing = report.get("nothing_pruned")
    report["output"] = None if nothing else str(output)
    if report_path:
        write_atomically(report_path, lambda tmp: _dump_json(report, tmp))
    if nothing:         # an unchanged copy would pass for a pruned model
        echo(f"nothing to prune: {nothing}; no model written")
        return
    config = pipeline.genai_config_for(model, pruned, output)    # errors before any write
    if config is not None and in_place:
        raise UserError(f"--in-place would leave {pipeline.deployed.GENAI_CONFIG} describing "
                        "the dense model; write the pruned model to another folder with -o")
    save_model(pruned, output, hand_over=True)     # its last use
    print_summary(report)
    if config is not None:
        written = pipeline.write_genai_folder(model, output, config)
        echo(f"wrote {', '.join(written)} beside it (onnxruntime-genai folder)" if written else
             f"warning: {pipeline.deployed.GENAI_CONFIG} not written: the output is in the "
             "model's own folder, whose config describes the dense model; use -o in another "
             "folder for a folder onnxruntime-genai loads")
    if report.get("recovery"):
        print_recovery(report["recovery"])
    echo(f"wrote {output}")


def _dump_json(data, path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def print_summary(report: dict) -> None:
    depth = report.get("depth")
    if depth:
        removed = depth["removed"]
        names = ", ".join(b["block"] for b in removed[:3]) + (" ..." if len(removed) > 3 else "")
        echo(f" depth: {len(removed)} of {depth['candidates']} residual blocks removed "
             f"({names}; scored on {depth['scored_on']}); checked against the model with "
             f"their branches zeroed: max rel error {depth['check']['max_rel_error']:.2e} -> OK")
    groups = report["groups"]
    pruned = [g for g in groups if g["removed"]]
    removed = sum(len(g["removed"]) * g["width"] for g in groups)
    total = sum(g["channels"] for g in groups)
    echo(f"groups: {len(groups)} found, {sum(g['prunable'] for g in groups)} prunable, "
         f"{len(pruned)} pruned; channels removed: {removed} of {total}")
    if pruned:
        rows = table("group|right", "kind", "channels|right", "kept|right", "created by")
        for g in pruned[:SHOWN_GROUPS]:
            rows.add_row(str(g["id"]), g["kind"], str(g["channels"]),
                         str(len(g["kept"]) * g["width"]),
                         ", ".join(g["sources"][:2]) + (" ..." if len(g["sources"]) > 2 else ""))
        show(rows)
        if len(pruned) > SHOWN_GROUPS:
            echo(f"  ... {len(pruned) - SHOWN_GROUPS} more (see --report)")
    for key in ("params", "macs"):
        c = report[key]
        echo(f"{key:>6}: {fmt(c['before'])} -> {fmt(c['after'])} ({kept(c['after'], c['before'])} "
             f"kept; plan said {fmt(c['planned_after'])})")
    _print_extras(report)
    _print_fidelity(report.get("fidelity"))
    for warning in report.get("warnings", []):
        echo(f"warning: {warning}")
    check = report.get("check")
    if check:
        skipped = check.get("unchecked_ops")
        checker = (f"onnx.checker(full, except {', '.join(skipped)}: ops ONNX does not "
                   f"define, run by ONNX Runtime only)" if skipped else "onnx.checker(full)")
        echo(f" check: {checker}={'pass' if check['checker'] else 'FAIL'}, "
             f"onnxruntime={'runs' if check['runs'] else 'FAIL'}, "
             f"same IO={'yes' if check['same_io'] else 'NO'}, mask-equivalence max rel "
             f"error={check['max_rel_error']:.2e} (tolerance {check['tolerance']:.0e}) "
             f"-> {'OK' if check['ok'] else 'FAIL'}")
        if check.get("how") == pipeline.CHECKED_FROM_FILES:
            echo("        (run from weight files, one model at a time)")


def _print_fidelity(fidelity: dict | None) -> None:
    """The cost of the prune: the pruned model against the dense one, per output."""
    if not fidelity:
        return
    for o in fidelity["outputs"][:SHOWN_OUTPUTS]:
        agree = ("" if o["top1_agreement"] is None
                 else f", top-1 agreement {o['top1_agreement']:.1%}")
        echo(f"fidelity to the dense model, output {o['name']}: cosine {o['cosine_mean']:.4f} "
             f"(min {o['cosine_min']:.4f}){agree} on {fidelity['samples']} samples of "
             f"{fidelity['inputs']}")


def _walk_bodies(entries):
    for entry in entries:
        yield entry
        yield from _walk_bodies(entry.get("bodies", []))


def _print_extras(report: dict) -> None:
    """Bodies, barriers, the target, the steps and the hidden-size note, where there are any."""
    if report.get("bodies"):
        bodies = list(_walk_bodies(report["bodies"]))
        inside = sum(b.get("channels_removed", 0) for b in bodies)
        echo(f"inside control flow: {sum(b['pruned'] for b in bodies)} of {len(bodies)} "
             f"branches/bodies pruned on their own, {inside} channels removed")
    if report["barriers"]:
        first = report["barriers"][0]
        echo(f"barriers: {len(report['barriers'])} ops left alone (first: {first['node']}: "
             f"{first['reason']})")
    target = report.get("target")
    if target:
        how = (f"ratio {target['ratio']:.3f}" if target["ratio"] is not None
               else f"{len(report['steps'])} steps")
        if report["strategy"]["allocation"] == "latency" and target["ratio"] is not None:
            how = "latency-aware allocation"   # its "ratio" is the greedy's budget
        echo(f"target: keep {target['fraction']:.1%} of the {target['kind']} -> {how} "
             f"(keeps {target['planned']:.1%})")
        if target["kind"] == "latency" and target.get("device"):
            echo(f"  latency predicted from the timings of {target['device']}: "
                 f"{target['planned']:.1%} of the dense model's "
                 f"({'met' if target['met'] else 'MISSED'}; not timed here)")
        elif target["kind"] == "latency":
            fixes = (f", after {target['corrections']} correction(s)"
                     if target["corrections"] else "")
            echo(f"  latency on ORT CPU ({target['threads']} thread(s), fastest run): "
                 f"{target['dense_seconds'] * 1e3:.2f} ms -> "
                 f"{target['pruned_seconds'] * 1e3:.2f} ms ({target['measured']:.1%}, table "
                 f"predicted {target['planned']:.1%}; "
                 f"{'met' if target['met'] else 'MISSED'}{fixes})")
            if target.get("spread_rounding"):
                echo("  groups of one size lose their --round-to steps at different ratios "
                     "(spread rounding), so the ratio can land near the target")
            if target.get("table_reaches") is False:
                echo("  the layer table saw no plan that meets the target (timings of "
                     "microsecond layers are mostly noise); the timed search started without it")
            if target.get("table_stale"):
                stale = target["table_stale"]
                times = (f"an empty run: {stale['empty_run_stored_s'] * 1e6:.1f} us beside "
                         f"the table, {stale['empty_run_here_s'] * 1e6:.1f} us now")
                echo(f"  --latency-table's timings ran slower than this machine does now "
                     f"({times}): its {stale['dropped']} timings were dropped and timed again"
                     if stale["dropped"] else
                     f"  this machine runs slower now than when --latency-table was timed "
                     f"({times}; loaded?): its timings were read, this run's not added")
            if target.get("table_reused"):
                echo(f"  layer timings: {target['table_reused']} read from --latency-table, "
                     f"{target['table_timed']} timed now")
    for step in report.get("steps") or []:
        check = {True: "OK", False: "FAIL", None: "not run"}[step["check_ok"]]
        echo(f"  step {step['step']}: ratio {step['ratio']:.3f}, params {fmt(step['params'])}, "
             f"macs {fmt(step['macs'])}, check {check}")
    if report.get("changes_function"):
        echo("  note: the hidden size was pruned, so LayerNorm/RMSNorm now average over fewer "
             "channels: the model computes a different function (check its accuracy)")

