"""The prepared GPU check (issue 17): onnxprune's CUDA paths, in one short run on a lent GPU.

``bench --provider cuda``, a latency table timed on the GPU (``device_timer.py --provider
cuda``) and ``prune --target-latency`` predicted from that table had never run on a GPU. This
script does all three in one device call, on ResNet-50, MobileNetV2 and ViT-B/16 (torchvision,
random weights, 224×224, batch axis symbolic), dense and pruned at uniform 0.5 (L2,
``--round-to 8``: CUDA's tensor cores take fp16 channels in multiples of 8), at batch 1 and 32,
in fp32 (TF32 on, ORT's default) and fp16 (float16 copies with float32 inputs and outputs).

Three steps, each one command from the repository root::

    python -m benchmarks.gpu_check prepare gpu_check        # here: needs torch (dev extras)
    python -m benchmarks.gpu_check run gpu_check --out $OUT # on the device
    python -m benchmarks.gpu_check report OUT_FOLDER        # here: the tables for RESULTS

``prepare`` takes about 2.5 minutes on 2 cores and writes 3.3 MiB; ``gpu_check/`` is
git-ignored, so the device call names it in ``carry``. On the device's image (Python 3.12,
onnx, numpy, networkx, click, rich, scipy and sympy are there) the run is one call:
``python3 -m benchmarks.gpu_check run gpu_check --out $OUT`` with a ``timeout_s`` of 420. If
that image's onnxruntime has no working CUDA provider, the run says so in ``no_cuda.txt`` and
exits 2 within seconds; then bring onnxruntime-gpu as the field notes (§8) say (the wheel
carried in parts, installed with ``--target /tmp/site``), and run again with
``PYTHONPATH=/tmp/site``.

``prepare`` exports, prunes (and verifies) here, and writes every model weightless: each
float constant over 4 KiB keeps its shape but no values, and ``run`` fills it with random
values scaled by its fan-in before timing. So ResNet-50, 98 MiB of weights, travels as a few
hundred KiB of graph, and the folder fits a device call (64 MiB). The table model's latency
bundle (``onnxprune latency-bundle``, its models weightless the same way) travels beside them.

``run`` needs onnxruntime with the CUDA provider and onnxprune's runtime dependencies (onnx,
numpy, networkx, click, rich, scipy, sympy); it uses nothing else from here, and onnxprune from
this checkout. ``--provider cpu`` runs the same steps on the CPU (the test suite does that on
the bundled digits CNN). ``--out`` receives, per model and precision, ``onnxprune bench
--json``'s output, the device's ``table.json``, the target prune's report and bench, and
``gpu_check.log``. Without a working CUDA provider it writes why and exits 2, having timed
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.io.external import point_at
from onnxprune.runtime.device_timer import PROVIDERS, section

MODELS = ("resnet50", "mobilenet_v2", "vit_b_16")
TABLE_MODEL = "mobilenet_v2"      # its latency bundle is timed on the device, then a target
RATIO, ROUND_TO, SIZE = 0.5, 8, 224
BATCHES = "1,32"
TARGET = 0.6
TABLE_LEVELS = 4                 # widths per layer side in the bundle (8 is the default)
INLINE_BYTES = 4096              # constants up to this size keep their values
RANDOM = "random"                # the external-data location of a weight ``run`` fills
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
EXIT_NO_PROVIDER = 2


# --- weightless models ----------------------------------------------------------------------

def weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every float initializer over ``INLINE_BYTES`` reduced to its shape: its
    data points at ``RANDOM``, a file that does not exist (``filled`` replaces it)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOATS and len(tensor.raw_data) > INLINE_BYTES:
            point_at(tensor, RANDOM, 0, len(tensor.raw_data))
    return model


def filled(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """``model`` with each weightless tensor given uniform random values of variance 1/fan-in
    (its size over its first axis), so activations stay finite through 50 layers and fp16."""
    rng = np.random.default_rng(seed)
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.data_location != onnx.TensorProto.EXTERNAL or \
                {e.key: e.value for e in tensor.external_data}.get("location") != RANDOM:
            continue
        dims = tuple(tensor.dims)
        fan_in = int(np.prod(dims[1:])) if len(dims) > 1 else 1
        bound = float(np.sqrt(3.0 / max(fan_in, 1)))
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        values = rng.uniform(-bound, bound, dims).astype(dtype)
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(values, tensor.name))
    return model


# --- prepare (here) -------------------------------------------------------------------------

def prepare(folder: str, models=MODELS, table_model: str = TABLE_MODEL, size: int = SIZE,
            log=print) -> dict:
    """Export, prune and write the weightless models and the table model's bundle into the
    new ``folder``. ``models``: torchvision names, or paths of ONNX files with a symbolic
    batch axis. Returns the manifest."""
    import onnxprune
    from onnxprune.evaluate.bench import to_fp16
    from onnxprune.pipeline.latency_bundle import write_bundle
    from onnxprune.runtime import count_cost

    out = Path(folder)
    if out.exists():
        raise SystemExit(f"{out} exists: give a new folder")
    out.mkdir(parents=True)
    manifest = {"ratio": RATIO, "round_to": ROUND_TO, "batches": BATCHES, "target": TARGET,
                "models": [], "table_model": None}
    for source in models:
        name = Path(source).stem if source.endswith(".onnx") else source
        path = source if source.endswith(".onnx") else _export(source, size)
        start = time.perf_counter()
        pruned, _ = onnxprune.prune(path, ratio=RATIO, round_to=ROUND_TO)
        dense = onnx.load(path)
        log(f"{name}: pruned at {RATIO} and verified in {time.perf_counter() - start:.0f} s, "
            f"MACs kept {count_cost(pruned).macs / count_cost(dense).macs:.1%}")
        entry = {"name": name, "files": {}}
        for variant, model in (("dense", dense), ("pruned", pruned)):
            for precision in ("fp32", "fp16"):
                timed = model if precision == "fp32" else to_fp16(model)
                file = f"{name}.{variant}.{precision}.onnx"
                onnx.save(weightless(timed), str(out / file))
                entry["files"][f"{variant} {precision}"] = file
        manifest["models"].append(entry)
        if name == table_model:
            summary = write_bundle(dense, str(out / "bundle"), round_to=ROUND_TO,
                                   levels=TABLE_LEVELS)
            _check_bundle_small(out / "bundle")
            manifest["table_model"] = name
            log(f"{name}: latency bundle of {summary.models} one-node models")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2 ** 20
    log(f"wrote {out} ({size_mb:.1f} MiB)")
    return manifest


def _export(name: str, size: int) -> str:
    from benchmarks.common import torchvision_at

    return torchvision_at(name, size, dynamic_batch=True)


def _check_bundle_small(folder: Path) -> None:
    """The bundle's one-node models are weightless already (``latency_bundle``): a change
    that ships weights is caught here, not by a device call over its size limit."""
    big = [f.name for f in folder.glob("*.onnx") if f.stat().st_size > 1 << 20]
    if big:
        raise SystemExit(f"bundle models over 1 MiB: {', '.join(big[:3])}")


# --- run (on the device) --------------------------------------------------------------------

def run(folder: str, out: str, provider: str = "cuda", budget: float = 1.0,
        log=print) -> int:
    """Fill, time and target every prepared model on ``provider``; results into ``out``.
    Returns the exit status (``EXIT_NO_PROVIDER`` when CUDA is not really there)."""
    from onnxprune.evaluate.bench import cuda_unavailable_reason

    results = Path(out)
    results.mkdir(parents=True, exist_ok=True)
    logfile = open(results / "gpu_check.log", "a", encoding="utf-8")

    def say(line: str) -> None:
        log(line)
        logfile.write(line + "\n")
        logfile.flush()

    import onnxruntime as ort

    say(f"onnxruntime {ort.__version__}; providers {ort.get_available_providers()}")
    if provider == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            say(f"no CUDA provider: {reason}")
            (results / "no_cuda.txt").write_text(reason + "\n")
            return EXIT_NO_PROVIDER
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for entry in manifest["models"]:
            files = {k: _fill(Path(folder) / f, work) for k, f in entry["files"].items()}
            for precision in ("fp32", "fp16"):
                name = f"bench_{entry['name']}_{precision}.json"
                status = _onnxprune(["bench", files[f"dense {precision}"],
                                     files[f"pruned {precision}"], "--provider", provider,
                                     "--batch", manifest["batches"], "--budget", str(budget),
                                     "--json"], results / name, say)
                if status == 0:
                    say(_bench_line(entry["name"], precision, results / name))
        if manifest.get("table_model"):
            _table_and_target(folder, manifest, work, results, provider, budget, say)
    logfile.close()
    return 0


def _fill(path: Path, work: Path) -> str:
    target = work / path.name
    onnx.save(filled(onnx.load(str(path), load_external_data=False)), str(target))
    return str(target)


def _table_and_target(folder, manifest, work, results, provider, budget, say):
    """Time the bundle on ``provider``, prune the table model to the target predicted from
    that table alone, and time the result against the dense model on ``provider``."""
    bundle = work / "bundle"
    shutil.copytree(Path(folder) / "bundle", bundle)
    start = time.perf_counter()
    timer = subprocess.run([sys.executable, str(bundle / "device_timer.py"), str(bundle),
                            "--provider", provider], capture_output=True, text=True)
    say(f"latency bundle on {provider}: exit {timer.returncode} in "
        f"{time.perf_counter() - start:.0f} s; {timer.stdout.strip()[-300:]}"
        f"{timer.stderr.strip()[-300:]}")
    if timer.returncode != 0:
        return
    shutil.copy(bundle / "table.json", results / "table.json")
    name = manifest["table_model"]
    dense = str(work / f"{name}.dense.fp32.onnx")
    pruned = str(work / f"{name}.target.onnx")
    device = section(PROVIDERS[provider])
    status = _onnxprune(["prune", dense, "-o", pruned, "--target-latency",
                         str(manifest["target"]), "--latency-table", str(bundle / "table.json"),
                         "--latency-device", device, "--round-to", str(manifest["round_to"]),
                         "--report", str(results / "target_report.json")],
                        results / "target_prune.txt", say)
    if status != 0:
        return
    status = _onnxprune(["bench", dense, pruned, "--provider", provider, "--batch", "1",
                         "--budget", str(budget), "--json"], results / "bench_target.json", say)
    if status == 0:
        say(f"{name} at --target-latency {manifest['target']} from the {provider} table: "
            + _target_line(results))


def _target_line(results: Path) -> str:
    planned = json.loads((results / "target_report.json").read_text())["target"]["planned"]
    rows = json.loads((results / "bench_target.json").read_text())["rows"]
    return (f"planned {planned:.3f}, measured {rows[1]['median_s'] / rows[0]['median_s']:.3f} "
            f"of the dense latency (batch 1)")


def _onnxprune(args: list, output: Path, say) -> int:
    """The ``onnxprune ARGS`` command (this checkout's) with its stdout into ``output``, or
    into ``output.failed`` with its stderr where it failed; its status."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "onnxprune.cli", *args], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode == 0:
        output.write_text(done.stdout)
    else:
        output.with_name(output.name + ".failed").write_text(done.stdout + done.stderr)
    say(f"onnxprune {args[0]} {' '.join(Path(a).name for a in args[1:3])}: exit "
        f"{done.returncode} in {time.perf_counter() - start:.0f} s"
        + (f"; {done.stderr.strip().splitlines()[-1]}" if done.returncode and done.stderr
           else ""))
    return done.returncode


def _bench_line(name: str, precision: str, path: Path) -> str:
    rows = json.loads(path.read_text())["rows"]
    parts = [f"batch {r['batch']}: {r['median_s'] * 1e3:.2f} ms, speedup "
             f"{r['speedup']:.2f}x for {r['mac_ratio']:.2f}x fewer MACs"
             for r in rows if r["model"] != rows[0]["model"]]
    return f"{name} {precision}: " + "; ".join(parts)


# --- report (here) --------------------------------------------------------------------------

def report(out: str) -> None:
    """The device's results as markdown tables for ``benchmarks/RESULTS.md``."""
    results = Path(out)
    if (results / "no_cuda.txt").exists():
        print(f"No CUDA provider on the device: {(results / 'no_cuda.txt').read_text().strip()}")
        return
    machine = None
    print("| model | precision | batch | dense ms | pruned ms | speedup | MAC reduction | "
          "speedup ÷ MAC reduction |")
    print("|---|---|---|---|---|---|---|---|")
    for path in sorted(results.glob("bench_*_fp*.json")):
        data = json.loads(path.read_text())
        machine = machine or data["machine"]
        name, precision = path.stem[len("bench_"):].rsplit("_", 1)
        by_batch = {}
        for row in data["rows"]:
            by_batch.setdefault(row["batch"], []).append(row)
        for batch, (dense, pruned) in sorted(by_batch.items()):
            print(f"| {name} | {precision} | {batch} | {dense['median_s'] * 1e3:.3f} | "
                  f"{pruned['median_s'] * 1e3:.3f} | {pruned['speedup']:.2f}x | "
                  f"{pruned['mac_ratio']:.2f}x | {pruned['efficiency']:.2f} |")
    if machine:
        print(f"\nMachine: {json.dumps(machine)}")
    if (results / "bench_target.json").exists():
        print(f"\n--target-latency from the device's own table: {_target_line(results)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    p = steps.add_parser("prepare", help="export, prune and write the weightless models")
    p.add_argument("folder")
    p.add_argument("--models", nargs="+", default=list(MODELS),
                   help="torchvision names, or ONNX files with a symbolic batch axis")
    p.add_argument("--table-model", default=TABLE_MODEL)
    p.add_argument("--size", type=int, default=SIZE)
    r = steps.add_parser("run", help="time everything on the device")
    r.add_argument("folder")
    r.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    r.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    r.add_argument("--budget", type=float, default=1.0, help="seconds per model and batch")
    s = steps.add_parser("report", help="the results as markdown")
    s.add_argument("out")
    args = parser.parse_args(argv)
    if args.step == "prepare":
        prepare(args.folder, args.models, args.table_model, args.size)
        return 0
    if args.step == "run":
        return run(args.folder, args.out, args.provider, args.budget)
    report(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
