"""``python -m onnxprune.cli``: the ``onnxprune`` command."""

import sys

from .main import main

sys.exit(main())
