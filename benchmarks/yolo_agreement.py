"""The real YOLOv8n detector that ``nudenet`` ships, pruned without fine-tuning: how well its
detections agree with the unpruned model's on scikit-image's bundled photos.

Images: astronaut, camera and 30 faces of ``lfw_subset`` (evaluation), resized to 320×320; 16
other ``lfw_subset`` faces and the coffee/chelsea photos are the calibration set. Detections:
class score > 0.25, greedy NMS at IoU 0.45. Agreement: F1 of matching the pruned model's
detections to the dense model's (same class, IoU ≥ 0.5), pooled over all images; plus the
relative L2 error of the raw output tensor. Every pruned model is verified against its masked
original. Run from the repository root::

    python -m benchmarks.yolo_agreement [--macs 0.7 0.5] [--compensation obs sequential]
"""

from __future__ import annotations

import argparse

import numpy as np

import onnxprune
from benchmarks.common import machine
from models import zoo
from onnxprune.runtime import session

CONFIGS = [("random", "none", None), ("l2", "none", None), ("wanda", "none", "calibration"),
           ("l2", "obs", "calibration"), ("obs", "obs", "calibration"),
           ("obspa", "obs", "synthetic"), ("obspa", "obs", "natural"),
           ("l2", "obs", "natural"), ("l2", "sequential", "calibration"),
           ("obs", "sequential", "calibration"), ("obspa", "sequential", "natural")]


def images():
    from skimage import data
    from skimage.transform import resize

    def prep(img):
        img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
        x = resize(img, (320, 320), anti_aliasing=True).astype(np.float32)
        return x.transpose(2, 0, 1)[None]

    faces = data.lfw_subset()
    evaluation = [prep(data.astronaut()), prep(data.camera())] + [prep(f) for f in faces[:30]]
    calibration = [prep(f) for f in faces[100:116]] + [prep(data.coffee()), prep(data.chelsea())]
    return np.concatenate(evaluation), np.concatenate(calibration)


def detect(output: np.ndarray, threshold=0.25, iou=0.45) -> list[tuple]:
    """(class, box) of one image's raw YOLOv8 output [4 + classes, anchors]."""
    boxes = np.stack([output[0] - output[2] / 2, output[1] - output[3] / 2,
                      output[0] + output[2] / 2, output[1] + output[3] / 2], 1)
    scores, classes = output[4:].max(0), output[4:].argmax(0)
    keep = []
    for i in np.argsort(-scores):
        if scores[i] < threshold:
            break
        if all(classes[j] != classes[i] or _iou(boxes[i], boxes[j]) < iou for j in keep):
            keep.append(i)
    return [(int(classes[i]), boxes[i]) for i in keep]


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def agreement(dense: list[list], pruned: list[list]) -> float:
    """F1 of pruned detections matched one-to-one to dense ones (same class, IoU ≥ 0.5)."""
    matched = total_d = total_p = 0
    for d, p in zip(dense, pruned):
        total_d, total_p = total_d + len(d), total_p + len(p)
        free = list(range(len(d)))
        for cls, box in p:
            hit = next((k for k in free if d[k][0] == cls and _iou(d[k][1], box) >= 0.5), None)
            if hit is not None:
                free.remove(hit)
                matched += 1
    return 2 * matched / (total_d + total_p) if total_d + total_p else 1.0


def outputs(model, x) -> np.ndarray:
    sess = session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 8]})[0] for i in range(0, len(x), 8)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--macs", type=float, nargs="+", default=[0.7, 0.5])
    parser.add_argument("--compensation", nargs="+", default=None,
                        help="only the rows with these compensations")
    args = parser.parse_args(argv)
    path = str(zoo.ensure("nudenet_yolov8n", "file"))
    x_eval, x_calib = images()
    calib = [{"images": x_calib[i:i + 8]} for i in range(0, len(x_calib), 8)]
    dense_out = outputs(path, x_eval)
    dense = [detect(o) for o in dense_out]
    print(machine())
    print(f"{len(x_eval)} evaluation images, {sum(map(len, dense))} dense detections; "
          f"{len(x_calib)} calibration images")
    print("| criterion | compensation | data | "
          + " | ".join(f"MACs ≤ {m:.0%}: F1 / rel. L2" for m in args.macs) + " |")
    print("|---|---|---|" + "---|" * len(args.macs))
    shapes = {"images": (1, 3, 320, 320)}
    for name, compensation, data in CONFIGS:
        if args.compensation and compensation not in args.compensation:
            continue
        cells = []
        for target in args.macs:
            pruned, report = onnxprune.prune(
                path, target_macs=target, input_shapes=shapes,
                calib=calib if data == "calibration" else data,
                strategy=onnxprune.Strategy(name, compensate=compensation))
            assert report["check"]["ok"]
            out = outputs(pruned, x_eval)
            rel = float(np.linalg.norm(out - dense_out) / np.linalg.norm(dense_out))
            cells.append(f"{agreement(dense, [detect(o) for o in out]):.3f} / {rel:.3f}")
        print(f"| {name} | {compensation} | {data or 'none'} | " + " | ".join(cells) + " |",
              flush=True)


if __name__ == "__main__":
    main()
