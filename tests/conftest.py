"""Test-run settings.

* Under pytest-xdist the workers already fill the cores, so each gives ONNX Runtime one thread
  (``ONNXPRUNE_THREADS``) rather than every core each.
* The analysis is strict (``ONNXPRUNE_STRICT_RULES``): a rule that raises is an error, not a
  barrier, so that a broken rule fails the suite instead of quietly pruning less.
"""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("ONNXPRUNE_THREADS", "1")
os.environ.setdefault("ONNXPRUNE_STRICT_RULES", "1")
