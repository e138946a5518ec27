"""Where the gradient criteria work: every model in the zoo cache pruned at ratio 0.3 with
``taylor`` / ``snip`` (``calib="random"``) or ``synflow`` (no data), one subprocess per model
(300 s timeout) so a crash or a memory peak stays contained. Gradients come from an onnx2torch
conversion; a model it cannot convert (or whose conversion disagrees with ONNX Runtime) fails
with a one-line UserError, which is what the table reports. Run from the repository root::

    python -m benchmarks.gradient_coverage [--criterion taylor] [--timeout 300] [--only NAME ...]

The ``light_*`` models (onnx backend test data) are structure only: their weights are not
stored, so they are marked ``(no weights)``. Files over 600 MB are skipped with a note. Peak
RSS is the child process's ``ru_maxrss`` (from ``os.wait4``), which includes importing torch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import machine
from models import zoo

GRADIENT_CRITERIA = ("taylor", "snip", "synflow")
MAX_MB = 600
RATIO = 0.3


def describe(path: Path) -> dict:
    """Zoo name, exporter, input shapes and whether the file is structure-only, from a cache
    file name: ``NAME.EXPORTER.onnx`` or ``NAME.EXPORTER.SIZEpx.onnx`` (benchmarks.common's
    ``torchvision_at``)."""
    parts = path.name[:-len(".onnx")].split(".")
    name, exporter = parts[0], (parts[1] if len(parts) > 1 else "?")
    size = next((int(m.group(1)) for p in parts[2:] if (m := re.fullmatch(r"(\d+)px", p))),
                None)
    if size is not None:
        exporter = f"{exporter} ({size}px)"
    try:
        entry = zoo.entry(name)
    except KeyError:
        entry = None
    shapes = None
    if entry is not None:
        shapes = {i["name"]: list(i["test_shape"]) for i in entry["inputs"]}
        if size is not None:
            shapes = {k: v[:-2] + [size, size] if len(v) == 4 else v for k, v in shapes.items()}
    light = (entry or {}).get("source") == "onnx-light" or name.startswith("light_")
    return {"name": name, "exporter": exporter, "shapes": shapes, "light": light}


def one(path: str, criterion: str, shapes_json: str) -> None:
    """Child process: prune one model, print one JSON line on stdout."""
    import onnxprune

    shapes = json.loads(shapes_json)
    shapes = {k: tuple(v) for k, v in shapes.items()} if shapes else None
    calib = None if criterion == "synflow" else "random"
    start = time.perf_counter()
    out = {"ok": False}
    try:
        _, report = onnxprune.prune(path, ratio=RATIO, strategy=onnxprune.Strategy(criterion),
                                    calib=calib, input_shapes=shapes)
        notes = report.get("strategy", {}).get("notes", report.get("notes", []))
        out = {"ok": True, "notes": [n for n in notes if "gradient" in n]}
    except Exception as exc:  # noqa: BLE001 - every failure is a row of the table
        lines = str(exc).strip().splitlines()
        out = {"ok": False, "kind": type(exc).__name__,
               "error": lines[0] if lines else type(exc).__name__}
    out["seconds"] = time.perf_counter() - start
    print("@@RESULT " + json.dumps(out), flush=True)


def run_child(path: Path, criterion: str, shapes, timeout: float) -> dict:
    """Run :func:`one` in a subprocess; add peak RSS (MB) and wall seconds."""
    cmd = [sys.executable, "-m", "benchmarks.gradient_coverage", "--one", str(path),
           "--criterion", criterion, "--shapes", json.dumps(shapes)]
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        log.seek(0)
        text = log.read()
    result = next((json.loads(line[len("@@RESULT "):]) for line in text.splitlines()
                   if line.startswith("@@RESULT ")), None)
    if result is None:
        tail = [ln for ln in text.strip().splitlines() if ln.strip()]
        why = (f"timeout after {timeout:.0f} s" if timed_out else
               f"child exited with {proc.returncode}" + (f": {tail[-1]}" if tail else ""))
        result = {"ok": False, "kind": "Timeout" if timed_out else "Crash", "error": why,
                  "seconds": wall}
    result["rss_mb"] = usage.ru_maxrss / 1024   # kB on Linux
    result["wall"] = wall
    return result


def _versions() -> str:
    from importlib import metadata

    found = []
    for pkg in ("torch", "onnx2torch"):
        try:
            found.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            found.append(f"{pkg} missing")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--criterion", default="taylor", choices=GRADIENT_CRITERIA)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--only", nargs="*", help="model names (prefix of the file name)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--shapes", default="null", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.criterion, args.shapes)
        return

    print(f"{machine()}, {_versions()}")
    files = sorted(zoo.cache_dir().glob("*.onnx"))
    if args.only:
        files = [f for f in files if any(f.name.startswith(o + ".") for o in args.only)]
    print(f"criterion {args.criterion}, ratio {RATIO}, calib "
          f"{'none' if args.criterion == 'synflow' else 'random'}, cache {zoo.cache_dir()}, "
          f"timeout {args.timeout:.0f} s per model\n")
    print("| model | exporter | criterion | result | seconds | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    ok = tried = 0
    skipped, failures = [], Counter()
    total = time.perf_counter()
    for path in files:
        d = describe(path)
        label = d["name"] + (" (no weights)" if d["light"] else "")
        mb = path.stat().st_size / 2**20
        if mb > MAX_MB:
            skipped.append(f"{path.name} ({mb:.0f} MB)")
            print(f"| {label} | {d['exporter']} | {args.criterion} | skipped: {mb:.0f} MB "
                  f"> {MAX_MB} MB | – | – |", flush=True)
            continue
        r = run_child(path, args.criterion, d["shapes"], args.timeout)
        tried += 1
        if r["ok"]:
            ok += 1
            result = "ok" + (f" ({'; '.join(r['notes'])})" if r.get("notes") else "")
        else:
            result = f"{r['kind']}: {r['error']}"
            failures[result] += 1
        result = result.replace("|", "\\|")
        print(f"| {label} | {d['exporter']} | {args.criterion} | {result} | "
              f"{r['seconds']:.1f} | {r['rss_mb']:.0f} |", flush=True)
    print()
    if skipped:
        print(f"skipped (over {MAX_MB} MB): {', '.join(skipped)}")
    if failures:
        print("failures by reason:")
        for reason, n in failures.most_common():
            print(f"  {n}× {reason}")
    print(f"total {time.perf_counter() - total:.0f} s")
    print(f"{ok} of {tried} models: gradients OK")


if __name__ == "__main__":
    main()
