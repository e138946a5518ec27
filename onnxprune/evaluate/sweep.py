"""A sweep: prune models at several ratios, with one or several criteria, and measure what
each buys and costs.

Picking a ratio (and a criterion) is a trade between measured speed and fidelity, and neither is
linear in the ratio (``round_to`` steps, blocked kernels, layers that suddenly lose their last
channels), so it has to be measured across the range rather than guessed from one point. Every
ratio is pruned and verified as ``prune`` does (its copy then waits in a file); each model and
its pruned copies are then timed in interleaved ``benchmark``s of ``TIMED_AT_ONCE`` copies
beside the dense model (drift on a busy machine falls on all of them alike, every speedup is
against the dense timing of its own group, and memory holds one group; after the last prune,
or with ``overlap_timing`` each group as soon as it is made, in turn with the prunes), and
compared with the dense model on the same inputs (``compare``'s measures, the dense outputs
computed once). A deployment team's whole zoo goes in one command: models one after the other (each
reaches a worker once), each one's criteria and ratios side by side on the executor. A ratio
that fails is a row with its error, not the end of the sweep.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import onnx

from ..errors import UserError, VerificationError
from ..importance import CRITERIA
from ..io import load_model, remove_saved, save_model
from ..io.weights import discard_written
from ..parallel import Failed, InProcess, Then
from ..pipeline import PruneOptions, Strategy, analyze_model, prune, score_model
from ..pipeline.options import STRATEGY_FIELDS
from ..progress import task
from .bench import (BenchOptions, batch_shapes, bench_settings, benchmark, machine_info,
                    model_overrides)
from .compare import compare_with_reference, reference_run
from .sweep_files import CSV_COLUMNS, check_out_dir

MAX_RATIOS = 100   # a typo like 0:0.9:0.001 should be an error, not a day of pruning
TIMED_AT_ONCE = 16  # copies timed together, beside the dense model: 200 at once took 9.6 GiB
NOT_SWEPT = ("ratio", "target_macs", "target_params", "target_latency", "steps", "verify",
             "blocks")

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


# --- the sweep ------------------------------------------------------------------------------

def sweep(models, ratios: Sequence[float], options: PruneOptions | None = None, batch: int = 1,
          bench: BenchOptions | None = None, data: str = "random", labels=None,
          preprocess: str | None = None, out_dir=None, progress=None,
          criteria: Sequence[str] | None = None, given: set[str] | None = None,
          overlap_timing: bool = False) -> dict:
    """Prune every model of ``models`` (one path or ModelProto, or a list of them: a team's
    zoo) with every criterion of ``criteria`` (default: ``options``' own) at every ratio,
    with ``options`` for everything else (allocation, calibration, round_to, heads, mlp,
    exclude, input shapes, seed, ...); time each model's pruned copies against it at
    ``batch`` and compare each with it on ``data`` (as ``compare`` reads it, with
    ``labels``).

    Each model is scored once per criterion, its ratios run on ``options.executor`` (the model
    reaches each worker once), and its pruned copies are timed ``TIMED_AT_ONCE`` at a time
    beside it, in order of ratio with every criterion's copies at a ratio side by side (so the
    criteria are compared on the same timing; each speedup is against the dense timing of its
    group). Its dense row (ratio 0, no criterion) comes first. With ``out_dir`` each pruned
    model is saved there as ``STEM.rRATIO.onnx`` (``STEM.CRITERION.rRATIO.onnx`` for several
    criteria). A ratio, a criterion or (among several) a model that fails is a row with its
    error, and the sweep goes on. ``given``: the options the user set (the CLI knows; see
    ``PruneOptions.check``). ``progress``: see :mod:`onnxprune.progress`.

    Returns a JSON-ready dict: ``rows`` (``CSV_COLUMNS`` and more), ``models``,
    ``criteria``, ``sweeps`` (per model: its fidelity data, its error), ``machine``,
    ``settings``; with one model also ``model`` and ``fidelity``."""
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    ratios, bench = _ratios_with_dense(ratios), bench or BenchOptions()
    options = options or PruneOptions()
    variants = criterion_options(options, criteria, given)
    executor = options.executor or InProcess()
    _check_inputs(options, bench, batch, out_dir, executor, overlap_timing)
    labels_of = _model_labels(models, out_dir)
    rows, sections, machine, timing = [], [], None, None
    for index, (model, label) in enumerate(zip(models, labels_of)):
        name = label if len(models) == 1 else f"{label} ({index + 1} of {len(models)})"
        try:
            section, model_rows, times = _sweep_model(
                model, label, ratios, variants, batch, bench, (data, labels, preprocess),
                out_dir, executor, progress, name, overlap_timing)
        except (UserError, VerificationError) as exc:
            if len(models) == 1:
                raise
            section = {"model": label, "fidelity": None, "error": _first_line(exc)}
            model_rows, times = [{**_empty_row(label, None, None), "error": section["error"]}], None
        sections.append(section)
        rows += model_rows
        if times is not None and machine is None:
            machine, timing = times["machine"], times["settings"]
    settings = {**(timing or bench_settings(bench, (batch,))), "batch": batch,
                "ratios": list(ratios), "prune": _describe(options, [c for c, _ in variants]),
                "timing_beside_pruning": overlap_timing, **executor.describe()}
    result = {"models": labels_of, "criteria": [c for c, _ in variants], "settings": settings,
              "machine": machine or machine_info(bench), "sweeps": sections, "rows": rows}
    if len(models) == 1:
        result.update(model=labels_of[0], fidelity=sections[0]["fidelity"])
    return result


def criterion_options(options: PruneOptions, criteria: Sequence[str] | None = None,
                      given: set[str] | None = None) -> list[tuple[str, PruneOptions]]:
    """(criterion, the options it prunes with) for every criterion, each checked. Among
    several, calibration data goes only to the criteria that read it, and an option that
    does nothing for one criterion is fine as long as it does something for another; each
    criterion must still be able to run (``wanda`` without ``--calib`` is an error)."""
    criteria = list(dict.fromkeys(criteria or [options.strategy.criterion]))
    unknown = [c for c in criteria if c not in CRITERIA]
    if unknown:
        raise UserError(f"unknown criterion {unknown[0]!r}; choose among {', '.join(CRITERIA)}")
    given = (options.given() if given is None else set(given)) - {"executor"}
    variants = []
    for criterion in criteria:
        strategy = dataclasses.replace(options.strategy, criterion=criterion)
        reads = (strategy.needs is not None or options.recover is not None
                 or options.blocks is not None or len(criteria) == 1)
        variants.append((criterion, options.replace(strategy=strategy,
                                                    calib=options.calib if reads else None)))
    if len(variants) == 1:
        variants[0][1].check(given)
        return variants
    if options.calib is not None and all(v.calib is None for _, v in variants):
        options.replace(strategy=variants[0][1].strategy).check(given)  # says why, then stops
    runnable = [(criterion, _without_pointless(criterion, variant, given))
                for criterion, variant in variants]
    _check_some_use(variants, given)
    return runnable


def _check_some_use(variants, given: set[str]) -> None:
    """Every strategy option given must do something for at least one criterion: else the
    first criterion's error, as ``prune`` would say it."""
    errors = []
    for _, variant in variants:
        try:
            variant.check(given)
            return
        except UserError as exc:
            errors.append(exc)
    raise errors[0]


def _without_pointless(criterion: str, variant: PruneOptions, given: set[str]) -> PruneOptions:
    """``variant`` with the strategy options given that do nothing for this criterion (the OBS
    damping for l2 without compensation) back at their defaults, so that each prune is
    checked as if they had not been given. Options this criterion cannot run with are an
    error naming it."""
    plain = given - STRATEGY_FIELDS
    try:
        variant.check(plain)
    except UserError as exc:
        named = f"criterion {criterion!r}" in str(exc)
        raise UserError(str(exc) if named else f"criterion {criterion!r}: {exc}") from None
    defaults = Strategy()
    reset = {}
    for name in sorted(given & STRATEGY_FIELDS - {"criterion"}):
        try:
            variant.check(plain | {name})
        except UserError:
            reset[name] = getattr(defaults, name)
    return variant.replace(strategy=dataclasses.replace(variant.strategy, **reset))


def _model_labels(models: list, out_dir) -> list[str]:
    """What each model is called in rows and file names: its path, or ``<ModelProto N>``.
    Each must exist, appear once, and (with ``out_dir``) have a file stem of its own."""
    labels = []
    for index, model in enumerate(models):
        if _is_path(model):
            if not os.path.exists(model):
                raise UserError(f"no such file: {model}")
            labels.append(str(model))
        else:
            labels.append("<ModelProto>" if len(models) == 1 else f"<ModelProto {index + 1}>")
    if len(set(labels)) < len(labels):
        raise UserError("a model is given twice")
    stems = [_stem(label) for label in labels]
    if out_dir is not None and len(set(stems)) < len(stems):
        twice = next(s for s in stems if stems.count(s) > 1)
        raise UserError(f"two models are named {twice}: their pruned files in --out-dir would "
                        f"overwrite each other; rename one")
    return labels


def _sweep_model(model, label: str, ratios: list[float], variants, batch: int,
                 bench: BenchOptions, compare_on: tuple, out_dir, executor, progress,
                 name: str, overlap_timing: bool = False) -> tuple[dict, list[dict], dict]:
    """One model: its reference run, one scoring per criterion, its ratios on the executor,
    the timing of its pruned copies beside it, a group at a time (``overlap_timing``: each
    group as soon as its copies are made, while the workers go on pruning). Returns (its
    section, its rows, the first group's benchmark report)."""
    data, labels, preprocess = compare_on
    base = variants[0][1]
    shapes = base.input_shapes
    dense = load_model(model)
    batch_shapes(dense, batch, model_overrides(dense, shapes), label)
    with task(progress, f"{name}: reading the comparison data and running the dense model"):
        reference = reference_run(model if _is_path(model) else dense, data, labels, shapes,
                                  preprocess)     # a path: errors name the file
    analyzed = analyze_model(dense, base.exclude)
    rows = [_empty_row(label, None, 0.0, label if _is_path(model) else None)]
    compared_dense = compare_with_reference(reference, dense)
    jobs = []
    for criterion, options in variants:
        try:
            with task(progress, f"{name}: scoring the channels ({criterion})"):
                scoring = score_model(analyzed, options.strategy, options.calib, shapes,
                                      options.seed, progress, executor)  # once for every ratio
        except (UserError, VerificationError) as exc:
            if len(variants) == 1:
                raise
            rows.append({**_empty_row(label, criterion, None), "error": _first_line(exc)})
            continue
        jobs.append((criterion, options.replace(executor=None), scoring))
    items = [(k, ratio) for ratio in ratios[1:] for k in range(len(jobs))]  # timing order
    with _copies_folder(out_dir) as (folder, temporary):
        on_nodes = temporary and not executor.on_this_machine()   # their disks are not ours
        shared = (analyzed, jobs, reference, None if on_nodes else folder, not temporary,
                  label, len(variants) > 1)
        copies = _Copies(items, jobs, model if _is_path(model) else dense, folder, label,
                         len(variants) > 1)   # a path: its file size, external data too
        then = Then((batch, bench, shapes), _time_group, copies.groups, copies.prepare,
                    f"{name}: timing the dense model and its pruned copies",
                    timed=copies.remove if temporary else None)
        results, times = executor.map_then(
            shared, _ratio_row, items, then, progress=progress, here=temporary,
            description=f"{name}: pruning and comparing each ratio", overlap=overlap_timing)
        timed = copies.timing_rows(times, label)
        done = [(rows[0], compared_dense, timed[None])]
        order = {item: index for index, item in enumerate(items)}
        for k in range(len(jobs)):              # rows: each criterion's ratios in order
            for ratio in ratios[1:]:
                index = order[k, ratio]
                result, results[index] = results[index], None
                if isinstance(result, Failed):
                    result = ({**_empty_row(label, jobs[k][0], ratio), "error": result.error},
                              None)
                rows.append(result[0])
                if result[1] is not None:
                    done.append((result[0], result[1], timed[index]))
    _merge(done, timed[None])
    times = timed["report"]
    section = {"model": label, "error": None,
               "fidelity": {"data": reference.data, "samples": reference.samples,
                            "labels": reference.label_source}}
    return section, rows, times


def _ratio_row(shared, item):
    """Prune at one criterion's ratio (where the executor runs it; ``shared`` reached it
    once): its row, its comparison with the dense model and the pruned model's file in
    ``folder`` (the model itself where there is no folder this machine shares; both None when
    the ratio failed: the row then holds the error). ``listed``: the row names the file."""
    analyzed, jobs, reference, folder, listed, label, name_criterion = shared
    criterion, options, scoring = jobs[item[0]]
    ratio = item[1]
    row = _empty_row(label, criterion, ratio)
    try:
        pruned, report = prune(analyzed, options.replace(ratio=ratio, fidelity=False),
                               scoring=scoring)     # compared below, on the sweep's data
        compared = compare_with_reference(reference, pruned)
        row["max_rel_error"] = report["check"]["max_rel_error"]
        if folder is not None:
            path = _save(pruned, folder, label, _tag(criterion, ratio, name_criterion))
            discard_written(pruned, keep=[analyzed.model])  # timed from its file now
            pruned, row["path"] = path, str(path) if listed else None
    except (UserError, VerificationError) as exc:
        row["error"] = _first_line(exc)
        return row, None, None
    return row, compared, pruned


def _tag(criterion: str, ratio: float, name_criterion: bool) -> str:
    return f"{criterion}.r{ratio:g}" if name_criterion else f"r{ratio:g}"


@contextmanager
def _copies_folder(out_dir):
    """Where the pruned copies wait for their timing: ``out_dir``, else a temporary folder
    removed afterwards (yields it, and whether it is temporary). Kept in memory instead, a
    200-row sweep of ResNet-18 held 3 GB of models until the timing, and on Ray a second copy
    went to the timing task, which was killed for memory."""
    if out_dir is not None:
        yield Path(out_dir), False
        return
    folder = tempfile.mkdtemp(prefix="onnxprune-sweep-")
    try:
        yield Path(folder), True
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _time_group(shared, models: list) -> dict:
    """One group's interleaved benchmark: the dense model and the copies beside it."""
    batch, bench, shapes = shared
    return benchmark(models, (batch,), bench, shapes)


class _Copies:
    """The pruned copies of one model on their way to their timing: the items cut into groups
    of ``TIMED_AT_ONCE`` in timing order (by ratio, the criteria at a ratio side by side, so
    that those compared most often share a timing), each group timed with the dense model
    first; and, from the groups' reports, each copy's timing row. Copies in a temporary folder
    are removed as soon as their group is timed: a sweep timed beside its prunes then keeps a
    group or two on disk, not all of them. Kept to the end, the 200 copies of a ResNet-18
    sweep (about 3 GB) went through the disk's write-back, and two workers took 51–54 s
    against 41–46 s with the folder in memory (RESULTS.md, issue 18)."""

    def __init__(self, items: list, jobs: list, dense, folder: Path, label: str,
                 name_criterion: bool):
        self.items, self.jobs, self.dense = items, jobs, dense
        self.folder, self.label, self.name_criterion = folder, label, name_criterion
        self.groups = [list(range(i, min(i + TIMED_AT_ONCE, len(items))))
                       for i in range(0, len(items), TIMED_AT_ONCE)] or [[]]
        self.timed: dict[int, list[int]] = {}   # group → the items it times, in order
        self.files: dict[int, list[Path]] = {}  # group → its copies' files

    def prepare(self, group: int, results: list) -> list:
        """The models a group times: the dense model, then each copy that was made (one sent
        back by a cluster node is written to the folder first)."""
        models, timed = [self.dense], []
        for index, result in zip(self.groups[group], results):
            if isinstance(result, Failed) or result[1] is None:
                continue
            pruned = result[2]
            if isinstance(pruned, onnx.ModelProto):
                k, ratio = self.items[index]
                pruned = _save(pruned, self.folder, self.label,
                               _tag(self.jobs[k][0], ratio, self.name_criterion))
            models.append(pruned)
            timed.append(index)
        self.timed[group] = timed
        self.files[group] = [Path(m) for m in models[1:]]
        return models

    def remove(self, group: int) -> None:
        """The group's copies, once it is timed (only ever in a temporary folder)."""
        for path in self.files.pop(group, []):
            remove_saved(path)

    def timing_rows(self, reports: list, label: str) -> dict:
        """Item index → its timing row; None → the dense model's (its first group's); "report"
        → the first group's report, its settings saying how many were timed at once."""
        rows = {}
        for group, report in enumerate(reports):
            if isinstance(report, Failed) or report is None:
                why = report.error if report is not None else "not run"
                raise UserError(f"timing {label} and its pruned copies failed twice: {why}")
            rows.setdefault(None, report["rows"][0])
            rows.update(zip(self.timed[group], report["rows"][1:]))
        first = reports[0]
        if len(reports) > 1:
            first = {**first, "settings": {**first["settings"], "at_once": TIMED_AT_ONCE}}
        rows["report"] = first
        return rows


def _ratios_with_dense(ratios: Sequence[float]) -> list[float]:
    """The ratios in order with 0 (the dense reference) first, once."""
    values = sorted({round(float(r), 10) for r in ratios} | {0.0})
    for value in values:
        if not 0.0 <= value < 1.0:
            raise UserError(f"ratios must be in [0, 1), got {value:g}")
    if len(values) > MAX_RATIOS + 1:
        raise UserError(f"{len(values) - 1} ratios; at most {MAX_RATIOS}")
    return values


def _check_inputs(options: PruneOptions, bench: BenchOptions, batch: int, out_dir,
                  executor, overlap_timing: bool) -> None:
    """Everything that would fail at every ratio fails once, before any pruning."""
    if overlap_timing and executor.workers < 2:
        raise UserError("--overlap-timing times on one worker while the others prune: it "
                        "needs --workers 2 or more")
    if overlap_timing and bench.threads > 1:
        raise UserError(f"--overlap-timing times on one worker's core, beside the others: "
                        f"it needs --threads 1, got {bench.threads}")
    fixed = sorted(name for name in options.given() if name in NOT_SWEPT)
    if fixed:
        raise UserError(f"a sweep sets the ratio itself and prunes in one verified step: it "
                        f"takes no {', '.join(fixed)}")
    if options.allow_cache_change:
        raise UserError("--allow-cache-change resizes the KV cache inputs, so the pruned copies "
                        "cannot run on the dense model's inputs for the comparison: prune them "
                        "one at a time")
    bench.check()
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    check_out_dir(out_dir)


def _empty_row(model: str, criterion: str | None, ratio: float | None,
               path: str | None = None) -> dict:
    row = {name: None for name in CSV_COLUMNS}
    row.update(model=model, criterion=criterion, ratio=ratio, size_bytes=None, efficiency=None,
               runs=None, max_rel_error=None, path=path, outputs=None)
    return row


def _save(pruned: onnx.ModelProto, out_dir, label: str, tag: str) -> Path:
    os.makedirs(out_dir, exist_ok=True)
    return save_model(pruned, Path(out_dir) / f"{_stem(label)}.{tag}.onnx")


def _stem(label: str) -> str:
    return Path(label).stem if not label.startswith("<ModelProto") else \
        "model" + label[len("<ModelProto"):-1].replace(" ", "")


def _merge(done: list[tuple[dict, dict, dict]], dense: dict) -> None:
    """Fill the rows that were pruned from their comparisons and timing rows (each
    ``(row, comparison, timing row)``; ``dense``: the dense model's timing row)."""
    for row, compared, t in done:
        row.update(params=t["params"], macs=t["macs"], size_bytes=t["file_bytes"],
                   params_kept=_share(t["params"], dense["params"]),
                   macs_kept=_share(t["macs"], dense["macs"]),
                   latency_median_ms=t["median_s"] * 1e3, latency_p90_ms=t["p90_s"] * 1e3,
                   latency_min_ms=t["min_s"] * 1e3, speedup=t["speedup"],
                   mac_ratio=t["mac_ratio"], efficiency=t["efficiency"], runs=t["runs"])
        row.update(fidelity_summary(compared))


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


def _describe(options: PruneOptions, criteria: list[str]) -> dict:
    strategy, calib = options.strategy, options.calib
    return {"criterion": ",".join(criteria), "allocation": strategy.allocates,
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
