"""Fitting a study's queue into a time limit: a batch allocation's wall time, or a machine lent for a
session whose run folders are gone when it ends.

``ntk-peft study rocoft --time-limit 2h40m`` starts a job only if it is expected to finish in the time
left, so no job is cut off at the end with its work lost. Each pending job's seconds come from the
projection of ``benchmarks/bench_rocoft_study.py --json`` (one row per task and k: a seed's kernels,
an evaluation pass, a fine-tuning run per adapter), scaled by how long the jobs run so far took against
their projections (fine-tuning and kernels apart; a job that resumed a stopped run's stored work is left
out, its seconds covering only part of it). The queue runs, in its order, the first job whose
expected time fits, and stops when none does.

A fitting job (``--kernel-jobs split``) counts its task's fits left and the evaluation after them: a
fit's stores serve only that evaluation, so the chain starts only if all of it fits. A chain longer
than the whole limit never starts; ``--kernel-jobs seed`` records each seed on its own.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ntk_peft.errors import UserError

DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds of ``2h40m``, ``90m``, ``1.5h``, ``5400s``, ``HH:MM[:SS]`` or a bare number of minutes
    (as batch schedulers take it)."""
    value = text.strip().lower()
    try:
        if ":" in value:
            parts = [float(p) for p in value.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            seconds = sum(p * s for p, s in zip(parts, (3600.0, 60.0, 1.0)))
        elif re.fullmatch(r"\d+(\.\d+)?", value):
            seconds = float(value) * 60.0
        else:
            pieces = re.findall(r"(\d+(?:\.\d+)?)([hms])", value)
            if not pieces or "".join(n + u for n, u in pieces) != value.replace(" ", ""):
                raise ValueError
            seconds = sum(float(n) * DURATION_UNITS[u] for n, u in pieces)
    except ValueError:
        raise UserError(f"a time limit is like 2h40m, 90m, 1.5h, 5400s or 02:40; got {text!r}") from None
    if seconds <= 0:
        raise UserError(f"a time limit must be positive, got {text!r}")
    return seconds


def load_projection(path: Path) -> dict[tuple[str, int], dict]:
    """The rows of a ``bench_rocoft_study.py --json`` file, by (task, k)."""
    try:
        rows = json.loads(Path(path).read_text())["rows"]
        return {(row["task"], int(row["k"])): row for row in rows}
    except FileNotFoundError:
        raise UserError(f"{path}: no such projection file (benchmarks/bench_rocoft_study.py --json writes one)") \
            from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path}: not a projection of benchmarks/bench_rocoft_study.py (--json output with rows)") \
            from None


def projected_seconds(job, row: dict, seeds: int, unscored: int) -> float:
    """One job's seconds by the projection ``row`` of its task and k: ``seeds`` in the study, ``unscored``
    of them still to score in a task's evaluation job."""
    evaluation = row["evaluation_s"]
    if job.kind == "train":
        return float(row["fine_tuning_run_s"][job.adapter])
    if job.kind == "fit":
        return float(row["kernels_per_seed_s"])
    if job.kind == "evaluate":
        return float(evaluation["capture"] + evaluation["projection"] * unscored / seeds)
    if job.seed is not None:  # one seed's kernels and its own evaluation pass
        return float(row["kernels_per_seed_s"] + evaluation["capture"] + evaluation["projection"] / seeds)
    return float(row["kernels_s"])


def _kind(job) -> str:
    return "fine-tuning" if job.kind == "train" else "kernels"


@dataclass
class StudyClock:
    """The time left of a limit and each pending job's expected seconds (its projection times the
    ratio of measured to projected seconds of the jobs of its kind run so far, 1 before any)."""

    limit_s: float
    rows: dict[tuple[str, int], dict]
    seeds: int
    started: float = field(default_factory=lambda: time.monotonic())
    ratios: dict[str, list[float]] = field(default_factory=dict)

    def left(self) -> float:
        return self.limit_s - (time.monotonic() - self.started)

    def check_rows(self, jobs) -> None:
        """`UserError` naming the tasks and k the projection lacks, before any work."""
        missing = sorted({f"{job.task} k={job.k}" for job in jobs if (job.task, job.k) not in self.rows})
        if missing:
            raise UserError(f"the projection has no row for {', '.join(missing)}: run "
                            "benchmarks/bench_rocoft_study.py --json FILE over those tasks and k")

    def factor(self, job) -> float:
        measured = self.ratios.get(_kind(job), [])
        return sum(measured) / len(measured) if measured else 1.0

    def expected(self, job, unscored: int) -> float:
        """The job's projected seconds times its kind's measured ratio."""
        return projected_seconds(job, self.rows[(job.task, job.k)], self.seeds, unscored) * self.factor(job)

    def needed(self, job, pending: list, unscored: int) -> float:
        """Seconds the job needs before its work is safe: a fitting or evaluation job's are its task's
        fits left and the evaluation after them, which computes whatever fit is missing (``pending``: the
        jobs not done, this one among them; ``unscored``: the seeds the evaluation scores)."""
        if job.kind not in ("fit", "evaluate"):
            return self.expected(job, unscored)
        chain = [j for j in pending if (j.task, j.k) == (job.task, job.k) and j.kind in ("fit", "evaluate")]
        return sum(self.expected(j, unscored) for j in chain)

    def record(self, jobs: list, projected: float, seconds: float) -> None:
        """A group of jobs run together took ``seconds`` against ``projected`` (the longest's projection)."""
        if projected > 0:
            self.ratios.setdefault(_kind(jobs[0]), []).append(seconds / projected)

    def projected(self, job, unscored: int) -> float:
        return projected_seconds(job, self.rows[(job.task, job.k)], self.seeds, unscored)


def format_minutes(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"
