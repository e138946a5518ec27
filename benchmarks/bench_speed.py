"""How fast are ``inspect`` and ``prune`` (without and with the ORT verification)?

Goal (issue 2): under 2 s each on one core for ResNet-50, and linear in graph size: a ResNet
four times deeper is timed too. Run from the repository root with one core::

    taskset -c 0 python -m benchmarks.bench_speed
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import onnx  # noqa: E402

import onnxprune  # noqa: E402
from benchmarks.common import best_of, machine  # noqa: E402
from models import zoo  # noqa: E402


def deep_resnet(path: str) -> str:
    """ResNet-50's bottleneck layout with every stage 4× deeper ([12, 16, 24, 12] blocks)."""
    if os.path.exists(path):
        return path
    import torch
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    model = ResNet(Bottleneck, [12, 16, 24, 12]).eval()
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), path, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"])
    return path


def main() -> None:
    cases = [("resnet50", str(zoo.ensure("resnet50", "torchscript"))),
             ("densenet121", str(zoo.ensure("densenet121", "torchscript"))),
             ("resnet50 x4 deeper", deep_resnet(str(zoo.cache_dir() / "resnet50_x4deep.onnx")))]
    print(machine())
    print(f"{'model':<20} {'nodes':>6} {'inspect s':>10} {'prune s':>8} {'prune+verify s':>15} "
          f"{'ms/node (prune)':>16}")
    for name, path in cases:
        nodes = len(onnx.load(path, load_external_data=False).graph.node)
        t_inspect = best_of(lambda: onnxprune.inspect(path))
        t_prune = best_of(lambda: onnxprune.prune(path, ratio=0.5, verify=False))
        t_verify = best_of(lambda: onnxprune.prune(path, ratio=0.5, verify=True), repeat=1)
        print(f"{name:<20} {nodes:>6} {t_inspect:>10.2f} {t_prune:>8.2f} {t_verify:>15.2f} "
              f"{1e3 * t_prune / nodes:>16.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
