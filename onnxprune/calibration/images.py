"""Calibration inputs from a folder of images. Data-driven criteria are only as good as the
activations they see. For a vision model that means real images, preprocessed the way the
model was trained on them. A short spec says how to preprocess:

    resize=256 crop=224 scale=255 mean=0.485,0.456,0.406 std=0.229,0.224,0.225 color=rgb

The spec can also be a ``.json`` file holding the same keys. Pillow reads the images. It is
optional (``pip install 'onnxprune[images]'``) and imported only when a folder is read."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import UserError
from ..runtime import user_inputs

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
MAX_IMAGES = 1024   # read from a folder when no sample count is given (the rest is left out)
SPEC_KEYS = ("resize", "crop", "scale", "mean", "std", "color", "layout")
COLORS = ("rgb", "bgr", "gray")
LAYOUTS = ("nchw", "nhwc")
FLOAT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
               onnx.TensorProto.DOUBLE: np.float64}
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")   # more than 8 bits a channel


@dataclass(frozen=True)
class Preprocess:
    """A parsed preprocessing spec. ``None`` fields get their default from the model."""

    resize: int | tuple[int, int] | None = None   # int: the shorter side; (h, w): exact
    crop: tuple[int, int] | None = None           # center crop (h, w)
    scale: float = 255.0                          # pixels are divided by it first
    mean: tuple[float, ...] = (0.0,)              # one value, or one per model channel
    std: tuple[float, ...] = (1.0,)
    color: str | None = None                      # rgb | bgr | gray
    layout: str | None = None                     # nchw | nhwc


@dataclass(frozen=True)
class ImageInput:
    """The model's one image input, plus what the spec and the model say to feed it."""

    name: str
    layout: str
    color: str
    height: int | None   # None: dynamic (any size)
    width: int | None
    dtype: type


def parse_preprocess(spec: str | Preprocess | None) -> Preprocess:
    """Parse ``key=value`` items separated by spaces, or read a ``.json`` file with the same
    keys. Every key is optional; ``None`` or an empty string gives the defaults."""
    if spec is None or isinstance(spec, Preprocess):
        return spec or Preprocess()
    spec = spec.strip()
    items = _json_items(spec) if spec.lower().endswith(".json") else _inline_items(spec)
    return Preprocess(**{key: _PARSERS[key](key, value) for key, value in items.items()})


def load_images(folder: str, model: onnx.ModelProto, preprocess: str | Preprocess | None = None,
                shapes: dict[str, tuple[int, ...]] | None = None, limit: int | None = None
                ) -> dict[str, np.ndarray]:
    """The preprocessed images of ``folder`` (sorted by name, not recursive) as one array for
    the model's image input, samples on axis 0: ``{input name: array}``. At most ``limit``
    images are read, ``MAX_IMAGES`` when it is None. ``shapes`` fixes the H and W that the
    model leaves dynamic."""
    spec = parse_preprocess(preprocess)
    target = image_input(model, spec, shapes)
    _check_channel_values(spec, target)
    limit = MAX_IMAGES if limit is None else limit
    if limit < 1:
        raise UserError(f"the number of calibration images must be at least 1, not {limit}")
    image = _pillow()
    arrays, first = [], None
    for path in image_files(folder)[:limit]:
        picture = _geometry(_read(path, target.color, image), spec, target, path, image)
        _check_size(picture, target, path, first)
        first = first or (path, picture.size)
        arrays.append(_to_array(picture, spec, target))
    return {target.name: np.stack(arrays)}


def image_files(folder: str) -> list[str]:
    """The image files directly in ``folder``, sorted by name."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError as exc:
        raise UserError(f"cannot list image folder {folder}: {exc.strerror}") from None
    if not entries:
        raise UserError(f"image folder {folder} is empty")
    files = [os.path.join(folder, e) for e in entries
             if os.path.splitext(e)[1].lower() in IMAGE_EXTENSIONS
             and os.path.isfile(os.path.join(folder, e))]
    if not files:
        raise UserError(f"no images in {folder} (looked for {' '.join(IMAGE_EXTENSIONS)}; "
                        "subfolders are not searched)")
    return files


def image_input(model: onnx.ModelProto, spec: Preprocess,
                shapes: dict[str, tuple[int, ...]] | None = None) -> ImageInput:
    """The model's single 4-D float input, with its layout, color and static H and W."""
    name, dims, elem = _single_image_input(model)
    layout = spec.layout or _infer_layout(name, dims)
    c_axis, h_axis, w_axis = (1, 2, 3) if layout == "nchw" else (3, 1, 2)
    channels = dims[c_axis]
    color = spec.color or ("gray" if channels == 1 else "rgb")
    _check_channels(name, channels, color)
    given = tuple((shapes or {}).get(name, ())) or (None,) * 4
    if len(given) != 4:
        raise UserError(f"the shape given for input {name!r} has {len(given)} dims, it has 4")
    return ImageInput(name, layout, color, dims[h_axis] or given[h_axis],
                      dims[w_axis] or given[w_axis], FLOAT_TYPES[elem])


# -- the spec ------------------------------------------------------------------------------

def _inline_items(spec: str) -> dict[str, str]:
    items: dict[str, str] = {}
    for token in spec.split():
        key, sep, value = token.partition("=")
        if not sep:
            raise UserError(f"preprocessing item {token!r} is not key=value")
        _add_item(items, key.lower(), value)
    return items


def _json_items(path: str) -> dict[str, str]:
    if not os.path.isfile(path):
        raise UserError(f"preprocessing spec file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read preprocessing spec {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a preprocessing spec file holds one JSON object of key: value")
    items: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, list):
            value = ("x" if key in ("resize", "crop") else ",").join(str(v) for v in value)
        _add_item(items, key.lower(), str(value))
    return items


def _add_item(items: dict[str, str], key: str, value: str) -> None:
    if key not in SPEC_KEYS:
        raise UserError(f"unknown preprocessing key {key!r} (known: {', '.join(SPEC_KEYS)})")
    if key in items:
        raise UserError(f"preprocessing key {key!r} is given twice")
    items[key] = value


def _size(key: str, value: str) -> int | tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:[xX](\d+))?", value)
    if not match or int(match[1]) < 1 or (match[2] and int(match[2]) < 1):
        raise UserError(f"bad {key}={value!r}: give N or HxW, positive integers")
    if match[2]:
        return int(match[1]), int(match[2])
    return int(match[1]) if key == "resize" else (int(match[1]), int(match[1]))


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _scale(key: str, value: str) -> float:
    number = _number(value)
    if number is None or number <= 0:
        raise UserError(f"bad {key}={value!r}: give a positive number")
    return number


def _channel_values(key: str, value: str) -> tuple[float, ...]:
    numbers = [_number(v) for v in value.split(",")]
    if None in numbers:
        raise UserError(f"bad {key}={value!r}: give one number, or one per channel "
                        "separated by commas")
    if key == "std" and min(numbers) <= 0:
        raise UserError(f"bad {key}={value!r}: std values must be positive")
    return tuple(numbers)


def _choice(key: str, value: str) -> str:
    choices = COLORS if key == "color" else LAYOUTS
    if value.lower() not in choices:
        raise UserError(f"bad {key}={value!r}: give {' or '.join(choices)}")
    return value.lower()


_PARSERS = {"resize": _size, "crop": _size, "scale": _scale, "mean": _channel_values,
            "std": _channel_values, "color": _choice, "layout": _choice}


# -- the model -----------------------------------------------------------------------------

def _single_image_input(model: onnx.ModelProto) -> tuple[str, list[int | None], int]:
    by_name = {i.name: i for i in model.graph.input}
    names = user_inputs(model)
    if len(names) == 1:
        tensor = by_name[names[0]].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tensor.shape.dim]
        if tensor.HasField("shape") and len(dims) == 4 and tensor.elem_type in FLOAT_TYPES:
            return names[0], dims, tensor.elem_type
    described = ", ".join(_describe(by_name[n]) for n in names) or "none"
    raise UserError("an image folder feeds a model with exactly one 4-D float input "
                    f"(float, float16 or double); this model's inputs: {described}")


def _describe(value: onnx.ValueInfoProto) -> str:
    tensor = value.type.tensor_type
    kind = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    if not tensor.HasField("shape"):
        return f"{value.name} {kind}[?]"
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
            for d in tensor.shape.dim]
    return f"{value.name} {kind}[{','.join(dims)}]"


def _infer_layout(name: str, dims: list[int | None]) -> str:
    first, last = dims[1] in (1, 3), dims[3] in (1, 3)
    if first != last:
        return "nchw" if first else "nhwc"
    shown = "x".join("?" if d is None else str(d) for d in dims)
    raise UserError(f"cannot tell whether input {name!r} ({shown}) is NCHW or NHWC: "
                    "add layout=nchw or layout=nhwc to the preprocessing spec")


def _check_channels(name: str, channels: int | None, color: str) -> None:
    gives = 1 if color == "gray" else 3
    if channels is None or channels == gives:
        return
    if channels not in (1, 3):
        raise UserError(f"input {name!r} has {channels} channels; images give 1 (color=gray) "
                        "or 3 (color=rgb or bgr)")
    raise UserError(f"color={color} gives {gives} channel(s), input {name!r} has {channels}")


def _check_channel_values(spec: Preprocess, target: ImageInput) -> None:
    channels = 1 if target.color == "gray" else 3
    for key in ("mean", "std"):
        count = len(getattr(spec, key))
        if count not in (1, channels):
            raise UserError(f"{key} has {count} values; color={target.color} gives "
                            f"{channels} channel(s): give 1 or {channels}")


# -- the images ----------------------------------------------------------------------------

def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise UserError("reading an image folder needs Pillow: pip install 'onnxprune[images]'"
                        ) from None
    return Image


def _read(path: str, color: str, image):
    """The image at ``path`` as 8-bit RGB, or L for gray."""
    try:
        with image.open(path) as picture:
            if picture.mode in WIDE_MODES:
                raise UserError(f"image {path} has mode {picture.mode}; only 8-bit images "
                                "are read")
            return picture.convert("L" if color == "gray" else "RGB")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input
        raise UserError(f"cannot read image {path}: {' '.join(str(exc).split())}") from None


def _geometry(picture, spec: Preprocess, target: ImageInput, path: str, image):
    """Resize then center-crop as the spec says; with neither, resize exactly to the
    model's H x W when the picture differs from it."""
    bilinear = image.Resampling.BILINEAR
    if spec.resize is None and spec.crop is None:
        want = (target.width, target.height)
        if None not in want and picture.size != want:
            picture = picture.resize(want, bilinear)
        return picture
    if spec.resize is not None:
        height, width = _resized(picture.height, picture.width, spec.resize)
        if (width, height) != picture.size:
            picture = picture.resize((width, height), bilinear)
    if spec.crop is not None:
        picture = _center_crop(picture, spec.crop, path)
    return picture


def _resized(height: int, width: int, resize: int | tuple[int, int]) -> tuple[int, int]:
    """The (h, w) after resizing: exact, or the shorter side to N and the longer side scaled
    by the same factor, rounded down."""
    if isinstance(resize, tuple):
        return resize
    if height <= width:
        return resize, max(1, resize * width // height)
    return max(1, resize * height // width), resize


def _center_crop(picture, crop: tuple[int, int], path: str):
    height, width = crop
    if height > picture.height or width > picture.width:
        raise UserError(f"crop={height}x{width} is larger than image {path} "
                        f"({picture.height}x{picture.width} after resizing)")
    top, left = (picture.height - height) // 2, (picture.width - width) // 2
    return picture.crop((left, top, left + width, top + height))


def _check_size(picture, target: ImageInput, path: str, first) -> None:
    got = (picture.height, picture.width)
    want = (target.height, target.width)
    if any(w is not None and w != g for w, g in zip(want, got)):
        wanted = "x".join("any" if w is None else str(w) for w in want)
        raise UserError(f"preprocessing gives {got[0]}x{got[1]} images ({path}), input "
                        f"{target.name!r} wants {wanted} (HxW)")
    if first is not None and first[1] != picture.size:
        (w0, h0) = first[1]
        raise UserError(f"images differ in size after preprocessing: {first[0]} is "
                        f"{h0}x{w0}, {path} is {got[0]}x{got[1]}; give resize= or crop=")


def _to_array(picture, spec: Preprocess, target: ImageInput) -> np.ndarray:
    """Pixels as the model takes them: scaled, normalized per channel, in its layout."""
    pixels = np.asarray(picture, dtype=np.float64)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if target.color == "bgr":
        pixels = pixels[:, :, ::-1]
    pixels = (pixels / spec.scale - np.asarray(spec.mean)) / np.asarray(spec.std)
    if target.layout == "nchw":
        pixels = pixels.transpose(2, 0, 1)
    return pixels.astype(target.dtype)
