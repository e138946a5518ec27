"""Per-layer timings kept on disk (``--latency-table PATH``), so that a model pruned again (a
sweep, another target, a CI job on the same machine) reuses what was timed, and so that a
table timed on a deployment device (``device_timer``) can be predicted from elsewhere.

A file holds one section per place the timings were taken on: machine (CPU model), ONNX
Runtime version, execution provider, thread count and what a timing is (a window's fastest
run; sections of window medians, from before, are not read). Within a section a timing is
keyed by the timed layer's signature (op, attributes, input, weight and bias shapes, element
type: batch and input size are in the shapes). A run reads and extends its own section only;
sections measured elsewhere are kept as they are when the file is written again. A section a
device timed from a bundle also has its grids (``devices``): for each layer at its dense
shapes, the points timed (widths or sizes, and their keys), which a run reads between.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..errors import UserError
from .device_timer import FORMAT, section as place

__all__ = ["LatencyStore", "place", "signature_key"]


def signature_key(signature: tuple) -> str:
    return hashlib.sha1(repr(signature).encode()).hexdigest()


class LatencyStore:
    """One file's timings: ``get``/``put`` for this run's section, ``save`` writes the file
    (atomically, every section kept). With ``device`` (a part of a device section's name),
    that section is read instead, with its ``grids``, and nothing is added to it."""

    def __init__(self, path: str | os.PathLike, section: str, device: str | None = None):
        self.path, self.section = Path(path), section
        self.sections: dict[str, dict[str, float]] = {}
        self.devices: dict[str, dict] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if data.get("format") != FORMAT or not isinstance(data.get("sections"), dict):
                    raise ValueError("not a latency table of this version")
                self.sections = {k: {s: float(v) for s, v in d.items()}
                                 for k, d in data["sections"].items()}
                self.devices = dict(data.get("devices", {}))
            except (ValueError, OSError, AttributeError, TypeError) as exc:
                raise UserError(f"--latency-table {self.path}: cannot read it ({exc})") from exc
        self.grids = None
        if device is not None:
            self.section = self._device_section(device)
            self.grids = self.devices[self.section]["grids"]
        self.timings = self.sections.setdefault(self.section, {})
        self.added = 0
        self.read_only = False      # this run's timings are not added (it runs under load)

    def _device_section(self, device: str) -> str:
        found = [name for name in self.devices if device in name]
        if len(found) != 1:
            known = "; ".join(self.devices) or "none"
            raise UserError(f"--latency-device {device!r}: {len(found)} device sections of "
                            f"{self.path} match (device sections: {known})")
        return found[0]

    def forget(self) -> int:
        """Drop this run's section (its timings no longer hold here, see
        ``LayerLatencyTable``); it is written again, with what is timed now, on ``save``.
        Returns how many timings were dropped."""
        dropped = len(self.timings)
        self.timings.clear()
        self.added += 1
        return dropped

    def get(self, signature: tuple) -> float | None:
        return self.timings.get(signature_key(signature))

    def put(self, signature: tuple, seconds: float) -> None:
        if self.read_only:
            return
        self.timings[signature_key(signature)] = float(seconds)
        self.added += 1

    def save(self) -> None:
        if not self.added:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "sections": self.sections}
        if self.devices:
            data["devices"] = self.devices
        text = json.dumps(data, indent=1, sort_keys=True)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False,
                                         suffix=".tmp") as tmp:
            tmp.write(text)
        os.replace(tmp.name, self.path)
        self.added = 0
