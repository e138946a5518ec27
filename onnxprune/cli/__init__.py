"""Command line: ``onnxprune inspect``, ``prune``, ``sensitivity``, ``demo``, ``bench``,
``compare``, ``sweep`` (one module per command family; rich output in ``console``; shared
parameters in ``params``)."""

from .main import cli, main

__all__ = ["cli", "main"]
