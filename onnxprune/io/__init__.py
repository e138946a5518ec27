"""ONNX I/O: load models safely, save them atomically."""

from .model_io import (check_writable, load_model, load_with_size, remove_saved, save_model,
                       write_atomically)
from .weights import release_weights

__all__ = ["check_writable", "load_model", "load_with_size", "release_weights", "remove_saved",
           "save_model", "write_atomically"]
