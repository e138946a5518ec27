"""Calibration inputs from an image folder: exact pixels after each preprocessing step, the
batch split, and a one-line message for every bad input."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxprune.calibration import load_calibration, load_images, parse_preprocess
from onnxprune.calibration.images import Preprocess
from onnxprune.errors import UserError
from onnxprune.runtime import run_model

from .builder import GraphBuilder

Image = pytest.importorskip("PIL.Image")

RNG = np.random.default_rng(0)


def conv_model(shape=(1, 3, 8, 8)):
    """A runnable Conv model on an NCHW input."""
    b = GraphBuilder()
    y = b.conv("x", shape[1], 4)
    return b.model({"x": list(shape)}, [y])


def identity_model(*inputs):
    """A model that only declares inputs: (name, shape, elem_type) each."""
    infos = [helper.make_tensor_value_info(n, t, s) for n, s, t in inputs]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n, _, _ in inputs]
    outs = [helper.make_tensor_value_info(f"{n}_out", t, s) for n, s, t in inputs]
    model = helper.make_model(helper.make_graph(nodes, "g", infos, outs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def image(shape=(1, 3, 8, 8), elem=TensorProto.FLOAT):
    return identity_model(("x", list(shape), elem))


def save(folder, name, pixels):
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(folder / name)
    return np.asarray(Image.open(folder / name))   # what was written (JPEG is lossy)


def random_pixels(h=8, w=8, channels=3):
    shape = (h, w, channels) if channels > 1 else (h, w)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def ramp(h, w):
    """A horizontal ramp, 4x + 2 in column x, equal in every row and channel."""
    row = 4 * np.arange(w) + 2
    return np.repeat(np.tile(row, (h, 1))[:, :, None], 3, axis=2)


# -- pixels ------------------------------------------------------------------------------

def test_default_is_nchw_rgb_over_255_and_the_model_runs(tmp_path):
    written = save(tmp_path, "a.png", random_pixels())
    model = conv_model()
    batches = load_calibration(str(tmp_path), model)
    assert len(batches) == 1 and list(batches[0]) == ["x"]
    x = batches[0]["x"]
    assert x.dtype == np.float32 and x.shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(x[0], (written / 255.0).transpose(2, 0, 1).astype(np.float32))
    out = next(iter(run_model(model, batches[0]).values()))
    assert out.shape == (1, 4, 8, 8) and np.isfinite(out).all()


def test_scale_mean_std_bgr_nhwc(tmp_path):
    written = save(tmp_path, "a.png", random_pixels())
    spec = "scale=1 mean=10,20,30 std=2,4,8 color=bgr"
    x = load_calibration(str(tmp_path), image((1, 8, 8, 3)), preprocess=spec)[0]["x"]
    want = (written[:, :, ::-1].astype(np.float64) - [10, 20, 30]) / [2, 4, 8]
    assert x.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(x[0], want.astype(np.float32))


def test_single_mean_and_std_apply_to_every_channel_nchw(tmp_path):
    written = save(tmp_path, "a.png", random_pixels())
    x = load_calibration(str(tmp_path), image(), preprocess="mean=0.5 std=0.25 layout=nchw"
                         )[0]["x"]
    want = ((written / 255.0 - 0.5) / 0.25).transpose(2, 0, 1)
    np.testing.assert_array_equal(x[0], want.astype(np.float32))


def test_gray_model_converts_color_with_luma_weights(tmp_path):
    save(tmp_path, "a.png", np.full((8, 8, 3), (200, 100, 50)))
    gray = save(tmp_path, "b.png", random_pixels(channels=1))
    batches = load_calibration(str(tmp_path), image((1, 1, 8, 8)))
    luma = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)   # ITU-R 601: 124.2
    np.testing.assert_array_equal(batches[0]["x"], np.full((1, 1, 8, 8), np.float32(luma / 255)))
    np.testing.assert_array_equal(batches[1]["x"][0, 0], (gray / 255.0).astype(np.float32))


def test_gray_image_to_rgb_model_repeats_the_channel(tmp_path):
    gray = save(tmp_path, "a.png", random_pixels(channels=1))
    x = load_calibration(str(tmp_path), image())[0]["x"]
    np.testing.assert_array_equal(x[0], np.stack([gray / 255.0] * 3).astype(np.float32))


def test_resize_shorter_side_then_center_crop(tmp_path):
    """16x32 -> resize=8 -> 8x16 (bilinear halves the ramp: 8j + 4 at new column j away from
    the border) -> crop=8 keeps columns 4..11."""
    save(tmp_path, "a.png", ramp(16, 32))
    x = load_calibration(str(tmp_path), image(), preprocess="resize=8 crop=8 scale=1")[0]["x"]
    columns = 8 * (np.arange(8) + 4) + 4
    np.testing.assert_array_equal(x[0], np.broadcast_to(columns, (3, 8, 8)).astype(np.float32))


def test_without_resize_or_crop_images_are_resized_to_the_model(tmp_path):
    save(tmp_path, "a.png", ramp(16, 16))
    x = load_calibration(str(tmp_path), image(), preprocess="scale=1")[0]["x"]
    interior = 8 * np.arange(1, 7) + 4              # columns clear of the border
    np.testing.assert_array_equal(x[0, :, :, 1:7], np.broadcast_to(interior, (3, 8, 6)))


def test_exact_resize_and_crop_only(tmp_path):
    save(tmp_path, "a.png", np.full((20, 10, 3), (7, 77, 177)))
    x = load_calibration(str(tmp_path), image(), preprocess="resize=8x8 scale=1")[0]["x"]
    np.testing.assert_array_equal(x[0], np.broadcast_to(np.array([7, 77, 177])[:, None, None],
                                                        (3, 8, 8)))
    (tmp_path / "a.png").unlink()
    written = save(tmp_path, "b.png", random_pixels(11, 12))
    x = load_calibration(str(tmp_path), image(), preprocess="crop=8 scale=1")[0]["x"]
    np.testing.assert_array_equal(x[0], written[1:9, 2:10].transpose(2, 0, 1))


def test_float16_model_and_jpeg_with_upper_case_extension(tmp_path):
    written = save(tmp_path, "a.JPEG", random_pixels())
    x = load_calibration(str(tmp_path), image(elem=TensorProto.FLOAT16))[0]["x"]
    assert x.dtype == np.float16
    np.testing.assert_array_equal(x[0], (written / 255.0).transpose(2, 0, 1).astype(np.float16))


def test_json_spec_file_equals_the_inline_spec(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    save(folder, "a.png", random_pixels(10, 12))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"resize": [9, 9], "crop": 8, "mean": [0.4, 0.5, 0.6],
                                "std": 0.2, "color": "bgr"}))
    inline = "resize=9x9 crop=8 mean=0.4,0.5,0.6 std=0.2 color=bgr"
    assert parse_preprocess(str(spec)) == parse_preprocess(inline)
    got = load_calibration(str(folder), image(), preprocess=str(spec))[0]["x"]
    want = load_calibration(str(folder), image(), preprocess=inline)[0]["x"]
    np.testing.assert_array_equal(got, want)


def test_parse_grammar():
    assert parse_preprocess(None) == parse_preprocess("") == Preprocess()
    spec = parse_preprocess(" resize=256  crop=224x200 scale=1 mean=1,2,3 std=4 "
                            "color=BGR layout=NHWC ")
    assert spec == Preprocess(resize=256, crop=(224, 200), scale=1.0, mean=(1.0, 2.0, 3.0),
                              std=(4.0,), color="bgr", layout="nhwc")
    assert parse_preprocess("resize=3x4 crop=5").resize == (3, 4)
    assert parse_preprocess("crop=5").crop == (5, 5)


# -- batches -----------------------------------------------------------------------------

def folder_of(tmp_path, count):
    written = [save(tmp_path, f"img{k}.png", random_pixels()) for k in range(count)]
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    save(tmp_path / "sub", "skipped.png", random_pixels(3, 3))   # not recursive
    return written


def test_dynamic_batch_is_split_by_batch_size_in_name_order(tmp_path):
    written = folder_of(tmp_path, 5)
    batches = load_calibration(str(tmp_path), image(("N", 3, 8, 8)), batch_size=2)
    assert [len(b["x"]) for b in batches] == [2, 2, 1]
    stacked = np.concatenate([b["x"] for b in batches])
    want = np.stack([(w / 255.0).transpose(2, 0, 1) for w in written]).astype(np.float32)
    np.testing.assert_array_equal(stacked, want)
    limited = load_calibration(str(tmp_path), image(("N", 3, 8, 8)), batch_size=2, samples=3)
    assert [len(b["x"]) for b in limited] == [2, 1]
    np.testing.assert_array_equal(limited[1]["x"], want[2:3])


def test_fixed_batch_drops_the_remainder(tmp_path):
    folder_of(tmp_path, 5)
    batches = load_calibration(str(tmp_path), image((2, 3, 8, 8)), batch_size=16)
    assert [b["x"].shape for b in batches] == [(2, 3, 8, 8)] * 2
    with pytest.raises(UserError, match="takes batches of 8, the data has 5 samples"):
        load_calibration(str(tmp_path), image((8, 3, 8, 8)))


def test_load_images_uses_shapes_for_dynamic_dims(tmp_path):
    save(tmp_path, "a.png", random_pixels(12, 12))
    arrays = load_images(str(tmp_path), image((1, 3, "H", "W")), shapes={"x": (1, 3, 6, 6)})
    assert arrays["x"].shape == (1, 3, 6, 6)
    assert load_images(str(tmp_path), image((1, 3, "H", "W")))["x"].shape == (1, 3, 12, 12)


# -- errors ------------------------------------------------------------------------------

def raises(message, call, *args, **kwargs):
    with pytest.raises(UserError, match=message) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec, message", [
    ("size=3", r"unknown preprocessing key 'size' \(known: resize, crop, scale"),
    ("resize", r"preprocessing item 'resize' is not key=value"),
    ("resize=0", r"bad resize='0': give N or HxW, positive integers"),
    ("crop=8x", r"bad crop='8x': give N or HxW"),
    ("resize=", r"bad resize='': give N or HxW"),
    ("scale=0", r"bad scale='0': give a positive number"),
    ("scale=nan", r"bad scale='nan': give a positive number"),
    ("mean=1,x,3", r"bad mean='1,x,3': give one number, or one per channel"),
    ("std=1,0,1", r"bad std='1,0,1': std values must be positive"),
    ("color=cmyk", r"bad color='cmyk': give rgb or bgr or gray"),
    ("layout=nhcw", r"bad layout='nhcw': give nchw or nhwc"),
    ("crop=4 crop=5", r"preprocessing key 'crop' is given twice"),
])
def test_bad_spec(spec, message):
    raises(message, parse_preprocess, spec)


def test_bad_spec_files(tmp_path):
    raises("preprocessing spec file not found: .*missing.json",
           parse_preprocess, str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{resize: 8")
    raises("cannot read preprocessing spec .*bad.json: Expecting property name",
           parse_preprocess, str(bad))
    bad.write_text("[1, 2]")
    raises("a preprocessing spec file holds one JSON object", parse_preprocess, str(bad))
    bad.write_text('{"interp": "nearest"}')
    raises("unknown preprocessing key 'interp'", parse_preprocess, str(bad))


def test_bad_folders(tmp_path):
    raises(r"image folder .* is empty", load_calibration, str(tmp_path), image())
    (tmp_path / "readme.txt").write_text("hi")
    raises(r"no images in .* \(looked for .png .jpg .jpeg .bmp .webp .tif .tiff; subfolders",
           load_calibration, str(tmp_path), image())
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    raises(r"cannot read image .*broken.png: cannot identify image file",
           load_calibration, str(tmp_path), image())
    (tmp_path / "broken.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "deep.png")
    raises(r"image .*deep.png has mode I;16; only 8-bit images are read",
           load_calibration, str(tmp_path), image())


def test_preprocess_needs_a_folder(tmp_path):
    npz = tmp_path / "calib.npz"
    np.savez(npz, x=np.zeros((2, 3, 8, 8), np.float32))
    for source in (str(npz), "random"):
        raises(r"a preprocessing spec goes with an image folder; .* is not one",
               load_calibration, source, image(), preprocess="scale=1")
    raises(r"not found: .*nowhere \(give an .npz file, an image folder or 'random'\)",
           load_calibration, str(tmp_path / "nowhere"), image())


@pytest.mark.parametrize("model, message", [
    (identity_model(("a", [1, 3, 8, 8], TensorProto.FLOAT), ("b", [1, 3, 8, 8],
                                                             TensorProto.FLOAT)),
     r"exactly one 4-D float input .*inputs: a float\[1,3,8,8\], b float\[1,3,8,8\]"),
    (image((1, 3, 8)), r"exactly one 4-D float input .*inputs: x float\[1,3,8\]"),
    (image(elem=TensorProto.INT64), r"exactly one 4-D float input .*inputs: x int64\[1,3,8,8\]"),
    (image((1, 3, 8, 3)), r"'x' \(1x3x8x3\) is NCHW or NHWC: add layout=nchw or layout=nhwc"),
    (image((1, 4, 8, 8)), r"cannot tell whether input 'x' \(1x4x8x8\)"),
])
def test_bad_models(tmp_path, model, message):
    save(tmp_path, "a.png", random_pixels())
    raises(message, load_calibration, str(tmp_path), model)


@pytest.mark.parametrize("shape, spec, message", [
    ((1, 3, 8, 8), "crop=6", r"preprocessing gives 6x6 images \(.*a.png\), input 'x' wants 8x8"),
    ((1, 3, 8, "W"), "resize=4", r"preprocessing gives 4x4 images .* wants 8xany \(HxW\)"),
    ((1, 3, 8, 8), "crop=9", r"crop=9x9 is larger than image .*a.png \(8x8 after resizing\)"),
    ((1, 3, 8, 8), "color=gray", r"color=gray gives 1 channel\(s\), input 'x' has 3"),
    ((1, 4, 8, 8), "layout=nchw", r"input 'x' has 4 channels; images give 1 \(color=gray\) or 3"),
    ((1, 3, 8, 8), "mean=1,2", r"mean has 2 values; color=rgb gives 3 channel\(s\): give 1 or 3"),
    ((1, 1, 8, 8), "std=1,2,3", r"std has 3 values; color=gray gives 1 channel\(s\)"),
])
def test_bad_preprocessing_for_the_model(tmp_path, shape, spec, message):
    save(tmp_path, "a.png", random_pixels())
    raises(message, load_calibration, str(tmp_path), image(shape), preprocess=spec)


def test_images_of_different_sizes_for_a_dynamic_model(tmp_path):
    save(tmp_path, "a.png", random_pixels(8, 8))
    save(tmp_path, "b.png", random_pixels(8, 9))
    raises(r"images differ in size after preprocessing: .*a.png is 8x8, .*b.png is 8x9; "
           r"give resize= or crop=", load_calibration, str(tmp_path), image(("N", 3, "H", "W")))


def test_sample_count_must_be_positive(tmp_path):
    save(tmp_path, "a.png", random_pixels())
    raises("the number of calibration images must be at least 1, not 0",
           load_calibration, str(tmp_path), image(), samples=0)


def test_without_pillow(tmp_path, monkeypatch):
    save(tmp_path, "a.png", random_pixels())
    monkeypatch.setitem(sys.modules, "PIL", None)
    raises(r"reading an image folder needs Pillow: pip install 'onnxprune\[images\]'",
           load_calibration, str(tmp_path), image())
