"""Reading LM-BFF-format few-shot data and sampling k-shot splits.

The data folder is resolved as: the ``data_dir`` argument, else the environment
variable ``NTK_PEFT_DATA``, else ``../shared/data`` beside the repository. Its
layout is LM-BFF's: ``k-shot/<TASK>/16-<SEED>/{train,dev,test}.{tsv,csv}`` and
``pools/<TASK>/{train,dev}.json``.

Every example has an id naming its file and row (``k-shot/SST-2/16-42/train.tsv:3``
or ``pools/SST-2/train.json#17``), so splits can be checked for disjointness.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ntk_peft.errors import UserError
from ntk_peft.tasks.registry import EVAL_FROM_POOL_DEV, TaskSpec, get_task

DATA_ENV = "NTK_PEFT_DATA"
SHIPPED_K = 16
SHIPPED_SEEDS = (13, 21, 42, 87, 100)


@dataclass(frozen=True)
class Example:
    """One labelled example.

    Attributes:
        id: ``<file relative to the data folder>:<line>`` or ``...json#<key>``.
        text_a: first (or only) text.
        text_b: second text of pair tasks, else None.
        label: class index into the task's labels.
    """

    id: str
    text_a: str
    text_b: str | None
    label: int


@dataclass(frozen=True)
class Split:
    """A k-shot split: ``train`` and ``dev`` (k per class each) and ``eval``."""

    task: TaskSpec
    k: int
    seed: int
    train: list[Example]
    dev: list[Example]
    eval: list[Example]


def default_data_dir() -> Path:
    """``../shared/data`` beside the repository that holds this package."""
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: argument, else $NTK_PEFT_DATA, else ../shared/data."""
    if data_dir is not None:
        origin, path = "--data-dir", Path(data_dir)
    elif os.environ.get(DATA_ENV):
        origin, path = f"${DATA_ENV}", Path(os.environ[DATA_ENV])
    else:
        origin, path = "the default", default_data_dir()
    if not (path / "k-shot").is_dir():
        raise UserError(
            f"no LM-BFF data folder at {path} (from {origin}): pass --data-dir or set "
            f"${DATA_ENV} to a folder holding k-shot/<TASK>/16-<SEED>/ and pools/<TASK>/"
        )
    return path


def _row_error(path: Path, line: int, what: str) -> UserError:
    return UserError(f"malformed data row at {path}:{line}: {what}")


def _label(task: TaskSpec, raw: object, path: Path, line: int | str) -> int:
    try:
        return task.label_index(raw)
    except (KeyError, ValueError):
        valid = "a number" if task.regression_threshold is not None else ", ".join(task.labels)
        raise _row_error(path, line, f"label {raw!r} is not one of {valid}") from None


def _resolve_file(task, path, root: Path | None) -> tuple[TaskSpec, Path, str]:
    """The task spec, the path (which must exist) and its id prefix relative to ``root``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing data file {path}")
    return get_task(task), path, path.relative_to(root).as_posix() if root else path.name


def read_examples(task: TaskSpec | str, path: Path, root: Path | None = None) -> list[Example]:
    """Read one k-shot file (TSV with header, CoLA's TSV or headerless CSV)."""
    task, path, rel = _resolve_file(task, path, root)
    if task.file_format == "csv":
        return _read_csv(task, path, rel)
    return _read_tsv(task, path, rel)


def _read_csv(task: TaskSpec, path: Path, rel: str) -> list[Example]:
    out = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        for row in reader:
            line = reader.line_num
            if len(row) != 2:
                raise _row_error(path, line, f"expected 2 columns (label,sentence), got {len(row)}")
            out.append(Example(f"{rel}:{line}", row[1], None, _label(task, row[0], path, line)))
    return out


def _read_tsv(task: TaskSpec, path: Path, rel: str) -> list[Example]:
    # utf-8-sig drops MRPC's byte-order mark; GLUE TSVs are not quoted, so split on tabs.
    with open(path, encoding="utf-8-sig") as handle:
        lines = handle.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = []
    if task.file_format == "tsv-cola":  # no header: source, label, original label, sentence
        for line, text in enumerate(lines, start=1):
            cols = text.split("\t")
            if len(cols) != 4:
                raise _row_error(path, line, f"expected 4 tab-separated columns, got {len(cols)}")
            out.append(Example(f"{rel}:{line}", cols[3], None, _label(task, cols[1], path, line)))
        return out
    if not lines:
        raise _row_error(path, 1, "empty file, expected a header row")
    header = lines[0].split("\t")
    wanted = (*task.text_columns, task.label_column)
    missing = [name for name in wanted if name not in header]
    if missing:
        raise _row_error(path, 1, f"header lacks column(s) {missing}; it has {header}")
    idx = [header.index(name) for name in wanted]
    for line, text in enumerate(lines[1:], start=2):
        cols = text.split("\t")
        wider_ok = task.label_is_last_column and len(cols) > len(header)
        if len(cols) != len(header) and not wider_ok:
            raise _row_error(path, line, f"expected {len(header)} tab-separated columns, got {len(cols)}")
        texts = [cols[i] for i in idx[:-1]]
        label = _label(task, cols[-1] if task.label_is_last_column else cols[idx[-1]], path, line)
        out.append(Example(f"{rel}:{line}", texts[0], texts[1] if len(texts) > 1 else None, label))
    return out


def read_pool(task: TaskSpec | str, path: Path, root: Path | None = None) -> list[Example]:
    """Read a JSON pool ``{id: {"text_a", "text_b", "label"}}`` in file order."""
    task, path, rel = _resolve_file(task, path, root)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise _row_error(path, err.lineno, f"invalid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise _row_error(path, 1, "expected one JSON object mapping ids to examples")
    out = []
    for key, item in data.items():
        where = f"#{key}"
        if not isinstance(item, dict) or "text_a" not in item or "label" not in item:
            raise UserError(f"malformed data row at {path}{where}: needs text_a and label")
        text_b = item.get("text_b")
        if task.is_pair and not isinstance(text_b, str):
            raise UserError(f"malformed data row at {path}{where}: pair task {task.name} needs text_b")
        label = _label(task, item["label"], path, where)
        out.append(Example(f"{rel}#{key}", str(item["text_a"]), text_b if task.is_pair else None, label))
    return out


def _kshot_file(root: Path, task: TaskSpec, seed: int, stem: str) -> Path:
    folder = root / "k-shot" / task.name / f"{SHIPPED_K}-{seed}"
    if not folder.is_dir():
        raise UserError(
            f"no shipped 16-shot split {folder}; seeds with shipped splits: "
            f"{', '.join(map(str, SHIPPED_SEEDS))} (other seeds work with k other than 16)"
        )
    return folder / f"{stem}.{task.extension}"


def shuffled_by_label(pool: list[Example], seed: int) -> dict[int, list[Example]]:
    """LM-BFF's shuffle (``numpy.random.seed(seed)``, shuffle the pool), grouped by label in order of first
    appearance: the first k of each group are a k-shot sample."""
    np.random.seed(seed)
    lines = list(pool)
    np.random.shuffle(lines)
    by_label: dict[int, list[Example]] = {}
    for example in lines:
        by_label.setdefault(example.label, []).append(example)
    return by_label


def sample_kshot(pool: list[Example], k: int, seed: int, num_classes: int) -> tuple[list[Example], list[Example]]:
    """LM-BFF's k-shot sampling from a pool: (train, dev).

    ``numpy.random.seed(seed)``, shuffle the pool, then per label (in order of
    first appearance after shuffling) the first k examples are train and the
    next k are dev, as in LM-BFF's ``tools/generate_k_shot_data.py``. As there,
    a class with fewer than 2k examples gets all it has left as dev (a warning
    says so; TREC's ABBR at k = 64); fewer than k cannot fill train and is refused.
    """
    counts = np.bincount([e.label for e in pool], minlength=num_classes)
    if counts.min() < k:
        raise UserError(
            f"k={k} needs {k} examples per class (train) but the pool has {counts.tolist()} "
            f"per class; the largest possible k is {int(counts.min())}"
        )
    short = [label for label, count in enumerate(counts) if count < 2 * k]
    if short:
        warnings.warn(f"k={k}: class(es) {short} have fewer than {2 * k} pool examples ({counts.tolist()} per "
                      f"class), so their dev examples are fewer than {k} (as LM-BFF's sampling gives)", stacklevel=2)
    by_label = shuffled_by_label(pool, seed)
    train = [e for group in by_label.values() for e in group[:k]]
    dev = [e for group in by_label.values() for e in group[k : 2 * k]]
    return train, dev


@lru_cache(maxsize=64)
def _cached_split(task_name: str, k: int, seed: int, root: str) -> Split:
    task, base = get_task(task_name), Path(root)
    if k == SHIPPED_K:
        train = read_examples(task, _kshot_file(base, task, seed, "train"), base)
        dev = read_examples(task, _kshot_file(base, task, seed, task.dev_file), base)
    else:
        pool = read_pool(task, base / "pools" / task.name / "train.json", base)
        train, dev = sample_kshot(pool, k, seed, task.num_classes)
    if task.eval_source == EVAL_FROM_POOL_DEV:
        evaluation = read_pool(task, base / "pools" / task.name / "dev.json", base)
    else:
        # The test set is identical across seeds: the seed's own folder, else any.
        own = base / "k-shot" / task.name / f"{SHIPPED_K}-{seed}"
        folders = [own] if own.is_dir() else sorted((base / "k-shot" / task.name).glob(f"{SHIPPED_K}-*"))
        if not folders:
            raise UserError(f"no k-shot folders for {task.name} under {base / 'k-shot'}")
        evaluation = read_examples(task, folders[0] / f"test.{task.extension}", base)
    return Split(task, k, seed, train, dev, evaluation)


def load_split(task: str | TaskSpec, k: int = 16, seed: int = 42, data_dir=None) -> Split:
    """Train/dev/eval examples of a task's k-shot split.

    k = 16 reads the shipped LM-BFF splits (seeds 13, 21, 42, 87, 100); other k
    are sampled from ``pools/<TASK>/train.json`` with LM-BFF's procedure. The
    evaluation set is the k-shot ``test`` file, or ``pools/<TASK>/dev.json`` for
    MNLI, SNLI and QQP, which ship no test file. A task of your own
    (`ntk_peft.tasks.custom_task`) is sampled from its own files.

    Args:
        task: name or alias (``sst2``, ``SST-2``, ``mnli`` ...).
        k: examples per class in train (and in dev).
        seed: LM-BFF split seed.
        data_dir: LM-BFF data folder; see `resolve_data_dir`.

    Returns:
        Split with lists ``.train``, ``.dev``, ``.eval`` of `Example`.
    """
    spec = get_task(task)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UserError(f"seed must be an integer, got {seed!r}")
    if spec.source is not None:  # a task of your own: read from its files each time
        from ntk_peft.tasks.custom import custom_split

        return custom_split(spec, int(k), int(seed))
    root = resolve_data_dir(data_dir)
    cached = _cached_split(spec.name, int(k), int(seed), str(root))
    # Fresh lists, so a caller that edits them cannot change the cache.
    return Split(spec, cached.k, cached.seed, list(cached.train), list(cached.dev), list(cached.eval))
