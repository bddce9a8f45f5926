"""``ntk-peft``: the toolkit's utility commands.

- ``ntk-peft zeroshot --task sst2 [--model M] [--max-examples N]``: zero-shot
  accuracy of the label-word prompt on the evaluation set; the last line
  printed is ``accuracy: <float>``.
- ``ntk-peft params --adapter SPEC [--adapter ...] [--model M]``: trainable
  parameter counts on a model's shapes (built on the meta device, no weights).
- ``ntk-peft prepare-model [--model M]``: load (and for SmolLM2, convert once)
  a model, so later runs start fast.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from ntk_peft.cli.common import (
    Parser,
    add_model_options,
    add_prompt_options,
    parse_label_words,
    positive_int,
    run_cli,
)


def build_parser() -> Parser:
    parser = Parser(prog="ntk-peft", description="ntk_peft utilities")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    zs = sub.add_parser("zeroshot", help="zero-shot accuracy of the label-word prompt")
    zs.add_argument("--task", required=True, help="task name, e.g. sst2, mnli (see --help of tasks)")
    add_model_options(zs)
    add_prompt_options(zs)
    zs.add_argument("--split", choices=("eval", "dev", "train"), default="eval",
                    help="which examples to score (default: the evaluation set)")
    zs.add_argument("--k", type=positive_int, default=16, help="k-shot split for --split train/dev")
    zs.add_argument("--seed", type=int, default=42, help="k-shot split seed")
    zs.add_argument("--max-examples", type=positive_int, default=None,
                    help="score a random subset of this size (seed 0), for a quick look")
    zs.add_argument("--data-dir", default=None, help="LM-BFF data folder (default $NTK_PEFT_DATA or ../shared/data)")
    zs.add_argument("--json", dest="json_out", default=None, help="also write the result to this JSON file")

    count = sub.add_parser("params", help="trainable parameter counts of adapter specs on a model's shapes")
    count.add_argument("--adapter", action="append", required=True,
                       help="adapter spec (repeatable), e.g. row1, lora8, more4x8, cp16, lormapi8")
    count.add_argument("--model", default="smollm2-135m",
                       help="any model name of --model elsewhere, or roberta-base-shape (default: smollm2-135m)")
    count.add_argument("--targets", default=None, help="all, attn, mlp, types, names or patterns (default per adapter)")

    prep = sub.add_parser("prepare-model", help="load a model once (SmolLM2: convert the GGUF)")
    add_model_options(prep)
    return parser


def _zeroshot(args) -> int:
    from ntk_peft.models import load_model
    from ntk_peft.solvers import accuracy, predict_logits
    from ntk_peft.tasks import load_split, make_batch

    split = load_split(args.task, k=args.k, seed=args.seed, data_dir=args.data_dir)
    examples = getattr(split, args.split)
    if args.max_examples is not None and args.max_examples < len(examples):
        keep = np.sort(np.random.default_rng(0).permutation(len(examples))[: args.max_examples])
        examples = [examples[i] for i in keep]
    model, tokenizer = load_model(args.model, dtype=args.dtype)
    prompt = dict(template=args.template, label_words=parse_label_words(args.label_words),
                  max_length=args.max_length)
    make_batch(tokenizer, split.task, examples[:1], **prompt)  # bad template or label words fail here, early
    start = time.perf_counter()
    logits = predict_logits(model, tokenizer, split.task, examples, args.batch_size, **prompt)
    acc = accuracy(logits, examples)
    counts = np.bincount([e.label for e in examples], minlength=split.task.num_classes)
    majority = float(counts.max() / len(examples))
    seconds = time.perf_counter() - start
    print(f"task: {split.task.name}  model: {args.model}  examples: {len(examples)} ({args.split})")
    print(f"predicted class counts: {np.bincount(logits.argmax(1).numpy(), minlength=split.task.num_classes).tolist()}"
          f"  true: {counts.tolist()}")
    print(f"majority-class rate: {majority:.4f}")
    print(f"seconds: {seconds:.1f}")
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump({"task": split.task.name, "model": args.model, "split": args.split,
                       "examples": len(examples), "accuracy": acc, "majority_rate": majority,
                       "template": args.template, "label_words": parse_label_words(args.label_words),
                       "seconds": seconds}, handle, indent=2)
    print(f"accuracy: {acc:.4f}")
    return 0


def _params(args) -> int:
    from ntk_peft.adapters import apply_adapter, parse_spec
    from ntk_peft.models import model_skeleton

    specs = [parse_spec(text) for text in args.adapter]  # bad specs fail before any model is built
    total = sum(p.numel() for p in model_skeleton(args.model).parameters())
    print(f"model: {args.model}  parameters: {total:,}")
    print(f"{'adapter':<16}{'layers':>8}{'trainable':>14}{'% of model':>12}")
    for spec in specs:
        handle = apply_adapter(model_skeleton(args.model), spec, args.targets)
        count = handle.num_trainable()
        layers = len(handle.layers) if handle.layers else len(handle.targets)
        print(f"{str(spec):<16}{layers:>8}{count:>14,}{100 * count / total:>11.4f}%")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "zeroshot":
        return _zeroshot(args)
    if args.command == "params":
        return _params(args)
    from ntk_peft.models import load_model

    model, _ = load_model(args.model, dtype=args.dtype)
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters, ready")
    return 0


def entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry()
