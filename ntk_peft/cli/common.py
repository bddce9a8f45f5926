"""Shared CLI plumbing: one-line errors with exit status 2, common options."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable

from ntk_peft.errors import UserError

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        # the program's name alone (``ntk-peft``, not ``ntk-peft train``), as `run_cli` prints it
        self.exit(EXIT_USER_ERROR, f"{self.prog.split()[0]}: error: {message}\n")


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None,
            prog: str | None = None) -> int:
    """Run ``main``; a `UserError` becomes one line ``<prog>: error: ...`` on stderr and status 2, and a
    warning one line ``<prog>: warning: ...`` (no source line)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    name = prog or os.path.basename(sys.argv[0]) or "ntk-peft"
    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"{name}: warning: {message}\n"
    try:
        return int(main(argv) or 0)
    except UserError as err:
        sys.stderr.write(f"{name}: error: {err}\n")  # one write: ranks sharing a stderr do not interleave lines
        sys.stderr.flush()
        return EXIT_USER_ERROR
    except SystemExit as stop:  # argparse's own exits (--help, usage errors)
        return stop.code if isinstance(stop.code, int) else EXIT_USER_ERROR
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as Python's docs advise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 1
    except KeyboardInterrupt:  # on a line of its own, below any progress bar
        print("\ninterrupted; finished blocks, checkpoints and results are kept: run the same command again to "
              "resume", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --dtype."""
    from ntk_peft.models import DEFAULT_MODEL, model_names

    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"{', '.join(model_names())}, a local HF checkpoint folder or an org/name "
                             f"hub id (default: {DEFAULT_MODEL})")
    parser.add_argument("--dtype", default="float32", help="model weights dtype (default: float32)")


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """--template, --label-words, --batch-size, --max-length."""
    parser.add_argument("--template", default=None,
                        help="prompt template with {text_a} [{text_b}] and {mask}; default: the task's "
                             "template for the model kind (masked or causal)")
    parser.add_argument("--label-words", default=None,
                        help="comma-separated label words in class order, spaces kept as written, "
                             "e.g. ' negative, positive'")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="longest prompt in tokens; texts are truncated to fit (default 512)")


def parse_label_words(text: str | None) -> list[str] | None:
    """Split ``--label-words`` on commas, keeping spaces as written."""
    return None if text is None else text.split(",")


def add_custom_task_options(parser: argparse.ArgumentParser) -> None:
    """--text-columns, --label-column (for ``--task`` naming a file or folder of your own)."""
    parser.add_argument("--text-columns", default="text",
                        help="with --task FILE.csv|.tsv|.jsonl or a folder: the text column(s), comma-separated "
                             "(default text)")
    parser.add_argument("--label-column", default="label", help="with --task FILE: the label column (default label)")


def resolve_task(args: argparse.Namespace) -> str:
    """The task name to use: a registered task as given, or a file/folder of your own read and registered
    (with --text-columns, --label-column, --label-words and --template)."""
    from ntk_peft.tasks import custom_task, get_task, is_custom_path

    try:
        return get_task(args.task).name
    except UserError:
        if not is_custom_path(args.task):
            raise
    spec = custom_task(args.task, text_columns=args.text_columns, label_column=args.label_column,
                       label_words=parse_label_words(getattr(args, "label_words", None)),
                       template=getattr(args, "template", None))
    return spec.name
