"""Weights that stay in files: how models with external data, and so every model over 2 GB
(protobuf cannot hold one in a single message), are pruned without holding their weights in
memory.

A model loaded from a path with external data gets a :class:`WeightStore`: a private
temporary folder that holds each of the model's data files (after ``io.external`` checked
it) as a hard link, or as a copy where the two folders are on different file systems, and into
which every big tensor the pruner computes (a sliced, masked or
compensated weight) is written: as a file of its own, or appended to one *pack* file per
rewrite (``Pack``). The model's tensors keep pointing at files, relative to that folder:

* reads are memory maps, so a weight is paged in while it is used and costs nothing after;
* ONNX Runtime sessions are told the folder and map the same files themselves (it refuses a
  data file that is a symbolic link out of the model's folder, hence hard links or copies; a
  hard link is also a snapshot, should the input be replaced);
* the checker reads no weight data, but wants every data file to be a regular file with a
  single link: it checks the model beside stand-ins of the same sizes (``checkable``).
* saving streams the bytes into the output's own data file (``io.model_io``), or hands it a
  pack that holds most of them, by a hard link, rather than write those bytes a second time.

The folder is named in the model's metadata (``STORE_KEY``) so that a model handed from one
stage to the next finds its weights. Only folders this process made are honoured, the key
never reaches a saved file, and a folder goes when the process exits or when
``release_weights`` is called on a model that uses it (a long-running pipeline should, once it
has saved what it pruned).
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo

from .external import declared_bytes, external_tensors

STORE_KEY = "onnxprune.weights"
MIN_BYTES = 1 << 12   # smaller new tensors (shapes, scales) stay inside the model
_STORES: dict[str, WeightStore] = {}
ALIGN = 4096          # data offsets that ONNX Runtime can memory-map
_APPENDING = threading.Lock()   # two writers must not take one pack's same offset
# element kinds a file maps to directly; ml_dtypes ones (4-bit, float8, bfloat16: kind "V")
# are read whole
_MAPPABLE = set("biuf")


class WeightStore:
    """The temporary folder that holds a model's weight files."""

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="onnxprune-weights-")
        self.folder = Path(self._tmp.name)
        self._numbers = itertools.count()
        _STORES[str(self.folder)] = self

    # -- which model uses which store ---------------------------------------------------------
    @staticmethod
    def of(model: onnx.ModelProto) -> WeightStore | None:
        """The live store the model names, or None."""
        for prop in model.metadata_props:
            if prop.key == STORE_KEY:
                return _STORES.get(prop.value)
        return None

    def attach(self, model: onnx.ModelProto) -> None:
        detach(model)
        model.metadata_props.add(key=STORE_KEY, value=str(self.folder))

    def adopt(self, model: onnx.ModelProto, source: Path) -> None:
        """Point the model's external tensors, whose files are in folder ``source`` (already
        checked safe), at hard links to (or copies of) those files here, and attach it. Small
        ones (shape constants, scales: under ``MIN_BYTES``) are read into the model: shape
        inference, ours and ONNX Runtime's, reads no external data."""
        links: dict[Path, str] = {}
        for tensor in external_tensors(model):
            real = (source / ExternalDataInfo(tensor).location).resolve()
            if real not in links:
                links[real] = f"input{len(links)}{real.suffix}"
                _link_or_copy(real, self.folder / links[real])
            _set_location(tensor, links[real])
            if declared_bytes(tensor) < MIN_BYTES:
                tensor.CopyFrom(numpy_helper.from_array(np.array(self.read(tensor)),
                                                        tensor.name))
        self.attach(model)

    # -- reading and writing ------------------------------------------------------------------
    def read(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The tensor's value, memory-mapped (read-only) where its type maps directly."""
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        shape = tuple(int(d) for d in tensor.dims)
        info = ExternalDataInfo(tensor)
        if dtype.kind not in _MAPPABLE or not int(np.prod(shape, dtype=np.int64)):
            inline = onnx.TensorProto()
            inline.CopyFrom(tensor)
            del inline.external_data[:]
            inline.data_location = onnx.TensorProto.DEFAULT
            with open(self.folder / info.location, "rb") as f:
                f.seek(int(info.offset or 0))
                inline.raw_data = f.read(declared_bytes(tensor))
            return numpy_helper.to_array(inline)
        return np.memmap(self.folder / info.location, dtype=dtype.newbyteorder("<"), mode="r",
                         offset=int(info.offset or 0), shape=shape)

    def write(self, name: str, value: np.ndarray, pack: Pack | None = None
              ) -> onnx.TensorProto:
        """A tensor named ``name`` whose data is ``value``, written to a new file here, or
        appended to ``pack``."""
        value = np.ascontiguousarray(value)
        data = value.astype(value.dtype.newbyteorder("<"), copy=False)
        if pack is None:
            location, offset = f"w{next(self._numbers)}.bin", 0
            with open(self.folder / location, "wb") as f:
                data.tofile(f)
        else:
            location, offset = pack.append(data)
        tensor = onnx.TensorProto(name=name, dims=value.shape,
                                  data_type=onnx.helper.np_dtype_to_tensor_dtype(value.dtype),
                                  data_location=onnx.TensorProto.EXTERNAL)
        for key, entry in (("location", location), ("offset", str(offset)),
                           ("length", str(value.nbytes))):
            tensor.external_data.add(key=key, value=entry)
        return tensor

    def new_pack(self) -> Pack:
        return Pack(self)

    def close(self) -> None:
        """Delete the folder; models that name it no longer find a store."""
        _STORES.pop(str(self.folder), None)
        self._tmp.cleanup()

    def path(self, tensor: onnx.TensorProto) -> Path:
        return self.folder / ExternalDataInfo(tensor).location

    def discard(self, model: onnx.ModelProto, keep: list[onnx.ModelProto]) -> None:
        """Delete the files this store wrote for ``model`` that no model in ``keep`` reads (the
        masked original's small weights, once verification is over)."""
        kept = {ExternalDataInfo(t).location for m in keep for t in external_tensors(m)}
        for tensor in external_tensors(model):
            location = ExternalDataInfo(tensor).location
            if location not in kept and location.startswith("w"):  # written here, not input*
                (self.folder / location).unlink(missing_ok=True)

    @contextlib.contextmanager
    def checkable(self, model: onnx.ModelProto):
        """A path to the model saved for ``onnx.checker`` beside sparse stand-ins of its data
        files, each as long as the data it stands for (nothing written, nothing read: the
        checker looks at locations and sizes only); removed afterwards."""
        folder = Path(tempfile.mkdtemp(prefix="check", dir=self.folder))
        try:
            ends: dict[str, int] = {}
            for tensor in external_tensors(model):
                info = ExternalDataInfo(tensor)
                end = int(info.offset or 0) + int(info.length or self.path(tensor).stat().st_size)
                ends[info.location] = max(ends.get(info.location, 0), end)
            for location, end in ends.items():
                with open(folder / location, "wb") as f:
                    f.truncate(end)
            onnx.save_model(model, str(folder / "model.onnx"))
            yield folder / "model.onnx"
        finally:
            shutil.rmtree(folder, ignore_errors=True)


class Pack:
    """One file of a store that a rewrite appends its new weights to, each at an offset ONNX
    Runtime can map, so that saving the pruned model can make this file its data file (a
    hard link) instead of copying 3 GiB of a 1B decoder's weights a second time. A file that
    a save has linked is never written again: the next weight starts a new one."""

    def __init__(self, store: WeightStore):
        self.store = store
        self.location: str | None = None

    def append(self, data: np.ndarray) -> tuple[str, int]:
        with _APPENDING:
            return self._append(data)

    def _append(self, data: np.ndarray) -> tuple[str, int]:
        path = self.store.folder / self.location if self.location else None
        if path is None or not path.exists() or path.stat().st_nlink > 1:
            self.location = f"wp{next(self.store._numbers)}.bin"
            path = self.store.folder / self.location
            path.touch()
        with open(path, "r+b") as f:
            end = f.seek(0, os.SEEK_END)
            offset = end + (-end % ALIGN)
            f.seek(offset)
            f.write(data.reshape(-1).view(np.uint8).data)
        return self.location, offset


def release_weights(model: onnx.ModelProto) -> None:
    """Delete the store ``model`` reads its weights from, now rather than at exit. Every model
    sharing it (the loaded model, the pruned one, their copies) can no longer be read or run;
    a model without a store is left as it is."""
    store = WeightStore.of(model)
    if store is not None:
        store.close()


def discard_written(model: onnx.ModelProto, keep: list[onnx.ModelProto]) -> None:
    """Delete the weight files written for ``model`` that no model in ``keep`` reads; a
    no-op for a model without a store."""
    store = WeightStore.of(model)
    if store is not None:
        store.discard(model, keep)


def inline_weights(model: onnx.ModelProto) -> None:
    """Read every external tensor of a stored model into the message itself and drop the store
    key: for tools that take the whole model in memory anyway (onnx2torch, for gradients)."""
    store = WeightStore.of(model)
    if store is None:
        return
    for tensor in external_tensors(model):
        tensor.CopyFrom(numpy_helper.from_array(np.array(store.read(tensor)), tensor.name))
    detach(model)


def detach(model: onnx.ModelProto) -> None:
    """Drop the store key (from a saved copy, or from an input that names a folder)."""
    keep = [p for p in model.metadata_props if p.key != STORE_KEY]
    if len(keep) != len(model.metadata_props):
        del model.metadata_props[:]
        model.metadata_props.extend(keep)


def tensor_value(tensor: onnx.TensorProto, store: WeightStore | None) -> np.ndarray:
    """A tensor's value: from the store for external data, else from the message."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        if store is None:
            raise ValueError(f"tensor {tensor.name!r} keeps its data in an external file, "
                             f"and the model was not loaded from a path")
        return store.read(tensor)
    return numpy_helper.to_array(tensor)


def new_tensor(name: str, value: np.ndarray, store: WeightStore | None,
               pack: Pack | None = None) -> onnx.TensorProto:
    """A tensor holding ``value``: in a store file (or ``pack``, one of the store's) when the
    model has a store and the value is big, else inside the message."""
    if store is not None and value.nbytes >= MIN_BYTES:
        return store.write(name, value, pack)
    return numpy_helper.from_array(np.ascontiguousarray(value), name)


def is_mapped(value: np.ndarray) -> bool:
    """Is the array a view of a memory-mapped file (nothing to cache: reading it is free)?"""
    base = value
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = getattr(base, "base", None)
    return False


def configure_session(options, model, lean: bool = True) -> None:
    """Tell ONNX Runtime where a stored model's weight files are. ``lean``: no pre-packed
    copies of weights (ORT maps the files; packing would copy every Gemm and MatMul weight),
    for checks, which want the least memory rather than the fastest run."""
    store = WeightStore.of(model) if isinstance(model, onnx.ModelProto) else None
    if store is None:
        return
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(store.folder))
    if lean:
        options.add_session_config_entry("session.disable_prepacking", "1")


LINK_BYTES = 256 << 20   # data files from this size on are hard-linked rather than copied


def _link_or_copy(source: Path, target: Path) -> None:
    """A big file is hard-linked, which costs nothing; a smaller one (or across file systems,
    or where links are not allowed) is copied, streamed by the kernel, not through memory.
    While a link lives, onnx refuses to load the user's own file (a data file with two links
    looks like a hard-link attack to it), so only files that would be costly to copy are
    linked."""
    try:
        if source.stat().st_size >= LINK_BYTES:
            os.link(source, target)
            return
    except OSError:
        pass
    shutil.copyfile(source, target)


def _set_location(tensor: onnx.TensorProto, location: str) -> None:
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location

