"""Digests of pruned files for a fixed set of models and options: a refactor of the inside
must leave every byte of them as it was.

``python -m tests.golden --write`` records them (tests/fixtures/pruned_digests.json);
``tests/test_golden.py`` prunes the same cases and compares. Only data-free criteria that read
weights alone are recorded: their result depends on nothing but the weights, so it is the same
on every machine (criteria that run ONNX Runtime see last-bit differences between CPUs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from importlib import resources
from pathlib import Path

DIGESTS = Path(__file__).with_name("fixtures") / "pruned_digests.json"

# (case name, model, prune keyword arguments). Only inputs that are the same on every machine:
# files shipped in packages (the demo, YOLOv8n, onnx's light models with the zoo test's seeded
# symmetry breaking), MiniLM's real weights, and a decoder built by the tests from seeded numpy
# weights (tests/test_hidden.py). torchvision exports calibrate BatchNorm with
# float kernels that differ between processors, so their bytes (and digests) would too.
CASES = [
    ("demo-l2", "demo", {"ratio": 0.5}),
    ("demo-l1-round1", "demo", {"ratio": 0.4, "round_to": 1, "criterion": "l1"}),
    ("demo-fpgm", "demo", {"ratio": 0.5, "round_to": 4, "criterion": "fpgm"}),
    ("demo-bn_scale", "demo", {"ratio": 0.5, "round_to": 1, "criterion": "bn_scale"}),
    ("demo-random-seed3", "demo", {"ratio": 0.5, "round_to": 1, "criterion": "random",
                                   "seed": 3}),
    ("demo-global-lamp", "demo", {"ratio": 0.5, "round_to": 1, "allocation": "global",
                                  "normalization": "lamp", "max_ratio": 0.8}),
    ("demo-global-per-mac", "demo", {"ratio": 0.5, "round_to": 1, "allocation": "global",
                                     "rank_by": "score-per-mac"}),
    ("demo-target-macs", "demo", {"target_macs": 0.4, "round_to": 1}),
    ("demo-steps", "demo", {"ratio": 0.6, "round_to": 1, "steps": 2}),
    ("demo-mean-reduction", "demo", {"ratio": 0.5, "round_to": 1, "reduction": "mean"}),
    ("light-densenet121", "light_densenet121.file", {"ratio": 0.5, "round_to": 8}),
    ("light-inception-v2", "light_inception_v2.file", {"ratio": 0.3, "round_to": 1,
                                                       "criterion": "fpgm"}),
    ("minilm-heads-mlp", "minilm_l6.torchscript", {"ratio": 0.0, "heads": 0.25, "mlp": 0.3,
                                                   "round_to": 1}),
    ("decoder-hidden", "built:decoder", {"ratio": 0.25, "heads": 0.5, "hidden": 0.25,
                                         "round_to": 1}),
    ("yolov8n-l2", "nudenet_yolov8n.file", {"ratio": 0.3, "round_to": 8,
                                            "input_shapes": {"images": (1, 3, 320, 320)}}),
]


def model_path(ref: str) -> str:
    if ref == "demo":
        return str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))
    if ref == "built:decoder":
        import tempfile

        import onnx

        from tests.test_hidden import decoder

        target = Path(tempfile.gettempdir()) / f"onnxprune-golden-{os.getuid()}-decoder.onnx"
        staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        onnx.save(decoder(), str(staged))
        os.replace(staged, target)
        return str(target)
    from models import zoo

    name, exporter = ref.rsplit(".", 1)
    path = zoo.ensure(name, exporter)
    if not name.startswith("light_"):
        return str(path)
    import onnx

    from tests.test_zoo import break_symmetry

    target = path.with_name(f"{path.stem}.symmetry-broken.onnx")
    if not target.exists():
        staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        onnx.save(break_symmetry(onnx.load(str(path))), str(staged))
        os.replace(staged, target)
    return str(target)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prune_case(ref: str, options: dict):
    """(input digest, pruned-model digest) of one case, through the public API."""
    import onnxprune

    path = model_path(ref)
    pruned, _ = onnxprune.prune(path, **_api_arguments(options))
    return _sha(Path(path).read_bytes()), _sha(pruned.SerializeToString())


def _api_arguments(options: dict) -> dict:
    """Case options as ``onnxprune.prune`` keywords (strategy fields go into a Strategy)."""
    import onnxprune

    fields = ("reduction", "normalization", "allocation", "max_ratio", "rank_by")
    strategy = {k: options[k] for k in fields if k in options}
    rest = {k: v for k, v in options.items() if k not in fields + ("criterion",)}
    if strategy or "criterion" in options:
        rest["strategy"] = onnxprune.Strategy(options.get("criterion", "l2"), **strategy)
    return rest


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record the digests")
    args = parser.parse_args(argv)
    found = {}
    for name, ref, options in CASES:
        found[name] = dict(zip(("input", "pruned"), prune_case(ref, options)))
        print(name, found[name]["pruned"][:16], flush=True)
    if args.write:
        DIGESTS.write_text(json.dumps(found, indent=1) + "\n")
        print(f"wrote {DIGESTS}")


if __name__ == "__main__":
    main()
