"""Loading and saving ONNX models.

Loading accepts a path or a ModelProto and always returns a private copy, so the caller's
object and file are never changed. Saving writes to a temporary file in the target folder and
renames it, so a failed run never leaves a half-written model behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import load_external_data_for_model

from ..errors import UserError
from .external import check_external_locations, external_bytes
from .normalize import inline_constant_ifs, sort_topologically, unique_node_names

_TWO_GB = 2**31 - 1


def load_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """Return a private, fully loaded copy of ``model`` (weights from external data included),
    its nodes in topological order, Ifs with a constant condition inlined and its node names
    unique (see ``normalize``)."""
    if isinstance(model, onnx.ModelProto):
        if not _fits_bytesize(model) or model.ByteSize() > _TWO_GB:
            raise UserError(_too_big("the model", None))
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return _normalized(copy)
    path = Path(model)
    if not path.exists():
        raise UserError(f"no such file: {path}")
    if path.is_dir():
        raise UserError(f"expected an ONNX file, got a directory: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"empty file: {path}")
    try:
        loaded = onnx.load(str(path), load_external_data=False)
        check_external_locations(loaded, path.parent)   # before a byte of it is read
        size = path.stat().st_size + external_bytes(loaded)
        if size > _TWO_GB:
            raise UserError(_too_big(str(path), size))
        load_external_data_for_model(loaded, str(path.parent))
    except (DecodeError, RuntimeWarning) as exc:
        raise UserError(f"not a valid ONNX model: {path} ({type(exc).__name__})") from None
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise UserError(f"cannot load {path}: {_first_line(exc)}") from None
    if not loaded.graph.node:
        raise UserError(f"not a valid ONNX model (no graph nodes): {path}")
    return _normalized(loaded)


def _too_big(what: str, size: int | None) -> str:
    """Models over 2 GB are refused up front, in one line, rather than failing after minutes
    and many gigabytes: every check runs on ONNX Runtime through one in-memory copy of the
    model, and protobuf cannot hold one over 2 GB."""
    amount = f" ({size / 2**30:.2f} GiB with its external data)" if size else ""
    return (f"{what}{amount} is over 2 GB: onnxprune does not handle models this large yet "
            f"(its checks serialize the model, which protobuf limits to 2 GB)")


def _normalized(model: onnx.ModelProto) -> onnx.ModelProto:
    sort_topologically(model.graph)
    inline_constant_ifs(model.graph)
    unique_node_names(model.graph)
    return model


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` atomically; models over 2 GB get an external data file."""
    target = Path(path)
    large = model.ByteSize() > _TWO_GB if _fits_bytesize(model) else True
    data_name = f"{target.name}.data"

    def write(tmp_name: str) -> None:
        if large:
            onnx.save_model(model, tmp_name, save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name)
        else:
            onnx.save_model(model, tmp_name)

    return write_atomically(target, write)


def write_atomically(path: str | os.PathLike, write) -> Path:
    """Call ``write(temporary path)`` in the target's folder, then rename it over ``path``: a
    failure leaves nothing behind, and readers never see a half-written file."""
    target = _output_target(path)
    tmp_name = _temporary_beside(target)
    try:
        write(tmp_name)
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give a normal file's mode
        os.replace(tmp_name, target)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def check_writable(path: str | os.PathLike) -> Path:
    """Fail before any work, not after it: ``path``'s folder must exist and take a new file,
    and ``path`` must not be a folder. Returns it as a Path."""
    target = _output_target(path)
    os.unlink(_temporary_beside(target))
    return target


def _output_target(path: str | os.PathLike) -> Path:
    """``path`` as a Path, once its folder exists and it is not itself a folder."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"output folder does not exist: {folder}")
    if target.is_dir():
        raise UserError(f"output path is a folder, not a file: {target}")
    return target


def _temporary_beside(target: Path) -> str:
    """An empty temporary file in ``target``'s folder (same file system: the rename is
    atomic); a folder that takes no new file is the user's error, said in one line."""
    folder = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise UserError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    return tmp_name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fits_bytesize(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
        return True
    except ValueError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
