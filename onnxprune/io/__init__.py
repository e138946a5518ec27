"""ONNX I/O: load models safely, save them atomically."""

from .model_io import check_writable, load_model, save_model, write_atomically

__all__ = ["check_writable", "load_model", "save_model", "write_atomically"]
