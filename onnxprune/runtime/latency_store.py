"""Per-layer timings kept on disk (``--latency-table PATH``), so that a model pruned again (a
sweep, another target, a CI job on the same machine) reuses what was timed.

A file holds one section per place the timings were taken on: machine (CPU model), ONNX
Runtime version, execution provider and thread count. Within a section a timing is keyed by
the timed layer's signature (op, attributes, input, weight and bias shapes, element type:
batch and input size are in the shapes). A run reads and extends its own section only;
sections measured elsewhere are kept as they are when the file is written again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..errors import UserError
from .hardware import cpu_model

FORMAT = 1


def place(provider: str = "CPUExecutionProvider", threads: int = 1) -> str:
    """The section name of timings taken here with this provider and thread count."""
    import onnxruntime

    return f"{cpu_model()} | onnxruntime {onnxruntime.__version__} | {provider} | {threads} threads"


def signature_key(signature: tuple) -> str:
    return hashlib.sha1(repr(signature).encode()).hexdigest()


class LatencyStore:
    """One file's timings: ``get``/``put`` for this run's section, ``save`` writes the file
    (atomically, every section kept)."""

    def __init__(self, path: str | os.PathLike, section: str):
        self.path, self.section = Path(path), section
        self.sections: dict[str, dict[str, float]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if data.get("format") != FORMAT or not isinstance(data.get("sections"), dict):
                    raise ValueError("not a latency table of this version")
                self.sections = {k: {s: float(v) for s, v in d.items()}
                                 for k, d in data["sections"].items()}
            except (ValueError, OSError, AttributeError, TypeError) as exc:
                raise UserError(f"--latency-table {self.path}: cannot read it ({exc})") from exc
        self.timings = self.sections.setdefault(section, {})
        self.added = 0

    def get(self, signature: tuple) -> float | None:
        return self.timings.get(signature_key(signature))

    def put(self, signature: tuple, seconds: float) -> None:
        self.timings[signature_key(signature)] = float(seconds)
        self.added += 1

    def save(self) -> None:
        if not self.added:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": FORMAT, "sections": self.sections}, indent=1,
                          sort_keys=True)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False,
                                         suffix=".tmp") as tmp:
            tmp.write(text)
        os.replace(tmp.name, self.path)
        self.added = 0
