"""Shared helpers for the benchmark scripts (run from the repository root)."""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np


def machine() -> str:
    import onnx
    import onnxruntime

    from onnxprune.runtime.hardware import cpu_model

    return (f"{cpu_model()}, {os.cpu_count()} cores visible; Python {platform.python_version()}, "
            f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}")


def best_of(fn, repeat: int = 3) -> float:
    """Fastest wall time of ``repeat`` calls (the least disturbed run)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def ort_latency(model, feeds, threads: int = 1, warmup: int = 5, runs: int = 30) -> dict:
    """Median/p90/min latency in ms on the ORT CPU EP, graph optimizations on (ALL)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        sess.run(None, feeds)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feeds)
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median": statistics.median(samples), "p90": float(np.percentile(samples, 90)),
            "min": min(samples)}


def turns_note(threads: int, turns: int, budget_s: float) -> str:
    """How the interleaved-turn timing of peers.py and zoo_speed.py was done, for the output."""
    return (f"ORT CPU EP, ORT_ENABLE_ALL, {threads} intra-op thread(s); {turns} turns through "
            f"the dense and pruned models of each architecture, each a measure_latency of "
            f"{budget_s:g} s of timed runs (at least 10) after 5 warm-up runs.")


def torchvision_module(name: str):
    """A torchvision model with random weights (seed 0) in eval mode, built with the zoo
    manifest's keyword arguments (Inception v3 without aux logits, ...) except the small test
    ``image_size`` (a benchmark runs ViT at its native 224)."""
    import torch
    import torchvision

    from models import zoo

    try:
        kwargs = dict(zoo.entry(name).get("kwargs", {}))
    except KeyError:
        kwargs = {}
    kwargs.pop("image_size", None)
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def torchvision_at(name: str, size: int, exporter: str = "torchscript",
                   dynamic_batch: bool = False) -> str:
    """``torchvision_module(name)`` exported at batch 1, ``size``×``size``, into the zoo cache
    (the zoo's test models are tiny, 64×64: too small for latency to mean much). ``exporter``:
    ``torchscript`` (opset 17) or ``dynamo`` (its default opset; the graph differs, and ViT's
    attention heads are prunable only there). ``dynamic_batch`` (TorchScript): the batch axis
    of the input and output is symbolic, so the model runs at any batch."""
    from models import zoo

    tag = "torchscript" if exporter == "torchscript" else "dynamo"
    if dynamic_batch:
        tag += ".dynbatch"
    path = zoo.cache_dir() / f"{name}.{tag}.{size}px.onnx"
    if not path.exists():
        import warnings

        import onnx
        import torch

        model = torchvision_module(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        x = (torch.randn(1, 3, size, size),)
        names = dict(input_names=["input"], output_names=["output"])
        if dynamic_batch:
            names["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)   # as models.zoo: plain MHA exports
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if exporter == "torchscript":
                    torch.onnx.export(model, x, str(tmp), dynamo=False, opset_version=17,
                                      **names)
                elif exporter == "dynamo":
                    torch.onnx.export(model, x, str(tmp), dynamo=True, verbose=False, **names)
                    onnx.save_model(onnx.load(str(tmp)), str(tmp))   # pull in external data
                    for side in path.parent.glob(tmp.name + ".data"):
                        side.unlink()
                else:
                    raise ValueError(f"unknown exporter {exporter!r}")
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        os.replace(tmp, path)
    return str(path)


def onnxsim_steps(model, steps, ratio: float):
    """onnxsim 0.8.1's pruning functions ``steps`` one after the other at sparsity ``ratio``;
    the model, or a line saying why there is none."""
    import warnings

    try:
        import onnxsim
    except ImportError:
        return "onnxsim not installed"
    for step in steps:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = getattr(onnxsim, step)(model, sparsity=ratio)
        except Exception as exc:  # noqa: BLE001 - reported
            return f"{step} raised {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
    return model


def executor_runs(configs, workers: int, run):
    """``run(executor)`` under every (name, ONNXPRUNE_THREADS, executor factory) of
    ``configs``: a Ray one in a local instance of ``workers`` CPUs with the timing resource,
    shut down after. Yields (name, result)."""
    import ray

    from onnxprune.parallel import TIMING_RESOURCE

    for name, threads, factory in configs:
        os.environ["ONNXPRUNE_THREADS"] = threads
        if "Ray" in name:
            ray.init(num_cpus=workers, resources={TIMING_RESOURCE: 1},
                     include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        executor = factory()
        try:
            yield name, run(executor)
        finally:
            if executor is not None:
                executor.close()
            if "Ray" in name:
                ray.shutdown()
            os.environ["ONNXPRUNE_THREADS"] = ""
