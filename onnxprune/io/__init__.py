"""ONNX I/O: load models safely, save them atomically."""

from .model_io import check_writable, load_model, save_model, write_atomically
from .weights import release_weights

__all__ = ["check_writable", "load_model", "release_weights", "save_model", "write_atomically"]
