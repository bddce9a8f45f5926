"""``ntk-peft``: the toolkit's utility commands.

- ``ntk-peft zeroshot --task sst2 [--model M] [--max-examples N]``: zero-shot
  accuracy of the label-word prompt on the evaluation set; the last line
  printed is ``accuracy: <float>``.
- ``ntk-peft params --adapter SPEC [--adapter ...] [--model M]``: trainable
  parameter counts on a model's shapes (built on the meta device, no weights).
- ``ntk-peft train --task sst2 --adapter lormapi8 [--k 16] [--seed 42] [--steps N | --epochs E]
  [--lr] [--targets] [--track-every 10] [--out DIR]``: prompt-based fine-tuning
  with ΔW rank tracking (see `ntk_peft.train`); resumes from DIR's checkpoint.
- ``ntk-peft figures [--results runs] [--out DIR] [--quick] [--kernels DIR] [--train-run DIR ...]
  [--bounds DIR]``: every figure of the toolkit from results folders, computing what is missing
  (see `ntk_peft.experiments.figures`).
- ``ntk-peft study rocoft [--tasks all|single|pair|T,T] [--k 16,64] [--seeds ...] [--fine-tune full,lora1,row1|none]
  [--time-limit 2h40m] [--status | --report | --rescore]``: RoCoFT's tables 5 and 6 as a resumable queue of
  ntk-compare and fine-tuning runs (torchrun shares it over ranks), results and README under
  results/rocoft-smollm2 (see `ntk_peft.experiments.rocoft_study`); with a time limit only the jobs expected
  to finish in it start (`ntk_peft.experiments.study_clock`).
- ``ntk-peft prepare-model [--model M]``: load (and for SmolLM2, convert once)
  a model, so later runs start fast.
- ``ntk-peft bounds [--layers 0,15,29] [--types q,k,v,o,gate,up,down] [--run DIR ...]
  [--random 256x256 --spectrum power:1] [--budget-ranks 1,2,4,8,16,32] [--out DIR]``: best relative
  error of low rank, Monarch, rows, columns (and CP on stacks) at equal parameter budgets, on a
  model's weights, trained ΔW or random matrices (see `ntk_peft.experiments.bounds_study`).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from ntk_peft.cli.common import (
    Parser,
    add_custom_task_options,
    add_model_options,
    add_prompt_options,
    parse_label_words,
    positive_float,
    positive_int,
    resolve_task,
    run_cli,
)
from ntk_peft.errors import UserError
from ntk_peft.io import check_output_dir, check_output_file


def build_parser() -> Parser:
    parser = Parser(prog="ntk-peft", description="ntk_peft utilities")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    zs = sub.add_parser("zeroshot", help="zero-shot accuracy of the label-word prompt")
    zs.add_argument("--task", required=True,
                    help="task name, e.g. sst2, mnli, or a .csv/.tsv/.jsonl file or folder of your own")
    add_custom_task_options(zs)
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

    tr = sub.add_parser("train", help="fine-tune with an adapter, tracking the rank of ΔW")
    tr.add_argument("--task", required=True,
                    help="task name, e.g. sst2, or a .csv/.tsv/.jsonl file or folder of your own")
    add_custom_task_options(tr)
    tr.add_argument("--template", default=None, help="with a task of your own: its prompt template")
    tr.add_argument("--label-words", default=None,
                    help="with a task of your own: comma-separated label words in label order, e.g. ' no, yes'")
    tr.add_argument("--adapter", required=True, help="adapter spec, e.g. lora8, row1, lormapi8, more4x8, full")
    tr.add_argument("--model", default="smollm2-135m", help="model name (default: smollm2-135m)")
    tr.add_argument("--k", type=positive_int, default=16, help="examples per class (default 16)")
    tr.add_argument("--seed", type=int, default=42, help="k-shot split, adapter init and order seed (default 42)")
    length = tr.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=None, help="optimizer steps")
    length.add_argument("--epochs", type=float, default=None, help="passes over the k-shot train set (default 10)")
    tr.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    tr.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    tr.add_argument("--schedule", default="linear", help="linear, cosine or constant (default linear)")
    tr.add_argument("--warmup", type=float, default=0.0, help="warmup: fraction of steps (<1) or steps (default 0)")
    tr.add_argument("--batch-size", type=positive_int, default=8, help="examples per step (default 8)")
    tr.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (default 1.0)")
    tr.add_argument("--eval-every", type=positive_int, default=50, help="steps between dev evaluations (default 50)")
    tr.add_argument("--early-stop", type=positive_int, default=None,
                    help="stop after this many dev evaluations without improvement (default: never)")
    tr.add_argument("--targets", default=None, help="all, attn, mlp, types, names or patterns (default per adapter)")
    tr.add_argument("--track-every", type=int, default=10, help="steps between ΔW measurements; 0: start and end")
    tr.add_argument("--track-layers", default=None, help="only layers whose name contains this text")
    tr.add_argument("--max-eval", type=positive_int, default=None, help="score a random subset of the eval set")
    tr.add_argument("--out", default=None, help="run folder (default runs/train/<task>-<adapter>-k<k>-s<seed>)")
    tr.add_argument("--data-dir", default=None, help="LM-BFF data folder (default $NTK_PEFT_DATA or ../shared/data)")

    bounds = sub.add_parser("bounds", help="adapter classes' best errors at equal parameter budgets")
    bounds.add_argument("--model", default="smollm2-135m", help="whose pretrained weights (default smollm2-135m)")
    bounds.add_argument("--layers", type=_int_list, default=[0, 15, 29],
                        help="layer indices, of the model or of --run's ΔW (default 0,15,29)")
    bounds.add_argument("--types", default="q,k,v,o,gate,up,down", help="matrix types (default all seven)")
    bounds.add_argument("--run", action="append", default=[],
                        help="a training run folder: use its ΔW instead of the pretrained weights (repeatable)")
    bounds.add_argument("--random", default=None, metavar="MxN", help="random matrices of this shape instead")
    bounds.add_argument("--spectrum", default="power:1", help="random matrices: flat, power:A or exp:A")
    bounds.add_argument("--count", type=positive_int, default=3, help="random matrices: how many (default 3)")
    bounds.add_argument("--budget-ranks", type=_int_list, default=[1, 2, 4, 8, 16, 32],
                        help="budgets as LoRA ranks R: P = R(m+n) per matrix (default 1,2,4,8,16,32)")
    bounds.add_argument("--no-cp", dest="cp", action="store_false", help="skip CP fits of same-type stacks")
    bounds.add_argument("--linear-model", type=positive_int, default=None, metavar="D",
                        help="instead: the deep linear model experiment (MoRe theorems A.3/A.4) at width D")
    bounds.add_argument("--depth", type=positive_int, default=3, help="linear model: layers (default 3)")
    bounds.add_argument("--seed", type=int, default=0, help="linear model / random matrices: seed (default 0)")
    bounds.add_argument("--out", default=None, help="folder for bounds.csv, table.md, figure (default runs/bounds/...)")

    figs = sub.add_parser("figures", help="regenerate every figure, computing missing results")
    figs.add_argument("--results", default="runs", help="root of the results folders (default runs)")
    figs.add_argument("--out", default=None, help="figure folder (default RESULTS/figures, or figures-quick)")
    figs.add_argument("--quick", action="store_true",
                      help="tiny settings for anything computed (one seed, 6 steps, one layer): minutes on 2 CPUs")
    figs.add_argument("--kernels", default=None, help="use this ntk-compare folder for the kernel figures")
    figs.add_argument("--train-run", action="append", default=None,
                      help="use this tracked training run for the ΔW figures (repeatable)")
    figs.add_argument("--bounds", default=None, help="use this ntk-peft bounds folder for the error curves")

    study = sub.add_parser("study", help="long studies as resumable queues (rocoft: RoCoFT tables 5 and 6)")
    studies = study.add_subparsers(dest="study", required=True, parser_class=Parser)
    rocoft = studies.add_parser("rocoft", help="RoCoFT tables 5 and 6: kernels and fine-tuning on 13 tasks")
    rocoft.add_argument("--tasks", default="all", help="all, single, pair, or comma-separated tasks (default all)")
    rocoft.add_argument("--k", type=_int_list, default=[16, 64], help="examples per class (default 16,64)")
    rocoft.add_argument("--seeds", type=_int_list, default=None, help="default 13,21,42,87,100")
    rocoft.add_argument("--fine-tune", default="full,lora1,row1",
                        help="adapters fine-tuned per task and seed: full,lora1,row1 (default) or none")
    rocoft.add_argument("--no-ablation", action="store_true",
                        help="leave out the row/column-selection kernels (row1/col1 :random, :wanda-max)")
    rocoft.add_argument("--max-eval", type=int, default=1000,
                        help="evaluation examples (a fixed random subset, seed 0; default 1000; 0: all)")
    rocoft.add_argument("--epochs", type=positive_int, default=10, help="fine-tuning epochs (default 10)")
    rocoft.add_argument("--model", default="smollm2-135m")
    rocoft.add_argument("--runs", default="runs/rocoft", help="kernel stores and run folders (default runs/rocoft)")
    rocoft.add_argument("--results", default="results/rocoft-smollm2",
                        help="committable results, README and figures (default results/rocoft-smollm2)")
    rocoft.add_argument("--data-dir", default=None, help="LM-BFF data folder (default $NTK_PEFT_DATA or ../shared/data)")
    rocoft.add_argument("--kernel-jobs", choices=("task", "seed", "split"), default="task",
                        help="one kernel job per task (default); per seed: each seed recorded as it finishes, "
                             "for machines that may be lost mid-task, at one evaluation pass per seed; split: one "
                             "fitting job per seed, then one evaluation pass for the task's seeds")
    rocoft.add_argument("--dev-predictions", choices=("projections", "kernels"), default="projections",
                        help="how lambda selection predicts the dev split: projections onto one direction per grid "
                             "lambda (default; no dev x train kernels) or the dev x train kernels (the study's "
                             "first tasks, SST-2 to MPQA at k = 16)")
    rocoft.add_argument("--capture-gib", type=positive_float, default=4.0,
                        help="memory for recorded blocks held beyond the two in use, GiB (default 4): more "
                             "records each train block fewer times, same kernels")
    rocoft.add_argument("--time-limit", default=None, metavar="DURATION",
                        help="start a job only if it is expected to finish within this time from the command's "
                             "start (2h40m, 90m, 02:40; a bare number is minutes), then stop: for batch "
                             "allocations and machines whose run folders are lost when they end")
    rocoft.add_argument("--job-costs", default=None, metavar="FILE",
                        help="with --time-limit: the projection the jobs' times come from, "
                             "benchmarks/bench_rocoft_study.py --json output (default "
                             "RESULTS/bench_study_cpu_dev_projections.json), scaled by the jobs run so far")
    what = rocoft.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true", help="list the queue and what is done; run nothing")
    what.add_argument("--report", action="store_true",
                      help="only redraw the README tables and figures from the results folder")
    what.add_argument("--rescore", action="store_true",
                      help="add the eval confusion counts to finished tasks recorded before they were kept, "
                           "from the kernel stores under --runs (every other number must come back the same)")

    prep = sub.add_parser("prepare-model", help="load a model once (SmolLM2: convert the GGUF)")
    add_model_options(prep)
    return parser


def _int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers."""
    import argparse

    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return values


def _bounds(args) -> int:
    from pathlib import Path

    from ntk_peft.errors import UserError
    from ntk_peft.experiments.bounds_study import (
        bounds_study,
        model_matrices,
        random_matrices,
        run_matrices,
        summary_table,
    )
    from ntk_peft.plotting import bounds_figure

    if 0 in args.budget_ranks:
        raise UserError("--budget-ranks must be positive")
    if args.linear_model is not None:
        return _linear_model(args)
    if args.random:
        try:
            shape = tuple(int(v) for v in args.random.lower().split("x"))
        except ValueError:
            shape = ()
        if len(shape) != 2:
            raise UserError(f"--random expects a shape MxN, got {args.random!r}")
        if min(shape) < 1:
            raise UserError(f"--random needs positive sizes M and N, got {args.random!r}")
        source = f"random-{args.random}-{args.spectrum}"
    elif args.run:
        source = "runs-" + "-".join(Path(r).name for r in args.run)
    else:
        source = f"{Path(args.model).name}-layers{'-'.join(map(str, args.layers))}"
    out = check_output_dir(args.out or Path("runs") / "bounds" / source.replace(":", "_"))  # before any work
    if args.random:
        matrices = random_matrices(shape, args.spectrum, args.count)
    elif args.run:
        matrices = {}
        for run in args.run:
            matrices.update(run_matrices(run, args.layers))
    else:
        types = [t.strip() for t in args.types.split(",") if t.strip()]
        matrices = model_matrices(args.model, args.layers, types)
    rows = bounds_study(matrices, args.budget_ranks, cp=args.cp, out=out)
    table = summary_table(rows)
    (out / "table.md").write_text(table + "\n")
    figure = bounds_figure(rows, out / "monarch_vs_lowrank.png", title=source)
    print(table)
    print(f"rows: {out / 'bounds.csv'}  figure: {figure}")
    return 0


def _linear_model(args) -> int:
    import csv
    from pathlib import Path

    from ntk_peft.errors import UserError
    from ntk_peft.experiments.linear_model import linear_model_experiment

    d = args.linear_model
    if d < 8 or d % 4:
        raise UserError("--linear-model D needs D >= 8 and divisible by 4 (Monarch N = 2, 4)")
    from ntk_peft.adapters import parse_spec

    classes = ("more4x4", "more4x8", "more2x2", "more2x4", "lora2", "lora4", "lora8", "row4", "col4")
    classes = tuple(c for c in classes if parse_spec(c).kind != "more" or parse_spec(c).rank <= d // parse_spec(c).blocks)
    out = check_output_dir(args.out or Path("runs") / "bounds" / f"linear-model-d{d}-L{args.depth}-s{args.seed}")
    rows = linear_model_experiment(d, args.depth, classes, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "linear_model.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"deep linear model: d={d}, depth {args.depth}, seed {args.seed}; squared errors ||W_target - W_adapted||_F^2"
          f" (before adapting: {rows[0]['initial_error']:.4g})")
    print(f"{'class':<9}{'config':>7}{'params':>8}{'projection':>13}{'descent':>12}{'bound |P|_2':>14}"
          f"{'bound |P|_F':>14}")
    for r in rows:
        print(f"{r['class']:<9}{r['config']:>7}{r['params']:>8}{r['projection_error']:>13.4g}"
              f"{r['descent_error']:>12.4g}{r['bound_spectral']:>14.4g}{r['bound_frobenius']:>14.4g}")
    print(f"rows: {out / 'linear_model.csv'}")
    return 0


def _zeroshot(args) -> int:
    from ntk_peft.models import load_model
    from ntk_peft.solvers import accuracy, predict_logits
    from ntk_peft.tasks import load_split, make_batch

    if args.json_out:
        check_output_file(args.json_out)  # before the work, so a bad path does not waste it
    split = load_split(resolve_task(args), k=args.k, seed=args.seed, data_dir=args.data_dir)
    examples = getattr(split, args.split)
    if args.max_examples is not None and args.max_examples < len(examples):
        keep = np.sort(np.random.default_rng(0).permutation(len(examples))[: args.max_examples])
        examples = [examples[i] for i in keep]
    model, tokenizer = load_model(args.model, dtype=args.dtype)
    prompt = dict(template=args.template, label_words=parse_label_words(args.label_words),
                  max_length=args.max_length)
    make_batch(tokenizer, split.task, examples[:1], **prompt)  # bad template or label words fail here, early
    start = time.perf_counter()
    logits = predict_logits(model, tokenizer, split.task, examples, args.batch_size,
                            desc=f"zero-shot {split.task.name} {args.split}", **prompt)
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


def _train(args) -> int:
    from ntk_peft.adapters import parse_spec
    from ntk_peft.tasks import get_task, is_custom_path
    from ntk_peft.train import TrainConfig, train

    if (args.template or args.label_words) and not is_custom_path(args.task):
        raise UserError("--template and --label-words define a task of your own (--task FILE); training a built-in "
                        "task uses its own prompt")
    task = get_task(resolve_task(args))
    spec = parse_spec(args.adapter)
    out = args.out or f"runs/train/{task.name}-{spec}-k{args.k}-s{args.seed}".replace(":", "_")
    config = TrainConfig(task=task.name, adapter=str(spec), out=out, k=args.k, seed=args.seed, model=args.model,
                         steps=args.steps, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                         schedule=args.schedule, warmup=args.warmup, batch_size=args.batch_size,
                         max_grad_norm=args.max_grad_norm, eval_every=args.eval_every, early_stop=args.early_stop,
                         targets=args.targets, track_every=args.track_every, track_layers=args.track_layers,
                         max_eval=args.max_eval, data_dir=args.data_dir)
    metrics = train(config)
    print(f"{task.name} {spec}: {metrics['num_trainable']:,} trainable, {metrics['final_step']} steps, "
          f"best dev {metrics['best_dev']:.3f} (step {metrics['best_step']}), "
          f"eval accuracy {metrics['eval_accuracy']:.3f} on {metrics['n_eval']} examples -> {out}")
    return 0


def _figures(args) -> int:
    from ntk_peft.experiments.figures import make_all

    started = time.perf_counter()
    paths = make_all(args.results, args.out, quick=args.quick, kernels=args.kernels, train_runs=args.train_run,
                     bounds=args.bounds)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"index: {next(iter(paths.values())).parent / 'README.md'}  ({time.perf_counter() - started:.0f} s)")
    return 0


def _study(args) -> int:
    from pathlib import Path

    from ntk_peft.experiments.compare import DEFAULT_SEEDS
    from ntk_peft.experiments.rocoft_report import write_report
    from ntk_peft.experiments.rocoft_study import (
        StudyConfig,
        job_done,
        parse_fine_tune,
        parse_tasks,
        rescore_task,
        run_study,
        study_jobs,
    )
    from ntk_peft.experiments.study_clock import StudyClock, load_projection, parse_duration
    from ntk_peft.ntk import distributed

    if args.max_eval < 0:
        raise UserError(f"--max-eval must be 0 (all) or positive, got {args.max_eval}")
    config = StudyConfig(tasks=parse_tasks(args.tasks), ks=list(dict.fromkeys(args.k)),
                         seeds=args.seeds or list(DEFAULT_SEEDS), fine_tune=parse_fine_tune(args.fine_tune),
                         ablation=not args.no_ablation, model=args.model, max_eval=args.max_eval or None,
                         epochs=args.epochs, runs=Path(args.runs), results=Path(args.results), data_dir=args.data_dir,
                         kernel_jobs=args.kernel_jobs, dev_predictions=args.dev_predictions,
                         capture_memory=int(args.capture_gib * (1 << 30)))
    if min(config.ks) < 1:
        raise UserError(f"--k takes positive integers, got {args.k}")
    clock = None
    if args.time_limit is not None:  # the limit counts from here, the command's start
        limit = parse_duration(args.time_limit)
        costs = Path(args.job_costs) if args.job_costs else config.results / "bench_study_cpu_dev_projections.json"
        clock = StudyClock(limit, load_projection(costs), seeds=len(config.seeds))
    elif args.job_costs is not None:
        raise UserError("--job-costs goes with --time-limit (the projection times the jobs against the limit)")
    check_output_dir(config.results)
    if args.report:
        print(f"report: {write_report(config.results)}")
        return 0
    if args.rescore:  # a task that cannot be rescored is named and skipped; the others go on
        refused = []
        for task in config.tasks:
            for k in config.ks:
                try:
                    if rescore_task(config, task, k):
                        print(f"rescored {task} k={k}: eval confusion counts added", flush=True)
                except UserError as error:
                    print(f"not rescored: {error}", file=sys.stderr, flush=True)
                    refused.append(f"{task} k={k}")
        print(f"report: {write_report(config.results, figures=False)}")
        if refused:
            raise UserError(f"not rescored: {', '.join(refused)} (reasons above)")
        return 0
    jobs = study_jobs(config)
    if args.status:
        for job in jobs:
            print(f"{'done   ' if job_done(job, config) else 'pending'}  {job.describe()}")
        print(f"{sum(job_done(j, config) for j in jobs)} of {len(jobs)} jobs done; results in {config.results}")
        return 0
    check_output_dir(config.runs)
    from ntk_peft.tasks import load_split

    for job in jobs:  # every split loads before the long work starts
        if job.kind != "train":
            for seed in config.seeds:
                load_split(job.task, job.k, seed, config.data_dir)
    launched = distributed.init_from_env()
    main = distributed.is_main()  # asked before the process group ends
    finished = False
    try:
        done = run_study(config, clock=clock, after_each=lambda jobs: write_report(  # tables; a kernel job's figures
            config.results, figures={j.folder for j in jobs if j.kind in ("kernels", "evaluate")}))
        finished = True
    finally:
        if launched:
            distributed.shutdown(wait=finished)
    if main:
        print(f"{len(done)} jobs run; report: {write_report(config.results, figures=False)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "zeroshot":
        return _zeroshot(args)
    if args.command == "params":
        return _params(args)
    if args.command == "train":
        return _train(args)
    if args.command == "bounds":
        return _bounds(args)
    if args.command == "figures":
        return _figures(args)
    if args.command == "study":
        return _study(args)
    from ntk_peft.models import load_model

    model, _ = load_model(args.model, dtype=args.dtype)
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters, ready")
    return 0


def entry() -> None:
    sys.exit(run_cli(main, prog="ntk-peft"))


if __name__ == "__main__":
    entry()
