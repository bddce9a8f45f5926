"""`KernelStore`: a run directory of kernel blocks that survives interruption.

Layout::

    <folder>/meta.json                  what the kernels are of (identity + versions)
    <folder>/blocks/<name>-<i>-<j>.safetensors   one block pair, every subset

Each block is written to a temporary file and renamed into place, so a block
file is either complete or absent. Opening a folder whose ``meta.json``
describes other kernels (another model, task, subset list, prompt or inputs)
is an error; a store is never silently reused for different inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ntk_peft.errors import UserError

# Keys of meta.json that must match for a store to be reused.
IDENTITY_KEYS = ("model", "model_hash", "task", "seed", "subsets", "implementation", "prompt", "inputs_hash",
                 "block_size")


def tensor_hash(tensors) -> str:
    """sha256 over tensors' dtypes, shapes and bytes (order matters)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def model_hash(model: torch.nn.Module) -> str:
    """Content hash of a model's parameters and buffers."""
    return tensor_hash([p for _, p in sorted(model.state_dict().items())])


def batches_hash(batches) -> str:
    """Content hash of prompt batches (token ids, masks, read-out positions, label words)."""
    keys = ("input_ids", "attention_mask", "readout_positions", "label_token_ids")
    return tensor_hash([batch[k] for batch in batches for k in keys])


class KernelStore:
    """Block files plus ``meta.json`` in one folder."""

    def __init__(self, folder: str | os.PathLike, meta: dict):
        self.folder = Path(folder)
        self.meta = dict(meta)
        existing = self.folder / "meta.json"
        if existing.is_file():
            try:
                old = json.loads(existing.read_text())
            except json.JSONDecodeError:
                raise UserError(f"kernel store {self.folder} has an unreadable meta.json") from None
            diff = [k for k in IDENTITY_KEYS if k in self.meta and old.get(k) != self.meta.get(k)]
            if diff:
                raise UserError(
                    f"kernel store {self.folder} holds kernels of other inputs ({', '.join(diff)} differ); "
                    f"choose another output folder (nothing was deleted)"
                )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_text(existing, json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
        (self.folder / "blocks").mkdir(exist_ok=True)

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def block_path(self, name: str, i: int, j: int) -> Path:
        return self.folder / "blocks" / f"{name}-{i}-{j}.safetensors"

    def has(self, name: str, i: int, j: int) -> bool:
        return self.block_path(name, i, j).is_file()

    def save(self, name: str, i: int, j: int, kernels: dict[str, torch.Tensor], seconds: float | None = None) -> None:
        """Write one block pair; ``seconds`` (the compute time it took) is kept in its metadata."""
        from safetensors.torch import save_file

        path = self.block_path(name, i, j)
        tmp = path.with_name(path.name + ".tmp")
        metadata = None if seconds is None else {"seconds": f"{seconds:.6f}"}
        save_file({k: v.contiguous() for k, v in kernels.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)

    def compute_seconds(self, name: str | None = None) -> float:
        """Total compute time recorded in the block files (of one kernel ``name``, or all), over every run
        that wrote them; blocks written without a time count as 0."""
        from safetensors import safe_open

        total = 0.0
        for path in sorted((self.folder / "blocks").glob(f"{name or '*'}-*.safetensors")):
            with safe_open(str(path), framework="pt") as handle:
                total += float((handle.metadata() or {}).get("seconds", 0.0))
        return total

    def load(self, name: str, i: int, j: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.block_path(name, i, j)))
