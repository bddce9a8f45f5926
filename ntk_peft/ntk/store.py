"""`KernelStore`: a run directory of kernel blocks that survives interruption and knows what it holds.

Layout::

    <folder>/meta.json                  what the store is of (run identity, versions) and,
                                        under "kernels", the identity of every kernel name in it
    <folder>/blocks/<name>-<i>-<j>.safetensors   one block pair, every subset

Each file is written through `ntk_peft.io` (a unique temporary file renamed
into place), so a block file is complete or absent even when several
processes write the same block at once. Two levels of identity are checked:

* the store's: opening a folder whose ``meta.json`` describes another run
  (model, task, seed, prompt, block size ...) is an error;
* each kernel's: `KernelStore.claim` records what a kernel name was computed
  from (subset definitions, targets, seed, implementation, kernel type,
  dtype, inputs) the first time, and refuses a later call that differs.

A store is never silently reused for different inputs. `MemoryStore` has the
same interface without files (for calls with no store).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import torch

from ntk_peft.errors import UserError
from ntk_peft.io import save_tensors, write_json

# Keys of meta.json that must match for a store to be reused.
IDENTITY_KEYS = ("model", "model_hash", "task", "seed", "k", "subsets", "implementation", "prompt", "inputs_hash",
                 "train_dev_inputs_hash", "block_size")


def tensor_hash(tensors) -> str:
    """sha256 over tensors' dtypes, shapes and bytes (order matters)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


_model_hashes: dict[int, tuple[tuple, str]] = {}


def model_hash(model: torch.nn.Module) -> str:
    """Content hash of a model's parameters and buffers.

    Remembered per model object while no tensor of it is replaced or changed in
    place (tracked by storage addresses and version counters), so repeated calls
    on an unchanged model cost nothing.
    """
    state = sorted(model.state_dict(keep_vars=True).items())
    stamp = tuple((name, t.data_ptr(), t._version, tuple(t.shape), t.dtype) for name, t in state)
    known = _model_hashes.get(id(model))
    if known is not None and known[0] == stamp:
        return known[1]
    value = tensor_hash([t for _, t in state])
    _model_hashes[id(model)] = (stamp, value)
    return value


PROMPT_KEYS = ("input_ids", "attention_mask", "readout_positions", "label_token_ids")


def batches_hash(batches) -> str:
    """Content hash of batches: of prompt batches their token ids, masks, read-out positions and label words
    (as always); of any other batch every tensor, by key (its key names included)."""
    if all(all(k in batch for k in PROMPT_KEYS) for batch in batches):
        return tensor_hash([batch[k] for batch in batches for k in PROMPT_KEYS])
    keys = [sorted(k for k, v in batch.items() if isinstance(v, torch.Tensor)) for batch in batches]
    digest = hashlib.sha256(repr(keys).encode())
    digest.update(tensor_hash([batch[k] for batch, names in zip(batches, keys) for k in names]).encode())
    return digest.hexdigest()


def warn(message: str) -> None:
    """One line on stderr, prefixed like the CLI's errors."""
    print(f"ntk-peft: warning: {message}", file=sys.stderr, flush=True)


class MemoryStore:
    """Blocks in a dict: the store of a call that keeps nothing on disk.

    ``shared`` is False: under torch.distributed the scheduler gathers the
    ranks' blocks into every rank's own `MemoryStore`.
    """

    shared = False

    def __init__(self):
        self.blocks: dict[tuple[str, int, int], dict[str, torch.Tensor]] = {}
        self.kernels: dict[str, dict] = {}

    def claim(self, name: str, identity: dict) -> None:
        _check_identity(self.kernels, name, identity, "this call")
        self.kernels[name] = identity

    def has(self, name: str, i: int, j: int) -> bool:
        return (name, i, j) in self.blocks

    def readable(self, name: str, i: int, j: int, keys=None) -> bool:
        return self.has(name, i, j)

    def save(self, name: str, i: int, j: int, kernels: dict[str, torch.Tensor], seconds: float | None = None,
             rank: int | None = None) -> None:
        self.blocks[(name, i, j)] = kernels

    def load(self, name: str, i: int, j: int) -> dict[str, torch.Tensor]:
        return self.blocks[(name, i, j)]


def _check_identity(known: dict, name: str, identity: dict, where: str) -> None:
    old = known.get(name)
    if old is None:
        return
    diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
    if diff:
        raise UserError(f"{where} holds '{name}' kernels of other inputs ({', '.join(diff)} differ); "
                        f"choose another output folder or kernel name (nothing was deleted)")


class KernelStore:
    """Block files plus ``meta.json`` in one folder (on a filesystem every rank sees, under torch.distributed)."""

    shared = True

    def __init__(self, folder: str | os.PathLike, meta: dict):
        self.folder = Path(folder)
        self.meta = dict(meta)
        existing = self.folder / "meta.json"
        if existing.is_file():
            old = self._read_meta()
            diff = [k for k in IDENTITY_KEYS if k in self.meta and old.get(k) != self.meta.get(k)]
            if diff:
                raise UserError(
                    f"kernel store {self.folder} holds kernels of other inputs ({', '.join(diff)} differ); "
                    f"choose another output folder (nothing was deleted)"
                )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._locked():
                if not existing.is_file():  # another process may have written it meanwhile
                    write_json(existing, {**self.meta, "kernels": {}}, sort_keys=True)
        (self.folder / "blocks").mkdir(exist_ok=True)

    def _read_meta(self) -> dict:
        try:
            return json.loads((self.folder / "meta.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
            raise UserError(f"kernel store {self.folder} has an unreadable meta.json ({err})") from None

    @contextlib.contextmanager
    def _locked(self):
        """An exclusive lock on the store's meta.json updates (across processes on this filesystem)."""
        import fcntl

        with open(self.folder / ".meta.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def claim(self, name: str, identity: dict) -> None:
        """Record what kernel ``name`` is computed from, or refuse (`UserError`) if it was recorded otherwise.

        ``identity`` is a JSON-able dict (subset definitions, targets, seed,
        implementation, kernel type, dtype, input hashes). Safe when several
        processes claim names of one store at once.
        """
        identity = json.loads(json.dumps(identity))  # as it will read back
        with self._locked():
            meta = self._read_meta()
            kernels = meta.setdefault("kernels", {})
            _check_identity(kernels, name, identity, f"kernel store {self.folder}")
            if kernels.get(name) != identity:
                kernels[name] = identity
                write_json(self.folder / "meta.json", meta, sort_keys=True)

    def block_path(self, name: str, i: int, j: int) -> Path:
        return self.folder / "blocks" / f"{name}-{i}-{j}.safetensors"

    def has(self, name: str, i: int, j: int) -> bool:
        return self.block_path(name, i, j).is_file()

    def readable(self, name: str, i: int, j: int, keys=None) -> bool:
        """True if the block is there and complete (with every one of ``keys``); an unreadable block
        is reported in one line on stderr and removed, so that it is computed again."""
        from safetensors import safe_open

        path = self.block_path(name, i, j)
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as handle:
                missing = sorted(set(keys or ()) - set(handle.keys()))
            if missing:
                raise ValueError(f"no tensor {', '.join(missing)}")
        except Exception as err:  # safetensors raises its own error type for truncated or foreign files
            warn(f"block {path} is unreadable ({str(err).splitlines()[0]}); computing it again")
            path.unlink(missing_ok=True)
            return False
        return True

    def save(self, name: str, i: int, j: int, kernels: dict[str, torch.Tensor], seconds: float | None = None,
             rank: int | None = None) -> None:
        """Write one block pair; ``seconds`` (the compute time it took) and the ``rank`` that computed it
        are kept in its metadata."""
        metadata = {} if seconds is None else {"seconds": f"{seconds:.6f}"}
        if rank is not None:
            metadata["rank"] = str(rank)
        save_tensors(self.block_path(name, i, j), kernels, metadata or None)

    def block_metadata(self, name: str, i: int, j: int) -> dict[str, str]:
        """The metadata a block was written with (``seconds``, ``rank``)."""
        from safetensors import safe_open

        with safe_open(str(self.block_path(name, i, j)), framework="pt") as handle:
            return dict(handle.metadata() or {})

    def compute_seconds(self, name: str | None = None) -> float:
        """Total compute time recorded in the block files (of one kernel ``name``, or all), over every run
        that wrote them; blocks written without a time count as 0."""
        from safetensors import safe_open

        total = 0.0
        pattern = re.compile(rf"{re.escape(name) if name else '.+'}-\d+-\d+")  # train-0-1, not train-signgd-0-1
        for path in sorted((self.folder / "blocks").glob(f"{name or '*'}-*.safetensors")):
            if not pattern.fullmatch(path.stem):
                continue
            with safe_open(str(path), framework="pt") as handle:
                total += float((handle.metadata() or {}).get("seconds", 0.0))
        return total

    def load(self, name: str, i: int, j: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = self.block_path(name, i, j)
        try:
            return load_file(str(path))
        except Exception as err:
            raise UserError(f"block {path} cannot be read ({str(err).splitlines()[0]}); rerun to compute it "
                            f"again") from None
