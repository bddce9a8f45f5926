"""Tasks of your own: a CSV, TSV or JSON-lines file (or a folder of them) with text and label columns.

`custom_task(path, text_columns=..., label_column=..., label_words=...)` reads
the data, builds a `TaskSpec` (labels in sorted order unless given, the user's
template and label words for both prompt modes) and registers it, so every
entry point takes its name afterwards; ``--task path`` does the same on the
command line. ``path`` is one file, or a folder holding ``train.*`` and
optionally ``dev.*`` and ``test.*`` (same format).

Splits (`load_split`) follow LM-BFF's procedure (`sample_kshot`: shuffle with
the seed, then k per class): train and dev from the train file, or dev from
the dev file where there is one; the evaluation set is the test file, else
every train-file example not sampled (held out). Rows are checked as the
LM-BFF files are: a missing column, an empty text or a label outside the
labels is one line naming the file and row.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ntk_peft.errors import UserError
from ntk_peft.tasks.data import Example, Split, sample_kshot, shuffled_by_label
from ntk_peft.tasks.registry import TaskSpec, register_task

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
DEFAULT_CAUSAL_TEMPLATE = "{text_a}\nLabel:{mask}"
DEFAULT_PAIR_CAUSAL_TEMPLATE = "{text_a}\n{text_b}\nLabel:{mask}"
DEFAULT_MLM_TEMPLATE = "{text_a} Label:{mask} ."
DEFAULT_PAIR_MLM_TEMPLATE = "{text_a} ?{mask} , {text_b}"


@dataclass(frozen=True)
class CustomSource:
    """Where a user's task lives and how to read it."""

    train: Path
    dev: Path | None
    test: Path | None
    text_columns: tuple[str, ...]
    label_column: str


def is_custom_path(text: str) -> bool:
    """Whether ``--task`` names a data file or folder rather than a registered task."""
    path = Path(text)
    return path.suffix.lower() in FORMATS or path.is_dir() or path.is_file()


def _files(path: Path) -> tuple[Path, Path | None, Path | None]:
    if path.is_file():
        if path.suffix.lower() not in FORMATS:
            raise UserError(f"task file {path} is not .csv, .tsv or .jsonl")
        return path, None, None
    if not path.is_dir():
        raise UserError(f"no task file or folder {path}")
    found = {}
    for stem in ("train", "dev", "test"):
        matches = sorted(p for p in path.iterdir() if p.stem == stem and p.suffix.lower() in FORMATS)
        if len(matches) > 1:
            raise UserError(f"{path} holds several {stem} files ({', '.join(p.name for p in matches)}); keep one")
        found[stem] = matches[0] if matches else None
    if found["train"] is None:
        raise UserError(f"task folder {path} needs a train.csv, train.tsv or train.jsonl")
    return found["train"], found["dev"], found["test"]


def read_rows(path: Path, text_columns: tuple[str, ...], label_column: str) -> list[tuple[str, list[str], str]]:
    """``(row id, texts, raw label)`` per data row of one file, checked."""
    fmt = FORMATS[path.suffix.lower()]
    wanted = (*text_columns, label_column)
    rows: list[tuple[int, dict]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            if fmt == "jsonl":
                for line, text in enumerate(handle, start=1):
                    if text.strip():
                        item = json.loads(text)
                        if not isinstance(item, dict):
                            raise UserError(f"malformed data row at {path}:{line}: expected a JSON object")
                        rows.append((line, item))
            else:
                reader = csv.DictReader(handle, delimiter="," if fmt == "csv" else "\t")
                header = reader.fieldnames or []
                missing = [c for c in wanted if c not in header]
                if missing:
                    raise UserError(f"{path} has no column(s) {missing}; its header is {header} "
                                    f"(choose them with --text-columns and --label-column)")
                rows = [(reader.line_num, row) for row in reader]
    except json.JSONDecodeError as err:
        raise UserError(f"malformed data row at {path}:{len(rows) + 1}: invalid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    out = []
    for line, row in rows:
        missing = [c for c in wanted if row.get(c) in (None, "")]
        if missing:
            raise UserError(f"malformed data row at {path}:{line}: no value for {missing}")
        out.append((f"{path.name}:{line}", [str(row[c]) for c in text_columns], str(row[label_column]).strip()))
    if not out:
        raise UserError(f"{path} has no data rows")
    return out


def _sorted_labels(raw: set[str]) -> tuple[str, ...]:
    try:
        return tuple(sorted(raw, key=float))  # numeric labels in numeric order (0, 1, 2, 10)
    except ValueError:
        return tuple(sorted(raw))


def custom_task(path: str | Path, *, text_columns=("text",), label_column: str = "label", label_words=None,
                template: str | None = None, labels=None, name: str | None = None) -> TaskSpec:
    """Read a task of your own and register it under ``name`` (default: the file's or folder's name).

    Args:
        path: a .csv/.tsv (with a header row) or .jsonl file, or a folder with train.* [dev.*, test.*].
        text_columns: one column (text_a) or two (text_a, text_b); comma-separated text is accepted.
        label_column: the label column.
        label_words: one word per class, in label order (mind the leading space for causal LMs:
            ``" negative"``); comma-separated text is accepted. Required.
        template: a prompt template (`ntk_peft.tasks.templates`) used in both prompt modes; default
            ``{text_a}\\nLabel:{mask}`` for causal LMs and ``{text_a} Label:{mask} .`` for masked ones.
        labels: the raw label values in class order; default: the train file's, sorted.

    Returns:
        the registered `TaskSpec`; `load_split(name, k, seed)` then samples its splits.
    """
    path = Path(path)
    if isinstance(text_columns, str):
        text_columns = tuple(c.strip() for c in text_columns.split(",") if c.strip())
    if not 1 <= len(text_columns) <= 2:
        raise UserError(f"give one or two text columns, got {list(text_columns)}")
    if isinstance(label_words, str):
        label_words = label_words.split(",")
    if not label_words:
        raise UserError("a task of your own needs label words, one per class (e.g. --label-words ' no, yes')")
    train, dev, test = _files(path)
    source = CustomSource(train, dev, test, tuple(text_columns), label_column)
    raw_labels = {label for _, _, label in read_rows(train, source.text_columns, label_column)}
    labels = tuple(str(x) for x in labels) if labels is not None else _sorted_labels(raw_labels)
    unknown = sorted(raw_labels - set(labels))
    if unknown:
        raise UserError(f"{train} has labels {unknown} outside the given labels {list(labels)}")
    if len(label_words) != len(labels):
        raise UserError(f"{len(labels)} labels ({', '.join(labels)}) but {len(label_words)} label words "
                        f"{list(label_words)}; give one word per label, in this order")
    pair = len(text_columns) == 2
    name = name or (path.stem if path.is_file() else path.name)
    spec = TaskSpec(
        name=name, aliases=(name.lower(),), labels=labels, file_format="custom",
        mlm_template=template or (DEFAULT_PAIR_MLM_TEMPLATE if pair else DEFAULT_MLM_TEMPLATE),
        mlm_label_words=tuple(label_words),
        causal_template=template or (DEFAULT_PAIR_CAUSAL_TEMPLATE if pair else DEFAULT_CAUSAL_TEMPLATE),
        causal_label_words=tuple(label_words), text_columns=tuple(text_columns), label_column=label_column,
        source=source, notes=f"a task of your own from {path}")
    return register_task(spec)


def read_task_file(task: TaskSpec, path: Path) -> list[Example]:
    """The examples of one of a user's task files, in file order, labels checked against the task's."""
    source: CustomSource = task.source
    out = []
    for row_id, texts, raw in read_rows(path, source.text_columns, source.label_column):
        if raw not in task.labels:
            raise UserError(f"malformed data row at {row_id.replace(path.name, str(path), 1)}: label {raw!r} is not "
                            f"one of {', '.join(task.labels)}")
        out.append(Example(row_id, texts[0], texts[1] if len(texts) > 1 else None, task.labels.index(raw)))
    return out


def custom_split(task: TaskSpec, k: int, seed: int) -> Split:
    """A k-shot split of a user's task (see the module doc)."""
    source: CustomSource = task.source
    pool = read_task_file(task, source.train)
    if source.dev is None:
        train, dev = sample_kshot(pool, k, seed, task.num_classes)
    else:
        train = _kshot(pool, k, seed, task.num_classes)
        dev = _kshot(read_task_file(task, source.dev), k, seed, task.num_classes)
    if source.test is not None:
        evaluation = read_task_file(task, source.test)
    else:
        used = {e.id for e in train} | {e.id for e in dev}
        evaluation = [e for e in pool if e.id not in used]
        if not evaluation:
            raise UserError(f"{source.train} has no examples left to evaluate on after the k-shot train and dev "
                            f"sets; add a test file or lower k")
    return Split(task, k, seed, train, dev, evaluation)


def _kshot(pool: list[Example], k: int, seed: int, classes: int) -> list[Example]:
    """k per class by LM-BFF's procedure (the train half of `sample_kshot`), from a pool with k per class."""
    counts = np.bincount([e.label for e in pool], minlength=classes)
    if counts.min() < k:
        raise UserError(f"k={k} needs {k} examples per class but the file has {counts.tolist()} per class")
    return [e for group in shuffled_by_label(pool, seed).values() for e in group[:k]]
