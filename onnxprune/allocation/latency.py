"""Latency targets: predict a plan's latency from a per-layer table measured on ONNX Runtime.

The dense model is timed whole; each Conv/Gemm/MatMul layer is timed alone at the widths a plan
gives it (multiples of ``round_to``, so the table is measured at the hardware-friendly widths
the plan will actually use). A plan's latency is predicted as the dense latency scaled by the
layers' summed latency at the plan's widths over their summed dense latency, the rest of the
model being assumed to follow in proportion. The pruned model is then timed for real, and the
report gives both numbers.
"""

from __future__ import annotations

import onnx

from ..runtime import LayerLatencyTable, measure_latency
from ..runtime.latency_store import LatencyStore, place

MEASURE_BUDGET_S = 1.0      # seconds of timed runs per whole-model measurement


class LatencyPredictor:
    def __init__(self, model: onnx.ModelProto, input_shapes=None, threads: int = 1,
                 progress=None, table_path=None):
        self.threads, self.input_shapes = threads, input_shapes
        store = (LatencyStore(table_path, place("CPUExecutionProvider", threads))
                 if table_path is not None else None)
        self.table = LayerLatencyTable(model, input_shapes, threads, store=store)
        self.dense_layers = self.table.dense_total(progress)
        self.dense = self.measure(model)

    def fraction(self, weight_dims: dict[tuple[int, int], list[int]]) -> float:
        """Predicted latency of a plan over the dense latency; ``weight_dims`` maps (node,
        input index) to the sliced weight's dims."""
        if self.dense_layers <= 0:
            return 1.0
        total = 0.0
        for node, dense in self.table.layers().items():
            dims = weight_dims.get((node, 1))
            widths = self.table.widths(node, dims) if dims is not None else dense
            total += self.table.latency(node, *widths)
        return total / self.dense_layers

    def measure(self, model: onnx.ModelProto) -> float:
        """The fastest of many timed runs (the most repeatable figure on a shared machine)."""
        return measure_latency(model, threads=self.threads, input_shapes=self.input_shapes,
                               budget_s=MEASURE_BUDGET_S).min

    def save(self) -> tuple[int, int]:
        """Keep what was timed (with ``table_path``); returns the layer timings read from the
        file and those timed in this run."""
        if self.table.store is not None:
            self.table.store.save()
        reused = self.table.reused
        return reused, self.table.measurements - reused
