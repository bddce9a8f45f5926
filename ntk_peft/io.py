"""Atomic file writes: a file is either complete or absent, whoever else writes it.

Every writer goes through `atomic_write`: the content is written to a
uniquely named temporary file (``mkstemp``) in the target's own folder, then
renamed over the target. Two processes writing the same path at once each
rename a complete file of their own, so the last rename wins and no reader
ever sees a mixture; an interrupted writer leaves at most a hidden
``.<name>.*.tmp`` file, which is removed when the writer is unwound.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ntk_peft.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; on success it is renamed to ``path``.

    The caller writes the temporary file by any means (``save_file``,
    ``torch.save``, ``open``); on an exception the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path and rename it to ``path``; returns ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, value, *, sort_keys: bool = False) -> Path:
    """Write ``value`` as indented JSON with a final newline, atomically."""
    return write_text(path, json.dumps(value, indent=2, sort_keys=sort_keys) + "\n")


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                 ) -> Path:
    """Write a safetensors file atomically (tensors made contiguous first)."""
    from safetensors.torch import save_file

    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def torch_save(path: str | os.PathLike, value) -> Path:
    """``torch.save`` atomically."""
    return atomic_write(path, lambda tmp: torch.save(value, tmp))


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` as a folder this process can write results into (created later, by the writer), or a
    one-line `UserError`: it is a file, or it (or the folder it would be created in) is not writable.
    Call it before any long work, so a bad ``--out`` fails at once and nothing is written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise UserError(f"{what} {path} cannot be created: {base} is a file")
    try:  # a real write (permission bits alone say nothing for root, or on a read-only mount)
        with tempfile.NamedTemporaryFile(dir=base, prefix=".ntk_peft_write_check."):
            pass
    except OSError as err:
        raise UserError(f"{what} {path} is not writable: {err.strerror} in {base}") from None
    return path


def check_output_file(path: str | os.PathLike, what: str = "--json") -> Path:
    """``path`` as a file this process can write (its folder exists or can be created), else one line."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file")
    check_output_dir(path.parent, what)
    if path.exists():
        try:
            with open(path, "a"):
                pass
        except OSError as err:
            raise UserError(f"{what} {path} is not writable: {err.strerror}") from None
    return path
