"""Loading and saving ONNX models.

Loading accepts a path or a ModelProto and always returns a private copy, so the caller's
object and file are never changed; weights in external files stay in files (``weights``).
Saving writes to a temporary file in the target folder and renames it, so a failed run never
leaves a half-written model behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import ExternalDataInfo

from ..errors import UserError
from .external import check_external_locations, external_tensors, point_at
from .normalize import (inline_constant_ifs, sort_topologically, true_constant_shapes,
                        unique_node_names)
from .weights import ALIGN, WeightStore, detach

_TWO_GB = 2**31 - 1
_PACK_LIVE = 0.9        # share of a pack the saved model must read for it to be taken whole
_CHUNK = 4 << 20        # bytes copied at a time when saving


def load_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """Return a private copy of ``model``, its nodes in topological order, Ifs with a constant
    condition inlined and its node names unique (see ``normalize``). Weights in external
    files stay there: the copy reads them through a ``WeightStore``, which is how models over
    2 GB load."""
    return load_with_size(model)[0]


def load_with_size(model: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, int]:
    """``load_model``, and the bytes ``model`` takes serialized (a path: its file, without
    external data). An in-memory model's size comes from the 2 GB check, which serializes
    it: asking again would serialize it twice."""
    if isinstance(model, onnx.ModelProto):
        size = in_memory_bytes(model)
        if size is None or size > _TWO_GB:
            raise UserError("the model is over 2 GB in memory, which protobuf cannot hold: "
                            "save it with external data and pass its path")
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        if WeightStore.of(copy) is None:
            detach(copy)
            if any(external_tensors(copy)):
                raise UserError("the model keeps weights in external files: pass its path, "
                                "so that they are read from beside it")
        return _normalized(copy), size
    path = Path(model)
    if not path.exists():
        raise UserError(f"no such file: {path}")
    if path.is_dir():
        raise UserError(f"expected an ONNX file, got a directory: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"empty file: {path}")
    try:
        loaded = onnx.load(str(path), load_external_data=False)
        detach(loaded)      # a store is ours to name, never the file's
        check_external_locations(loaded, path.parent)   # before a byte of it is read
        if any(external_tensors(loaded)):
            WeightStore().adopt(loaded, path.parent)
    except (DecodeError, RuntimeWarning) as exc:
        raise UserError(f"not a valid ONNX model: {path} ({type(exc).__name__})") from None
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise UserError(f"cannot load {path}: {_first_line(exc)}") from None
    if not loaded.graph.node:
        raise UserError(f"not a valid ONNX model (no graph nodes): {path}")
    return _normalized(loaded), path.stat().st_size


def _normalized(model: onnx.ModelProto) -> onnx.ModelProto:
    sort_topologically(model.graph)
    inline_constant_ifs(model.graph)
    unique_node_names(model.graph)
    true_constant_shapes(model.graph)
    return model


def data_file_name(path: str | os.PathLike) -> str:
    """The name of the data file :func:`save_model` writes beside ``path`` when it needs one."""
    return f"{Path(path).name}.data"


def remove_saved(path: str | os.PathLike) -> None:
    """Delete a model :func:`save_model` wrote, with its data file where it has one."""
    target = Path(path)
    for file in (target, target.with_name(data_file_name(target))):
        file.unlink(missing_ok=True)


def save_model(model: onnx.ModelProto, path: str | os.PathLike,
               hand_over: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically. A model whose weights are in files (it was
    loaded with external data) gets its own data file, ``<name>.data`` beside it, streamed
    from those files; any other model over 2 GB gets one too. ``hand_over``: the last use of
    ``model`` (the CLI's); its rewrite's pack may move to the output rather than be copied,
    and then ``model`` no longer reads those weights."""
    target = Path(path)
    store = WeightStore.of(model)
    if store is not None:
        return _save_stored(model, target, store, hand_over)
    size = in_memory_bytes(model)
    large = size is None or size > _TWO_GB
    data_name = data_file_name(target)

    def write(tmp_name: str) -> None:
        if large:
            onnx.save_model(model, tmp_name, save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name)
        else:
            onnx.save_model(model, tmp_name)

    return write_atomically(target, write)


def _save_stored(model: onnx.ModelProto, target: Path, store: WeightStore,
                 hand_over: bool) -> Path:
    """The data file first (each tensor copied in chunks from its store file, at an offset
    that ONNX Runtime can map; handed over, the pack that holds most of them becomes the
    file, the rest appended), then the model that points at it; a failure removes both. A
    pack handed over leaves the store, so the output's data file has one link (``onnx``
    refuses a data file with more)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    detach(out)
    tensors = list(external_tensors(out))
    if not tensors:
        return write_atomically(target, lambda tmp: onnx.save_model(out, tmp))
    data_name = data_file_name(target)
    data = _output_target(target).parent / data_name
    pack = _pack_to_take(tensors, store) if hand_over else None
    linked = []

    def write_data(tmp_name: str) -> None:
        taken = pack is not None and _link(store.folder / pack, tmp_name)
        linked[:] = [taken]
        with open(tmp_name, "r+b") as sink:
            sink.seek(0, os.SEEK_END)
            for tensor in tensors:
                info = ExternalDataInfo(tensor)
                length = (int(info.length) if info.length is not None
                          else store.path(tensor).stat().st_size - int(info.offset or 0))
                if taken and info.location == pack:     # already there, at its offset
                    offset = int(info.offset or 0)
                else:
                    sink.write(b"\0" * (-sink.tell() % ALIGN))
                    offset = sink.tell()
                    with open(store.path(tensor), "rb") as source:
                        source.seek(int(info.offset or 0))
                        _copy(source, sink, length)
                point_at(tensor, data_name, offset, length)

    write_atomically(data, write_data)
    try:
        saved = write_atomically(target, lambda tmp: onnx.save_model(out, tmp))
    except BaseException:
        data.unlink(missing_ok=True)
        raise
    if any(linked):
        (store.folder / pack).unlink()
    return saved


def _pack_to_take(tensors, store: WeightStore) -> str | None:
    """The store's pack (``weights.Pack``) that can become the output's data file: the one
    holding most of the model's bytes, if they fill at least ``_PACK_LIVE`` of it (a pack
    also holds weights that a later step replaced) and no other file links it yet."""
    live: dict[str, int] = {}
    for tensor in tensors:
        info = ExternalDataInfo(tensor)
        if info.location.startswith("wp") and info.length is not None:
            live[info.location] = live.get(info.location, 0) + int(info.length)
    location = max(live, key=live.get, default=None)
    if location is None:
        return None
    stat = (store.folder / location).stat()
    if stat.st_nlink > 1 or live[location] < _PACK_LIVE * stat.st_size:
        return None
    return location


def _link(source: Path, tmp_name: str) -> bool:
    """Make ``tmp_name`` (an empty file) a hard link to ``source``; False, with ``tmp_name``
    empty again, where the file system refuses (another one, or no links)."""
    try:
        os.unlink(tmp_name)
        os.link(source, tmp_name)
        return True
    except OSError:
        open(tmp_name, "wb").close()
        return False


def _copy(source, sink, length: int) -> None:
    """Copy the next ``length`` bytes of ``source`` to ``sink``, a chunk at a time through one
    buffer (a fresh 64 MiB bytes object per chunk cost page faults on every chunk). A chunk of
    zeros is skipped over rather than written, so sparse data stays sparse (``cp --sparse``)."""
    buffer = memoryview(bytearray(min(length, _CHUNK)))
    while length > 0:
        got = source.readinto(buffer[:min(length, len(buffer))])
        if not got:
            raise OSError(f"{source.name} ended {length} bytes early")
        chunk = buffer[:got]
        if not np.frombuffer(chunk, dtype=np.uint8).any():
            sink.seek(got, os.SEEK_CUR)
        else:
            sink.write(chunk)
        length -= got
    sink.truncate()     # the file ends where the data does, holes included


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


def in_memory_bytes(model: onnx.ModelProto) -> int | None:
    """The model's serialized size, or None past what protobuf can count. One call: on a
    model of tens of MB, ``ByteSize`` serializes it (about 0.1 s for ResNet-18), which a
    sweep's hundreds of loads add up."""
    try:
        return model.ByteSize()
    except ValueError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
