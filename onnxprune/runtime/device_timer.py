"""Time a latency bundle on the machine a model will be deployed on, with onnxruntime alone.

``onnxprune latency-bundle MODEL FOLDER`` writes the one-node models of a model's latency table
(every timed layer at a grid of widths, every stream node at a grid of sizes) into FOLDER,
with this file beside them. On the device, with only onnxruntime (and the numpy it brings)::

    python FOLDER/device_timer.py FOLDER [--threads 1] [--provider cpu|cuda]

writes ``FOLDER/table.json``: a latency table (``--latency-table``) with one section for that
device, which ``prune --target-latency F --latency-table table.json --latency-device NAME``
then predicts from, timing nothing on the machine it runs on.

This module imports nothing from onnxprune (it is copied alone onto the device); onnxprune's
own code reads the CPU model and the section name from here, so both sides name a device the
same way. Large weights are not shipped: each model keeps them in external data that points
into one file per element type, which this script fills with random values first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

FORMAT = 1                  # of the bundle's manifest and of the table written
# What a timing is: the fastest run of its window. On a VM with bursts of load, a window's
# median moved the table's predictions by up to 0.58 of the dense latency; its fastest run
# by at most 0.13 (mean errors 0.120 and 0.031 over six models: benchmarks/RESULTS.md,
# "Table entries by their fastest run"). The whole model is given its fastest run too.
TABLE_MEASURE = "fastest run"
MIN_RUNS, MAX_RUNS = 10, 1000
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
                "asimd", "asimdhp", "asimddp", "i8mm", "sve", "bf16")


def cpu_model() -> str:
    """The CPU's model name (what timings are valid for)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> set[str]:
    """The instruction-set flags the CPU reports (``flags`` on x86, ``Features`` on Arm;
    empty where they cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.split(":", 1)[0].strip().lower() in ("flags", "features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def vector_units() -> str:
    """The vector extensions here that choose ONNX Runtime's CPU kernels (its blocked convs
    work on 8 channels with AVX2, 16 with AVX-512). A VM's model name can hide them: this
    project ran on an AVX2 and an AVX-512 machine both called "AMD EPYC", whose timings
    must not be mixed."""
    flags = cpu_flags()
    return " ".join(f for f in VECTOR_FLAGS if f in flags)


def gpu_model(device_id: int = 0) -> str | None:
    """GPU ``device_id``'s name as ``nvidia-smi`` gives it (what CUDA timings are valid for);
    None where it cannot be read."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.splitlines() if line.strip()]
    return names[device_id] if device_id < len(names) else None


def section(provider: str = "CPUExecutionProvider", threads: int = 1) -> str:
    """The name of the timings taken here with this provider and thread count: the CPU and
    its vector extensions, or under CUDA the GPU."""
    import onnxruntime

    if provider == PROVIDERS["cuda"]:
        where = gpu_model() or "unknown GPU"
    else:
        units = vector_units()
        where = f"{cpu_model()} ({units})" if units else cpu_model()
    return (f"{where} | onnxruntime {onnxruntime.__version__} | {provider} | {threads} threads"
            f" | {TABLE_MEASURE}")


def timing_options(threads: int = 1):
    """Session options for timing: optimizations ALL (the NCHWc rewrite happens only there),
    ``threads`` intra-op threads, one inter-op thread, sequential execution (so the thread
    count is the one that is measured)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return opts


def bound_runner(sess, feeds: dict, device: str = "cuda", device_id: int = 0):
    """A call that runs ``sess`` on inputs copied to ``device`` once and bound there, with its
    outputs bound to device memory: on a GPU a call is then the graph and nothing else, no
    host-to-device copy. ``run_with_iobinding`` returns after the EP synchronized its stream,
    so the wall time covers the GPU work. (``device="cpu"`` exercises the same path on CPU.)"""
    import numpy as np
    import onnxruntime as ort

    binding = sess.io_binding()
    on_device = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device,
                                                        device_id)
                 for name, value in feeds.items()}
    for name, value in on_device.items():
        binding.bind_ortvalue_input(name, value)
    for out in sess.get_outputs():
        binding.bind_output(out.name, device, device_id)
    binding.synchronize_inputs()

    def call():
        sess.run_with_iobinding(binding)
    call.binding = binding        # the outputs of the last call: binding.copy_outputs_to_cpu()
    call.keep_alive = on_device   # the device buffers must outlive the binding
    return call


def _call(sess, feeds: dict, provider: str):
    """One timed run: host inputs on CPU, inputs and outputs bound on the GPU under CUDA (a
    one-node model's host-to-device copy would otherwise be most of what is timed)."""
    if provider == PROVIDERS["cuda"]:
        return bound_runner(sess, feeds, "cuda", 0)
    return lambda: sess.run(None, feeds)


def time_bundle(folder: str, threads: int = 1, provider: str = "CPUExecutionProvider",
                budget_s: float = 0.05, warmup: int = 3, log=print) -> str:
    """Time every model of the bundle in ``folder``; write and return ``folder/table.json``.
    A session that does not get ``provider`` stops the run: its timings would be another
    provider's under this one's name."""
    import numpy as np
    import onnxruntime as ort

    with open(os.path.join(folder, "bundle.json"), encoding="utf-8") as f:
        bundle = json.load(f)
    if bundle.get("format") != FORMAT:
        raise SystemExit(f"{folder}: not a latency bundle of format {FORMAT}")
    rng = np.random.default_rng(0)
    for name, (dtype, count) in bundle["weights"].items():      # the random weights
        values = rng.standard_normal(count).astype(dtype) if dtype.startswith("float") \
            else np.zeros(count, dtype)
        values.tofile(os.path.join(folder, name))
    timings = {}
    start = time.perf_counter()
    entries = bundle["entries"]
    for done, entry in enumerate(entries, 1):
        opts = timing_options(threads)
        try:
            sess = ort.InferenceSession(os.path.join(folder, entry["file"]), opts,
                                        providers=[provider])
        except Exception as exc:  # noqa: BLE001 - an op this device cannot run alone
            log(f"  {entry['file']}: not timed ({str(exc).splitlines()[0][:120]})")
            continue
        if sess.get_providers()[0] != provider:
            raise SystemExit(f"{provider} is not available here (a session got "
                             f"{', '.join(sess.get_providers())})")
        call = _call(sess, {i.name: _random(rng, i, np) for i in sess.get_inputs()}, provider)
        for _ in range(warmup):
            call()
        samples, spent = [], 0.0
        while len(samples) < MAX_RUNS and (spent < budget_s or len(samples) < MIN_RUNS):
            t = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t)
            spent += samples[-1]
        timings[entry["key"]] = float(np.min(samples))
        if done % 200 == 0 or done == len(entries):
            log(f"  {done}/{len(entries)} timed ({time.perf_counter() - start:.0f} s)")
    name = section(provider, threads)
    table = {"format": FORMAT, "sections": {name: timings},
             "devices": {name: {"grids": bundle["grids"], "model": bundle.get("model")}}}
    path = os.path.join(folder, "table.json")
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as tmp:
        json.dump(table, tmp, indent=1, sort_keys=True)
    os.replace(tmp.name, path)
    for weights in bundle["weights"]:
        os.remove(os.path.join(folder, weights))
    return path


_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
          "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
          "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _random(rng, info, np):
    dtype = _TYPES.get(info.type)
    if dtype is None:
        raise SystemExit(f"input {info.name}: type {info.type} is not handled")
    shape = [d if isinstance(d, int) else 1 for d in info.shape]
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 2, shape).astype(dtype)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu")
    args = parser.parse_args(argv)
    path = time_bundle(args.folder, args.threads, PROVIDERS[args.provider])
    print(f"wrote {path} (section: {section(PROVIDERS[args.provider], args.threads)})")


if __name__ == "__main__":
    sys.exit(main())
