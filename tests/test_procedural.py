"""Dead-leaves images as data-free calibration (``--calib natural``): image-like inputs get
piecewise-flat discs in [0, 1] (normalized by ``--preprocess``), other inputs stay random."""

from __future__ import annotations

from importlib import resources

import numpy as np

import onnxprune
from onnxprune.calibration import load_calibration
from onnxprune.calibration.procedural import dead_leaves
from onnxprune.io import load_model
from onnxprune.pipeline import Strategy

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))


def test_dead_leaves_are_flat_regions_with_edges():
    images = dead_leaves(8, 3, 32, 32, np.random.default_rng(0))
    assert images.shape == (8, 3, 32, 32) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    same_as_right = np.mean(images[..., :, 1:] == images[..., :, :-1])
    assert same_as_right > 0.4            # flat regions: noise never has equal neighbours
    assert np.array_equal(images, dead_leaves(8, 3, 32, 32, np.random.default_rng(0)))


def test_natural_calibration_feeds_the_model_images():
    model = load_model(DEMO)
    batches = load_calibration("natural", model, seed=1)
    x = np.concatenate([b["input"] for b in batches])
    assert x.shape[1:] == (1, 8, 8) and x.min() >= 0 and x.max() <= 1 and len(x) == 32
    normalized = load_calibration("natural", model, seed=1, preprocess="mean=0.5 std=0.25")
    y = np.concatenate([b["input"] for b in normalized])
    np.testing.assert_allclose(y, (x - 0.5) / 0.25, rtol=1e-6)


def test_obspa_on_natural_images_prunes_and_says_so():
    _, report = onnxprune.prune(DEMO, ratio=0.5, round_to=1, calib="natural",
                                strategy=Strategy("obspa"))
    assert report["check"]["ok"]
    assert report["strategy"]["calibration"]["source"].startswith("natural: procedural")
