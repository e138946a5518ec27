"""Test-run settings.

* Under pytest-xdist the workers already fill the cores, so each gives ONNX Runtime one thread
  (``ONNXPRUNE_THREADS``) rather than every core each.
* The analysis is strict (``ONNXPRUNE_STRICT_RULES``): a rule that raises is an error, not a
  barrier, so that a broken rule fails the suite instead of quietly pruning less.
* ``ctrl_c``: a fixture under which SIGINT raises KeyboardInterrupt, as in a terminal.
"""

import os
import signal

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("ONNXPRUNE_THREADS", "1")
os.environ.setdefault("ONNXPRUNE_STRICT_RULES", "1")


@pytest.fixture
def ctrl_c():
    """SIGINT raising KeyboardInterrupt, as in a terminal (a pytest-xdist worker ignores it);
    the handler before is put back after."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
