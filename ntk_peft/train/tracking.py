"""ΔW tracking during training: a callback feeding `ntk_peft.analysis.delta_w_metrics`.

Every N steps, for each adapted layer: ΔW's rank and spectrum metrics (from the
adapter's factors where ΔW is low-rank by construction: LoRA, rows, columns,
LoRMA₊, LoRTA), and for LoRMA the same for the inflated matrix I(BA). Rows are tidy
``(step, layer, metric, value)``, appended to a CSV as they come, so an
interrupted run keeps what it measured; `summary` gives the last value of
every metric per layer and the singular values at the end.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ntk_peft.adapters.lorma import LoRMAPiAdapter, LoRMAPlusAdapter, inflated_matrix
from ntk_peft.analysis import (
    delta_w_metrics,
    factored_singular_values,
    singular_values,
    spectrum_metrics,
    working_eps,
)

FIELDS = ("step", "layer", "metric", "value")


class DeltaWTracker:
    """Measures ΔW of every adapted layer of ``handle`` every ``every`` steps.

    Args:
        handle: the `AdapterHandle` being trained.
        every: steps between measurements (0 or None: only at the start and end).
        csv_path: the tidy CSV to append to (written with a header when new).
        layers: optional substring filter on layer names (None: all).
    """

    def __init__(self, handle, every: int | None, csv_path: str | Path | None = None, layers: str | None = None):
        self.handle, self.every = handle, every or 0
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self.layers = layers
        self.rows: list[dict] = []
        self.last_sigma: dict[str, list[float]] = {}

    def due(self, step: int, final: bool = False) -> bool:
        return final or step == 0 or (self.every > 0 and step % self.every == 0)

    @torch.no_grad()
    def measure(self, step: int) -> list[dict]:
        """Measure now; returns (and records) the new rows."""
        rows = []
        deltas = self.handle.delta_weights()
        for name, delta in deltas.items():
            if self.layers is not None and self.layers not in name:
                continue
            sigma = self._singular_values(name, delta)  # one spectrum per layer: the metrics and the saved one
            for metric, value in spectrum_metrics(sigma, tuple(delta.shape), working_eps(delta)).items():
                rows.append({"step": step, "layer": name, "metric": metric, "value": float(value)})
            self.last_sigma[name] = sigma.tolist()
            layer = self.handle.layers.get(name)
            if isinstance(layer, (LoRMAPlusAdapter, LoRMAPiAdapter)):
                for metric, value in delta_w_metrics(inflated_matrix(layer)).items():
                    rows.append({"step": step, "layer": name, "metric": f"inflated_{metric}", "value": float(value)})
        self.rows.extend(rows)
        if self.csv_path is not None:
            new = not self.csv_path.is_file()
            with self.csv_path.open("a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=FIELDS)
                if new:
                    writer.writeheader()
                writer.writerows(rows)
        return rows

    def _singular_values(self, name: str, delta: torch.Tensor) -> np.ndarray:
        """ΔW's spectrum: from the adapter's low-rank factors where it has them, zeros for ΔW = 0 (every
        adapter at initialisation, full fine-tuning at step 0), else a dense SVD."""
        layer = self.handle.layers.get(name)
        factors = layer.delta_factors() if layer is not None and not layer.merged else None
        if factors is not None:
            return factored_singular_values(*factors)
        if not torch.any(delta):
            return np.zeros(min(delta.shape))
        return singular_values(delta)

    def summary(self) -> dict:
        """``{"last_step", "layers": {layer: {metric: value}}, "singular_values": {layer: [...]}}``."""
        if not self.rows:
            return {"last_step": None, "layers": {}, "singular_values": {}}
        last = max(r["step"] for r in self.rows)
        layers: dict[str, dict[str, float]] = {}
        for row in self.rows:
            if row["step"] == last:
                layers.setdefault(row["layer"], {})[row["metric"]] = row["value"]
        return {"last_step": last, "layers": layers, "singular_values": self.last_sigma}
