"""Fine-tuned checkpoints for ``ntk-compare --adapter-checkpoint``: find, check and describe them.

A checkpoint is a training run folder (``ntk-peft train --out DIR``: ``config.json`` and
``adapter/``) or an adapter folder itself (``adapter.json`` + ``adapter.safetensors``,
e.g. ``DIR/best``). The kernels are then taken at the fine-tuned point: the adapter
folded into the model (`ntk_peft.adapters.fold_adapter`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ntk_peft.errors import UserError


@dataclass
class Checkpoint:
    """Where the adapter is, and what the run that made it was (None where unknown)."""

    adapter_folder: Path
    spec: str
    task: str | None
    model: str | None
    k: int | None
    seed: int | None

    def describe(self) -> dict:
        return {"path": str(self.adapter_folder), "spec": self.spec, "task": self.task, "model": self.model,
                "k": self.k, "seed": self.seed}


def resolve_checkpoint(path: str | Path, model_name: str) -> Checkpoint:
    """The adapter under ``path`` (a run folder's ``adapter/``, or ``path`` itself); checks the model."""
    path = Path(path).resolve()  # recorded in results.json: one spelling per checkpoint
    if (path / "adapter.json").is_file():
        folder, run = path, path.parent
    elif (path / "adapter" / "adapter.json").is_file():
        folder, run = path / "adapter", path
    else:
        raise UserError(f"no fine-tuned adapter in {path} (expected a training run folder with adapter/, "
                        f"or a folder with adapter.json)")
    try:
        spec = json.loads((folder / "adapter.json").read_text())["spec"]
        config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    except (json.JSONDecodeError, KeyError):
        raise UserError(f"the checkpoint in {path} has an unreadable adapter.json or config.json") from None
    trained_on = config.get("model")
    if trained_on is not None and trained_on != model_name:
        raise UserError(f"the checkpoint in {path} was trained on model {trained_on}, not {model_name} "
                        f"(give --model {trained_on})")
    return Checkpoint(folder, spec, config.get("task"), trained_on, config.get("k"), config.get("seed"))
