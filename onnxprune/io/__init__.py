"""ONNX I/O: load models safely, save them atomically."""

from .model_io import load_model, save_model, write_atomically

__all__ = ["load_model", "save_model", "write_atomically"]
