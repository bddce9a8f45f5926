"""``ntk-compare``: the RoCoFT eNTK study from the command line.

    ntk-compare --task sst2 --subset row1 [--subset col1 ...] [--k 16] [--seeds 13,21,42,87,100]
                [--model M] [--solver klr|krr|svm] [--max-eval N] [--out DIR] [--data-dir D]
                [--adapter-checkpoint RUN_DIR] [--eval-kernels]

Prints accuracy mean (std) over seeds for K_full, each K_S and zero-shot, and
the relative kernel differences (p = 1, 2); writes results.json, the kernels
(resumable) and figures under --out.

Over several processes or machines (kernel blocks and eval projections shared
out over the ranks, rank 0 fits and writes; --out on a filesystem every rank
sees)::

    torchrun --standalone --nproc-per-node P -m ntk_peft.cli.compare --task sst2 --subset row1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ntk_peft.cli.common import Parser, add_custom_task_options, positive_float, positive_int, run_cli


def seed_list(text: str) -> list[int]:
    """argparse type: comma-separated integers."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("no seeds given")
    return seeds


def build_parser() -> Parser:
    parser = Parser(prog="ntk-compare", description="Does a parameter subset's eNTK classify like the full one?")
    parser.add_argument("--task", required=True,
                        help="task name, e.g. sst2, sst5, trec, mnli, or a .csv/.tsv/.jsonl file or a folder of them "
                             "(train.*, dev.*, test.*): a task of your own, with --text-columns, --label-column, "
                             "--label-words and --template")
    add_custom_task_options(parser)
    parser.add_argument("--template", default=None,
                        help="prompt template with {text_a} [{text_b}] and {mask} (default: the task's)")
    parser.add_argument("--label-words", default=None,
                        help="comma-separated label words in class order, spaces kept, e.g. ' terrible, great'")
    parser.add_argument("--subset", action="append", required=True,
                        help="kernel subset (repeatable): any adapter spec, e.g. row1 (= row1:first), col1, lora1")
    parser.add_argument("--k", type=positive_int, default=16, help="examples per class (default 16)")
    parser.add_argument("--seeds", type=seed_list, default=None,
                        help="default 13,21,42,87,100 (with --adapter-checkpoint: the seed it was trained with)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--kernel", action="append", default=None, choices=("ntk", "signgd", "asymmetric_signgd"),
                        help="kernel type (repeatable; default ntk): the eNTK, the SignGD kernel "
                             "<sign g, sign g'> or the asymmetric one <g, sign g'> (LM-Kernel-FT); sign kernels of "
                             "a binary task are of the logit difference; asymmetric_signgd is solved by AsK-LS; "
                             "results are named <type>:<subset>")
    parser.add_argument("--solver", choices=("klr", "krr", "svm", "lssvm"), default="klr",
                        help="solver of the symmetric kernels: kernel logistic regression (default), kernel ridge, "
                             "SVM or the least-squares SVM (binary)")
    parser.add_argument("--lambda", dest="lam", type=positive_float, default=None,
                        help="regularisation; default: picked on the dev split from a grid relative to the kernel scale")
    parser.add_argument("--no-offset", dest="offset", action="store_false",
                        help="do not start from the pretrained model's label logits f0 (by default the "
                             "kernel model predicts f0 + K·alpha, as LM-Kernel-FT's --adjust_for_init)")
    parser.add_argument("--max-eval", type=positive_int, default=None,
                        help="score a random subset (seed 0) of the evaluation set, for a quick run")
    parser.add_argument("--block-size", type=positive_int, default=16, help="examples per kernel block")
    parser.add_argument("--capture-gib", type=positive_float, default=4.0,
                        help="memory for recorded blocks held beyond the two in use, GiB (default 4): more "
                             "records each train block fewer times, same kernels")
    parser.add_argument("--implementation", choices=("fast", "reference"), default="fast")
    parser.add_argument("--out", default=None, help="results folder (default runs/ntk-compare/<task>-<model>-k<k>)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--eval-kernels", action="store_true",
                        help="also compute and save the eval x train kernels and predict from them; by default the "
                             "eval set is scored by projecting its gradients onto each fitted model's direction "
                             "sum_i alpha_i df(x_i)/dtheta, the same predictions at a fraction of the cost")
    parser.add_argument("--dev-predictions", choices=("kernels", "projections"), default="kernels",
                        help="how lambda selection predicts the dev split: from dev x train kernels (default) or "
                             "from projections onto one direction per grid lambda (NTK only; no dev kernels, "
                             "cheaper when the splits or the classes are many)")
    parser.add_argument("--no-figures", dest="figures", action="store_false")
    parser.add_argument("--adapter-checkpoint", default=None, metavar="DIR",
                        help="take the kernels at this fine-tuned point (an `ntk-peft train` run folder, its adapter/ "
                             "or best/) and report each kernel's distance |K0-Kt|_F/|K0|_F from the pretrained one")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ntk_peft.ntk import distributed

    launched = distributed.init_from_env()  # under torchrun: join the process group, share the blocks out
    finished = False
    try:
        code = _compare(args)
        finished = True
        return code
    except distributed.AgreedError:  # every rank stopped at the same check: they leave together
        finished = True
        raise
    finally:
        if launched:
            distributed.shutdown(wait=finished)


def _compare(args: argparse.Namespace) -> int:
    from ntk_peft.cli.common import parse_label_words, resolve_task
    from ntk_peft.experiments import default_out, format_table, run_compare
    from ntk_peft.ntk import distributed
    from ntk_peft.tasks import get_task

    def task_and_prompt() -> tuple[str, dict]:
        task, prompt = resolve_task(args), {}
        if get_task(task).source is None:  # a built-in task with another prompt (one of your own has it built in)
            prompt = {k: v for k, v in (("template", args.template),
                                        ("label_words", parse_label_words(args.label_words))) if v is not None}
        return task, prompt

    task, prompt = distributed.agreed(task_and_prompt)  # under torchrun a bad argument stops every rank here
    results = run_compare(task, args.subset, prompt=prompt or None, k=args.k, seeds=args.seeds, model_name=args.model,
                          solver=args.solver, max_eval=args.max_eval, out=args.out, data_dir=args.data_dir,
                          block_size=args.block_size, lam=args.lam, offset=args.offset,
                          implementation=args.implementation, adapter_checkpoint=args.adapter_checkpoint,
                          eval_kernels=args.eval_kernels, kernels=args.kernel or ["ntk"],
                          dev_predictions=args.dev_predictions, capture_memory=int(args.capture_gib * (1 << 30)))
    if not distributed.is_main():  # rank 0 draws and prints
        return 0
    out = Path(args.out) if args.out else default_out(results["task"], args.model, args.k, args.adapter_checkpoint)
    if args.figures:
        from ntk_peft.plotting import kernel_heatmaps, kernel_spectra, load_train_kernels

        seed = results["seeds"][0]
        kernels, labels = load_train_kernels(out / f"seed-{seed}")
        title = f"{results['task']}, {results['model']}, seed {seed}"
        (out / "figures").mkdir(exist_ok=True)
        kernel_heatmaps(kernels, labels, out / "figures" / "kernel_heatmaps.png", title)
        kernel_spectra(kernels, out / "figures" / "kernel_spectra.png", title)
    print(format_table(results))
    if args.figures:
        print(f"figures: {out / 'figures'} (kernel heatmaps and spectra of seed {results['seeds'][0]})")
    print(f"results: {out / 'results.json'}  total {results['timing_s']['total']:.0f} s")
    return 0


def entry() -> None:
    sys.exit(run_cli(main, prog="ntk-compare"))


if __name__ == "__main__":
    entry()
