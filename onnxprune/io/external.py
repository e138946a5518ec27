"""External data, read safely: every location must be a file inside the model's folder.

A model names its external weight files itself, and a hostile one can name ``../../etc/passwd``
or an absolute path (ONNX has had CVEs for exactly this). So before anything is read, every
location is checked here, whatever the installed onnx checks: relative, inside the model's
folder after symlinks are resolved, a regular file, and long enough for the offset and length
it claims. Only then does onnx read the data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import ExternalDataInfo

from ..errors import UserError


def external_tensors(model: onnx.ModelProto):
    """Every tensor of the model (initializers, sparse ones, Constant and other tensor
    attributes, in every subgraph) whose data lives in an external file."""
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` read its ``length`` bytes from the file ``location`` at ``offset``,
    its data in memory dropped."""
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(length))):
        tensor.external_data.add(key=key, value=value)


def check_external_locations(model: onnx.ModelProto, folder: Path) -> None:
    """Raise UserError unless every external location is a safe, long-enough file in
    ``folder``; nothing is read before this passes."""
    root = folder.resolve()
    for tensor in external_tensors(model):
        info = ExternalDataInfo(tensor)
        where = f"tensor {tensor.name!r}: external data location {info.location!r}"
        if not info.location:
            raise UserError(f"{where} is empty")
        if os.path.isabs(info.location) or Path(info.location).drive:
            raise UserError(f"{where} is an absolute path; only files beside the model are read")
        path = (root / info.location).resolve()
        if path != root and root not in path.parents:
            raise UserError(f"{where} points outside the model's folder; refused")
        if not path.is_file():
            raise UserError(f"{where}: no such file beside the model")
        offset = int(info.offset or 0)
        length = info.length
        size = path.stat().st_size
        if offset < 0 or (length is not None and int(length) < 0):
            raise UserError(f"{where}: negative offset or length")
        if offset + int(length or 0) > size or (length is None and offset > size):
            raise UserError(f"{where}: the file is {size} bytes, too short for offset "
                            f"{offset} and length {length}")


def external_bytes(model: onnx.ModelProto) -> int:
    """Bytes of weight data the model keeps in external files (from the lengths it declares,
    else from dims and type), without reading them."""
    return sum(declared_bytes(tensor) for tensor in external_tensors(model))


def declared_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes an external tensor declares: its length, else what its dims and type take."""
    length = ExternalDataInfo(tensor).length
    if length is not None:
        return int(length)
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return itemsize * int(np.prod(tensor.dims, dtype=np.int64))


def _tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)
