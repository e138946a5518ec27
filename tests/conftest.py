"""Test-run settings: under pytest-xdist the workers already fill the cores, so each gives
ONNX Runtime one thread (``ONNXPRUNE_THREADS``) rather than every core each."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("ONNXPRUNE_THREADS", "1")
