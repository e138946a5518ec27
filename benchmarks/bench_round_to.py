"""Which ``--round-to`` default? ORT CPU latency of models pruned at 50% with several roundings.

ORT's NCHWc convolutions block channels by 8 (AVX2) or 16 (AVX-512); odd counts fall back to
slower kernels. Run from the repository root::

    python -m benchmarks.bench_round_to
"""

from __future__ import annotations

import onnxprune
from benchmarks.common import machine, ort_latency, torchvision_at
from onnxprune.runtime import make_inputs
from onnxprune.io import load_model

MODELS = ["resnet50", "mobilenet_v2", "efficientnet_b0"]
ROUNDINGS = [1, 4, 8, 16]
SIZE = (1, 3, 224, 224)


def main() -> None:
    print(machine())
    print(f"input {SIZE}, 1 thread, ORT_ENABLE_ALL; latency median ms (speedup vs dense)")
    print(f"{'model':<16} {'dense':>8} " + " ".join(f"{'r' + str(r):>16}" for r in ROUNDINGS))
    for name in MODELS:
        model = load_model(torchvision_at(name, SIZE[-1]))
        shapes = {model.graph.input[0].name: SIZE}
        feeds = make_inputs(model, shapes)
        dense = ort_latency(model, feeds)["median"]
        cells = []
        for r in ROUNDINGS:
            pruned, report = onnxprune.prune(model, ratio=0.5, round_to=r, input_shapes=shapes,
                                             verify=False)
            ms = ort_latency(pruned, feeds)["median"]
            macs = report["macs"]["before"] / report["macs"]["after"]
            cells.append(f"{ms:7.2f} ({dense / ms:.2f}x/{macs:.2f}x)")
        print(f"{name:<16} {dense:8.2f} " + " ".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
