"""torch.distributed plumbing for the block scheduler: who am I, wait, share small objects.

The kernel work is split over the ranks of the default process group when one
is initialised (by `init_from_env` under ``torchrun``, or by the caller);
otherwise everything here is a no-op for a single process. Coordination
(barriers, broadcasting block lists and fitted weights) goes over a gloo group
even when the default backend is nccl, so it needs no GPU memory and no
device placement of Python objects.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from ntk_peft.errors import UserError

# Ranks wait for each other at the end of a phase; a long phase on one rank must not time out the others.
DEFAULT_TIMEOUT = datetime.timedelta(hours=48)
_control_group = None
T = TypeVar("T")


class AgreedError(UserError):
    """A `UserError` that every rank raises at the same point (see `agreed`): ranks may leave together."""


def active() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that fits, prints and writes results."""
    return rank() == 0


def control_group():
    """A gloo group over every rank (the default group itself when it is gloo)."""
    global _control_group
    if dist.get_backend() == "gloo":
        return None  # the default group
    if _control_group is None:
        _control_group = dist.new_group(backend="gloo", timeout=DEFAULT_TIMEOUT)
    return _control_group


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if active():
        dist.barrier(group=control_group())


def broadcast(value: Any, source: int = 0) -> Any:
    """``value`` as rank ``source`` has it, on every rank (picklable objects)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=source, group=control_group())
    return box[0]


def all_gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value, group=control_group())
    return out


def agreed(step: Callable[[], T]) -> T:
    """``step()`` on every rank, and when it raises a `UserError` on any rank, an `AgreedError` with the
    first failing rank's message on every rank.

    For the checks before the long work (task, model, output folder): every rank stops at the same point,
    so each can print the one-line error and leave, instead of one rank leaving while another is still on
    its way there (torchrun then ends it before it has said anything) or waits for it in a collective.
    In a single process ``step()`` runs as it is.
    """
    if not active():
        return step()
    try:
        value, message = step(), None
    except UserError as err:
        value, message = None, str(err)
    failed = [m for m in all_gather(message) if m is not None]
    if failed:
        raise AgreedError(failed[0])
    return value


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment; False when not launched so.

    Uses nccl with the GPU ``LOCAL_RANK`` when CUDA is available, gloo otherwise
    (``NTK_PEFT_BACKEND`` overrides). Each rank keeps ``OMP_NUM_THREADS``
    threads (torchrun sets 1 per process unless told otherwise).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return active()
    if not dist.is_available():
        raise UserError("WORLD_SIZE is set but this torch build has no torch.distributed")
    backend = os.environ.get("NTK_PEFT_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise UserError(f"NTK_PEFT_BACKEND must be gloo or nccl, got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=DEFAULT_TIMEOUT)
    return True


def shutdown(wait: bool = True) -> None:
    """Leave the process group, after a last barrier when ``wait`` (not after an error on this rank alone:
    the other ranks may never reach it; torchrun ends them when this one exits. After an `AgreedError`
    every rank is here, so wait: no rank leaves before the others have their error in hand)."""
    global _control_group
    if dist.is_available() and dist.is_initialized():
        if wait:
            barrier()
        dist.destroy_process_group()
        _control_group = None


def device() -> torch.device:
    """This rank's device: its ``LOCAL_RANK`` GPU under nccl, else the CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
