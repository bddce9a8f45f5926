"""The RoCoFT eNTK study (section 5): does a subset's kernel classify like the full one?

For each seed: the k-shot split, the pretrained label logits f0, the kernels
of ``full`` and each subset on train×train, dev×train and eval×train (one set
of passes, blocked, in a `KernelStore` so reruns reuse them), a solver per
kernel with λ picked on dev, and the RoCoFT relative kernel differences.
With a fine-tuned checkpoint, the kernels are taken at the fine-tuned point
(f0 is then the fine-tuned model's logits) and compared with the pretrained
train kernels (``‖K_0 − K_t‖_F/‖K_0‖_F``, the lazy-regime check).
The result is a plain dict (the ``results.json`` schema in the README).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import ntk_peft
from ntk_peft.adapters import fold_adapter, parse_spec
from ntk_peft.analysis import effective_rank, kernel_distance, relative_difference
from ntk_peft.errors import UserError
from ntk_peft.experiments.checkpoint import resolve_checkpoint
from ntk_peft.experiments.dev_projections import (
    DEV_PREDICTIONS,
    dev_projections,
    grid_fits,
    pick_from_projections,
    stacked_weights,
)
from ntk_peft.experiments.projections import score_with_projections
from ntk_peft.experiments.scoring import score_predictions
from ntk_peft.io import check_output_dir, save_tensors, write_json
from ntk_peft.ntk import (
    CrossJob,
    KernelJob,
    KernelStore,
    batches_hash,
    distributed,
    kernel_blocks,
    model_hash,
    run_kernel_jobs,
    shared_cross_blocks,
)
from ntk_peft.ntk.blocked import DEFAULT_CACHE_BYTES
from ntk_peft.ntk.kernel_types import KernelType
from ntk_peft.solvers import kernel_scale, make_solver, predict_logits, select_lambda
from ntk_peft.tasks import get_task, load_split, make_batch


def _blocks(tokenizer, task, examples, size: int, prompt: dict) -> list[dict]:
    return [make_batch(tokenizer, task, examples[i : i + size], **prompt) for i in range(0, len(examples), size)]


def length_order(tokenizer, task, examples, prompt: dict) -> np.ndarray:
    """Indices sorting ``examples`` by prompt length (stable), so that blocks carry little padding."""
    if not examples:
        return np.zeros(0, dtype=np.int64)
    lengths = make_batch(tokenizer, task, examples, **prompt)["attention_mask"].sum(1).numpy()
    return np.argsort(lengths, kind="stable")


DEFAULT_SEEDS = (13, 21, 42, 87, 100)


def _summary(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=0))}


def kernel_key(kernel: KernelType, subset: str) -> str:
    """A fitted kernel's name in results: the subset for the NTK (``row1``), else ``<type>:<subset>``."""
    return subset if kernel is KernelType.NTK else f"{kernel.value}:{subset}"


def kernel_output(kernel: KernelType, classes: int) -> str:
    """The NTK is of the label logits; sign kernels of a binary task are of the logit difference
    (LM-Kernel-FT), of a multi-class task of the label logits."""
    return "difference" if kernel is not KernelType.NTK and classes == 2 else "labels"


def kernel_solver(kernel: KernelType, solver: str) -> str:
    """``solver`` for symmetric kernels (the NTK, SignGD); the asymmetric kernel: AsK-LS (``lssvm``), the one
    solver here for asymmetric kernels."""
    return "lssvm" if kernel is KernelType.ASYMMETRIC_SIGNGD else solver


def store_name(part: str, kernel: KernelType) -> str:
    """A kernel's name in a seed store: ``train``/``dev`` for the NTK (stores read as before), else
    ``train-<type>``."""
    return part if kernel is KernelType.NTK else f"{part}-{kernel.value}"


@dataclass
class SeedPlan:
    """One seed's examples, prompt blocks and kernel store, before any pass runs."""

    seed: int
    train: list  # grouped by class
    dev: list
    evaluation: list  # data order
    eval_order: np.ndarray  # the eval blocks' order (by prompt length)
    batches: dict[str, list[dict]]  # "train" | "dev" | "eval" -> prompt blocks
    folder: Path
    store: KernelStore
    block_size: int = 16
    calibration: list[dict] | None = None  # Wanda calibration prompts of wanda-* subsets (`wanda_calibration`)

    @property
    def eval_name(self) -> str:
        """The eval kernels' name in the store, ``eval-<hash of the eval prompts>``: another evaluation
        set (``--max-eval``) gets kernels of its own beside the same train and dev kernels."""
        return f"eval-{batches_hash(self.batches['eval'])[:12]}"


def plan_seed(model, tokenizer, model_name: str, task: str, names: list[str], k: int, seed: int, out: Path, *,
              max_eval: int | None = None, data_dir=None, block_size: int = 16, implementation: str = "fast",
              prompt: dict | None = None, calibration: list[dict] | None = None) -> SeedPlan:
    """Load one seed's split, block its prompts and open its store ``out/seed-<seed>``.

    The store's identity covers the train and dev prompts, not the evaluation set, so a rerun with
    another ``max_eval`` reuses the train and dev kernels.
    """
    prompt = prompt or {}
    spec = get_task(task)
    split = load_split(task, k, seed, data_dir)
    train = sorted(split.train, key=lambda e: e.label)  # grouped by class, for the heatmaps
    evaluation = split.eval
    if max_eval is not None and max_eval < len(evaluation):  # the same subset for every seed
        keep = np.sort(np.random.default_rng(0).permutation(len(evaluation))[:max_eval])
        evaluation = [evaluation[i] for i in keep]
    # The eval set is blocked in order of prompt length (kernels do not depend on blocking or padding,
    # but the passes' cost follows the padded length); its kernel columns are put back in data order.
    eval_order = length_order(tokenizer, spec, evaluation, prompt)
    batches = {part: _blocks(tokenizer, spec, examples, block_size, prompt)
               for part, examples in (("train", train), ("dev", split.dev),
                                      ("eval", [evaluation[i] for i in eval_order]))}
    folder = out / f"seed-{seed}"
    meta = {"model": model_name, "model_hash": model_hash(model), "task": spec.name, "seed": seed, "k": k,
            "subsets": names, "implementation": implementation, "block_size": block_size,
            "prompt": {k_: str(v) for k_, v in prompt.items()},
            "train_dev_inputs_hash": batches_hash([b for part in ("train", "dev") for b in batches[part]]),
            "versions": {"ntk_peft": ntk_peft.__version__, "torch": torch.__version__,
                         "transformers": __import__("transformers").__version__}}
    return SeedPlan(seed, train, split.dev, evaluation, eval_order, batches, folder, KernelStore(folder, meta),
                    block_size, calibration)


@dataclass
class SeedFit:
    """One seed after its train and dev kernels: fitted kernel models, ready to score the evaluation set."""

    plan: SeedPlan
    f0: dict[str, torch.Tensor]  # "train" | "dev" | "eval" -> [n, C] label logits (eval in data order)
    models: dict  # kernel name -> fitted estimator
    result: dict  # the per-seed results.json entry, without the eval accuracies
    offset: bool


def _f0(model, tokenizer, spec, plan: SeedPlan, prompt: dict, progress: bool, shared_f0: dict,
        evaluation: bool = True) -> dict:
    """Label logits at the model's point for train, dev and (with ``evaluation``) this plan's eval set, kept
    in ``f0.safetensors`` (``eval/<hash>`` per evaluation set, so another ``max_eval`` adds its own)."""
    from safetensors.torch import load_file

    path = plan.folder / "f0.safetensors"
    stored = load_file(str(path)) if path.is_file() else {}
    eval_key = f"eval/{plan.eval_name}"
    missing = [part for part in ("train", "dev") if part not in stored]
    for part in missing:
        examples = plan.train if part == "train" else plan.dev
        stored[part] = predict_logits(model, tokenizer, spec, examples, plan.block_size, progress=progress,
                                      desc=f"f0 {part} (seed {plan.seed})", **prompt)
    if not evaluation:
        if missing:
            save_tensors(path, stored)
        return {"train": stored["train"], "dev": stored["dev"]}
    if eval_key not in stored:
        if eval_key not in shared_f0:  # the same for every seed
            shared_f0[eval_key] = predict_logits(model, tokenizer, spec, plan.evaluation, plan.block_size,
                                                 desc="f0 eval",
                                                 progress=progress, **prompt)
        stored[eval_key] = shared_f0[eval_key]
        missing.append("eval")
    if missing:
        save_tensors(path, stored)
    return {"train": stored["train"], "dev": stored["dev"], "eval": stored[eval_key]}


def fit_seed(model, tokenizer, task: str, names: list[str], plan: SeedPlan, *, solver: str = "klr",
             lam: float | None = None, offset: bool = True, implementation: str = "fast", prompt: dict | None = None,
             progress: bool = True, shared_f0: dict | None = None, kernels_0: dict | None = None,
             kernels=(KernelType.NTK,), dev_predictions: str = "kernels", evaluation: bool = True) -> SeedFit:
    """f0, the train and dev kernels (cached in the seed's store) and one solver per kernel, λ picked on dev.

    ``dev_predictions``: ``kernels`` (dev×train kernel blocks) or ``projections`` (no dev kernels: the
    dev prompts projected on one direction per λ of the grid, `dev_projections`; NTK only).

    ``kernels``: kernel types; each subset's kernel of each type is fitted under `kernel_key` with
    `kernel_solver` on `kernel_output`. ``shared_f0`` carries the eval set's f0 from one seed to the
    next (it does not depend on the seed); ``kernels_0`` (name -> train NTK at another point, e.g.
    pretrained) adds ``kernel_distance``. Without ``evaluation`` the eval set's f0 is left out (a fit whose
    evaluation comes later, in another run). Under torch.distributed every rank computes its share of the
    kernel blocks, rank 0 computes f0 and fits, and the other ranks receive the fitted models (their
    ``f0`` and ``result`` stay empty).
    """
    prompt = prompt or {}
    spec = get_task(task)
    classes = len(spec.labels)
    shared_f0 = {} if shared_f0 is None else shared_f0
    timing = {}
    start = time.perf_counter()
    common = dict(subsets=names, implementation=implementation, store=plan.store, progress=progress,
                  calibration=plan.calibration)
    k_train, k_dev, flipped = {}, {}, {}
    dev_kernels = dev_predictions == "kernels"
    by_projection = not dev_kernels and lam is None  # a fixed λ needs no dev predictions
    for kernel in kernels:
        typed = dict(kernel=kernel, output=kernel_output(kernel, classes))
        train = kernel_blocks(model, plan.batches["train"], None, name=store_name("train", kernel), **common, **typed)
        dev = None if not dev_kernels else kernel_blocks(model, plan.batches["train"], plan.batches["dev"],
                                                       name=store_name("dev", kernel), **common, **typed)
        for n in names:
            key = kernel_key(kernel, n)
            k_train[key] = train[n]
            if dev is None:
                continue
            # K(dev, train): the transpose of K(train, dev), or an asymmetric kernel's stored flip
            k_dev[key] = (dev[n] if kernel.symmetric else dev[n + "~"]).permute(1, 0, 3, 2)
            if not kernel.symmetric:
                flipped[key] = dev[n][..., 0, 0].numpy()  # K(train_i, dev_m), as AsK-LS reads it
    timing["train_dev_kernels_wall_s"] = time.perf_counter() - start
    if not distributed.is_main():
        if by_projection:  # this rank's share of the dev projections, for the grid fits rank 0 sends
            dev_projections(model, plan, distributed.broadcast(None), calibration=plan.calibration, progress=progress)
        return SeedFit(plan, {}, distributed.broadcast(None), {}, offset)
    save_tensors(plan.folder / "train_kernels.safetensors",
                 {**{f"K/{n}": v for n, v in k_train.items()}, "labels": torch.tensor([e.label for e in plan.train])})
    start = time.perf_counter()
    f0 = _f0(model, tokenizer, spec, plan, prompt, progress, shared_f0, evaluation)
    timing["f0_s"] = time.perf_counter() - start
    start = time.perf_counter()
    y_train = np.array([e.label for e in plan.train])
    y_dev = np.array([e.label for e in plan.dev])
    f0_train, f0_dev = (f0["train"].numpy(), f0["dev"].numpy()) if offset else (None, None)
    models, lambdas, relative, effective = {}, {}, {}, {}
    grid = _select_by_projections(model, plan, names, k_train, solver, y_train, y_dev, f0_train, f0_dev,
                                  progress, timing) if by_projection else {}
    for kernel in kernels:
        chosen_solver = kernel_solver(kernel, solver)
        for n in names:
            key = kernel_key(kernel, n)
            kt = k_train[key].numpy()
            chosen = lam
            if key in grid:  # the model fitted at the λ its dev projections picked
                chosen, models[key] = grid[key]
            else:
                if chosen is None:
                    chosen, _ = select_lambda(chosen_solver, kt, y_train, k_dev[key].numpy(), y_dev, f0_train,
                                              f0_dev, flipped=flipped.get(key))
                models[key] = make_solver(chosen_solver, chosen).fit(kt, y_train, f0_train)
            lambdas[key] = float(chosen)
            relative[key] = float(chosen) / kernel_scale(kt)  # the grid factor: 10 = the most regularised
            if kernel.symmetric:  # eigenvalues of a symmetric kernel
                effective[key] = effective_rank(kt)
    timing["solver_s"] = time.perf_counter() - start
    distributed.broadcast(models)
    differences = {}
    for kernel in kernels:
        full = k_train[kernel_key(kernel, "full")].numpy()
        for n in names:
            if n != "full":
                kt = k_train[kernel_key(kernel, n)].numpy()
                differences[kernel_key(kernel, n)] = {"p1": relative_difference(kt, full, 1),
                                                      "p2": relative_difference(kt, full, 2)}
    result = {"seed": plan.seed, "accuracy": {}, "relative_difference": differences, "lambda": lambdas,
              "dev_predictions": "projections" if by_projection else "kernels" if lam is None else "none (fixed λ)",
              "lambda_over_scale": relative, "effective_rank": effective, "n_train": len(plan.train), "n_eval": len(plan.evaluation),
              "timing_s": timing}
    if kernels_0 is not None:
        result["kernel_distance"] = {n: kernel_distance(kernels_0[n].numpy(), k_train[n].numpy()) for n in names}
    return SeedFit(plan, f0, models, result, offset)


def _select_by_projections(model, plan: SeedPlan, names: list[str], k_train: dict, solver: str, y_train, y_dev,
                           f0_train, f0_dev, progress: bool, timing: dict) -> dict[str, tuple[float, object]]:
    """Subset -> (λ, model fitted at it): every grid λ fitted on the NTK, scored on dev by projections
    (`dev_projections`; rank 0 sends the weights to the other ranks, which compute their share)."""
    start = time.perf_counter()
    solver = kernel_solver(KernelType.NTK, solver)
    fits = {n: grid_fits(solver, k_train[kernel_key(KernelType.NTK, n)].numpy(), y_train, f0_train) for n in names}
    stacked = {}
    for n, (_, models) in fits.items():
        if any(m.direction_weights() is None for m in models):
            raise UserError(f"solver {solver} has no direction form here (multi-class SVM); use dev predictions "
                            f"by kernels")
        stacked[n] = stacked_weights(models)
    weights = distributed.broadcast({n: w for n, (w, _) in stacked.items()})
    picked = {}

    def pick(projections: dict[str, np.ndarray]) -> dict[str, int]:
        for n, (lambdas, models) in fits.items():
            if n not in picked:
                picked[n], _ = pick_from_projections(lambdas, models, stacked[n][1], projections[n], y_dev, f0_dev)
        return picked

    def columns(projections: dict[str, np.ndarray]) -> dict[str, slice]:
        """The chosen model's columns of each subset's directions (kept for the evaluation's projections)."""
        counts = {n: stacked[n][1] for n in fits}
        return {n: slice(sum(counts[n][:i]), sum(counts[n][: i + 1])) for n, i in pick(projections).items()}

    projections = dev_projections(model, plan, weights, calibration=plan.calibration, progress=progress,
                                  keep=columns)
    chosen = {kernel_key(KernelType.NTK, n): (fits[n][0][i], fits[n][1][i]) for n, i in pick(projections).items()}
    timing["dev_projections_wall_s"] = time.perf_counter() - start
    return chosen


def score_with_kernels(model, fit: SeedFit, names: list[str], *, implementation: str = "fast",
                       progress: bool = True) -> dict[str, float]:
    """Eval accuracy per kernel from the eval×train kernels (computed or read from the seed's store;
    saved in data order as ``eval_kernels.safetensors``). Under torch.distributed every rank computes
    its share of the blocks and only rank 0 scores (the others return ``{}``)."""
    plan = fit.plan
    start = time.perf_counter()
    restore = torch.from_numpy(np.argsort(plan.eval_order))
    k_eval = {n: v.permute(1, 0, 3, 2)[restore] for n, v in
              kernel_blocks(model, plan.batches["train"], plan.batches["eval"], names, implementation,
                            store=plan.store, name=plan.eval_name, progress=progress,
                            calibration=plan.calibration).items()}
    if not distributed.is_main():  # the other ranks computed their share of the blocks
        return {}
    save_tensors(plan.folder / "eval_kernels.safetensors",  # [n_eval, n_train, C, C], eval in data order
                  {**{f"K/{n}": v.contiguous() for n, v in k_eval.items()},
                   "labels": torch.tensor([e.label for e in plan.evaluation])})
    fit.result["timing_s"]["eval_kernels_wall_s"] = time.perf_counter() - start
    offsets = fit.f0["eval"].numpy() if fit.offset else None
    return {n: score_predictions(fit, n, fit.models[n].predict(k_eval[n].numpy(), offsets)) for n in names}


def default_out(task: str, model_name: str, k: int, checkpoint: str | Path | None = None) -> Path:
    """``runs/ntk-compare/<TASK>-<model>-k<k>`` (``...-ft-<run folder>`` at a fine-tuned checkpoint)."""
    name = f"{get_task(task).name}-{Path(model_name).name}-k{k}"
    if checkpoint is not None:
        path = Path(checkpoint).resolve()
        name += f"-ft-{path.parent.name if path.name in ('adapter', 'best') else path.name}"
    return Path("runs") / "ntk-compare" / name


def wanda_calibration(tokenizer, task, names: list[str], k: int, seed: int, data_dir=None, block_size: int = 16,
                      prompt: dict | None = None) -> list[dict] | None:
    """The calibration prompts of ``wanda-*`` row/column subsets: the training prompts of the first seed.

    One selection for every seed (a property of the model and task, like row 0), from prompts the
    kernel models train on anyway, never the evaluation set. None when no subset needs one.
    """
    if not any(parse_spec(n).selection.startswith("wanda") for n in names):
        return None
    split = load_split(task, k, seed, data_dir)
    return _blocks(tokenizer, get_task(task), split.train, block_size, prompt or {})


def run_compare(task: str, subsets: list[str], *, k: int = 16, seeds=None,
                model_name: str = "smollm2-135m", solver: str = "klr", max_eval: int | None = None,
                out: str | Path | None = None, data_dir=None, block_size: int = 16, lam: float | None = None,
                offset: bool = True, implementation: str = "fast", progress: bool = True,
                prompt: dict | None = None, adapter_checkpoint: str | Path | None = None,
                eval_kernels: bool = False, kernels=("ntk",), calibration_seed: int | None = None,
                dev_predictions: str = "kernels", evaluate: bool = True,
                capture_memory: int = DEFAULT_CACHE_BYTES) -> dict:
    """The whole study over seeds; writes ``results.json`` in ``out``.

    ``seeds`` defaults to 13, 21, 42, 87, 100, or at a checkpoint to the seed it was trained with.
    ``adapter_checkpoint``: take the kernels at this fine-tuned point (see `resolve_checkpoint`) and
    report each kernel's distance from the pretrained one on the train split.
    ``eval_kernels``: also compute (and save) the eval×train kernels and predict from them. By default
    the eval set is scored by projections onto each fitted model's parameter directions
    (`score_with_projections`), the same predictions without the n_train·C kernel columns per example
    (kernels are still used where a solver has no direction form: the multi-class SVM).
    ``kernels``: kernel types (``ntk``, ``signgd``, ``asymmetric_signgd``); results are keyed by
    `kernel_key` (``row1`` for the NTK, ``signgd:row1``), solved by `kernel_solver`.
    ``calibration_seed``: whose training prompts calibrate ``wanda-*`` subsets (default the first of
    ``seeds``); a run split into one call per seed passes the same seed to every call.
    ``dev_predictions``: how λ selection predicts the dev split: from dev×train kernels (``kernels``) or
    from projections onto one direction per grid λ (``projections``, the NTK only: no dev kernels, the
    cheaper way when the splits or the classes are many; `ntk_peft.experiments.dev_projections`).
    ``capture_memory``: bytes of recorded blocks held beyond the two a block pair uses (`run_kernel_jobs`'
    ``cache_bytes``): more holds wider panels of train blocks, each recorded fewer times; the kernels are
    the same.
    ``evaluate=False``: stop after the fits (kernels, λ and, by projections, the chosen directions are kept
    in the seed stores) and write nothing; returns ``{"task", "model", "k", "seeds", "fitted": per-seed
    entries without accuracies}``. A later call over the same ``out`` reads them back and scores the
    evaluation set, one pass for all its seeds: fitting seed by seed costs no extra evaluation pass.
    """
    def checked_inputs():  # every check before the long work; under torchrun every rank stops at a failing one
        seeds_ = seeds
        spec = get_task(task)
        for text in subsets:
            parse_spec(text)  # bad specs fail before any work
        kernel_types = list(dict.fromkeys(KernelType.parse(t) for t in kernels))
        if not kernel_types:
            raise UserError("no kernel types given; valid: ntk, signgd, asymmetric_signgd")
        if KernelType.ASYMMETRIC_SIGNGD in kernel_types and len(spec.labels) != 2:
            raise UserError(f"the asymmetric SignGD kernel's solver (AsK-LS) is for two classes; {spec.name} has "
                            f"{len(spec.labels)}")
        if dev_predictions not in DEV_PREDICTIONS:
            raise UserError(f"unknown dev predictions {dev_predictions!r}; valid: {', '.join(DEV_PREDICTIONS)}")
        if dev_predictions == "projections" and kernel_types != [KernelType.NTK]:
            raise UserError("dev predictions by projections are for the NTK only; sign kernels pick λ from dev "
                            "kernels (use dev predictions by kernels)")
        if dev_predictions == "projections" and solver == "svm" and len(spec.labels) > 2:
            raise UserError(f"the multi-class SVM has no direction form, so it cannot pick λ from projections on "
                            f"{spec.name} ({len(spec.labels)} classes); use dev predictions by kernels")
        if eval_kernels and kernel_types != [KernelType.NTK]:
            raise UserError("--eval-kernels computes eval kernels of the NTK only; sign kernels are scored by "
                            "projections (drop --eval-kernels)")
        checkpoint = resolve_checkpoint(adapter_checkpoint, model_name) if adapter_checkpoint is not None else None
        if seeds_ is None:
            seeds_ = [checkpoint.seed] if checkpoint is not None and checkpoint.seed is not None else list(DEFAULT_SEEDS)
        folder = check_output_dir(out or default_out(spec.name, model_name, k, adapter_checkpoint))  # before any work
        results_path = folder / "results.json"
        described = checkpoint.describe() if checkpoint is not None else None
        if results_path.is_file():
            previous = json.loads(results_path.read_text())
            if (previous.get("task") != spec.name or previous.get("model") != model_name or previous.get("k") != k
                    or (previous.get("adapter_checkpoint") or {}).get("path") != (described or {}).get("path")):
                raise UserError(f"{folder} holds results of another run (task {previous.get('task')}, model "
                                f"{previous.get('model')}, k {previous.get('k')}, checkpoint "
                                f"{(previous.get('adapter_checkpoint') or {}).get('path')}); choose another --out")
        for seed in seeds_:  # check every split before the long work starts
            load_split(spec, k, seed, data_dir)
        model, tokenizer = ntk_peft.load_model(model_name)
        model = model.to(distributed.device())  # this rank's GPU under nccl
        return spec, kernel_types, checkpoint, seeds_, folder, results_path, described, model, tokenizer

    spec, kernel_types, checkpoint, seeds, out, results_path, described, model, tokenizer = distributed.agreed(
        checked_inputs)
    started = time.perf_counter()
    kernel_names = ["full", *[s for s in subsets if s != "full"]]
    calibration_seed = seeds[0] if calibration_seed is None else calibration_seed
    calibration = wanda_calibration(tokenizer, spec, kernel_names, k, calibration_seed, data_dir, block_size, prompt)
    plan_options = dict(max_eval=max_eval, data_dir=data_dir, block_size=block_size, implementation=implementation,
                        prompt=prompt, calibration=calibration)
    kernels_0: dict[int, dict] = {}
    if checkpoint is not None:  # the pretrained train kernels first (their own stores), then fold the adapter in
        for seed in seeds:
            plan = plan_seed(model, tokenizer, model_name, spec.name, kernel_names, k, seed, out / "pretrained",
                             **plan_options)
            kernels_0[seed] = kernel_blocks(model, plan.batches["train"], None, kernel_names, implementation,
                                            store=plan.store, name="train", progress=progress,
                                            calibration=plan.calibration, cache_bytes=capture_memory)
        model = fold_adapter(model, checkpoint.adapter_folder).to(distributed.device())
    plans = [plan_seed(model, tokenizer, model_name, spec.name, kernel_names, k, seed, out, **plan_options)
             for seed in seeds]
    # Every seed's train and dev blocks in one scheduler pass: enough blocks to share over many ranks.
    dev_kernels = dev_predictions == "kernels"
    kernels_started = time.perf_counter()
    run_kernel_jobs([KernelJob(model, p.batches["train"], other, kernel_names, implementation, store=p.store,
                               name=store_name(name, kernel), kernel=kernel,
                               output=kernel_output(kernel, len(spec.labels)), calibration=calibration)
                     for kernel in kernel_types for p in plans
                     for name, other in (("train", None), ("dev", p.batches["dev"]))
                     if other is None or dev_kernels], progress=progress,
                    desc="kernel train and dev blocks", cache_bytes=capture_memory)
    timing = {"train_dev_blocks_wall": time.perf_counter() - kernels_started}
    shared_f0: dict = {}
    fits = [fit_seed(model, tokenizer, spec.name, kernel_names, plan, solver=solver, lam=lam, offset=offset,
                     implementation=implementation, prompt=prompt, progress=progress, shared_f0=shared_f0,
                     kernels_0=kernels_0.get(plan.seed), kernels=kernel_types, dev_predictions=dev_predictions,
                     evaluation=evaluate)
            for plan in plans]
    if not evaluate:
        fitted = {"task": spec.name, "model": model_name, "k": k, "seeds": list(seeds),
                  "fitted": [{**f.result, "timing_s": {**f.result["timing_s"], "kernels_s": f.plan.store.compute_seconds()}}
                             for f in fits]} if distributed.is_main() else None
        return distributed.broadcast(fitted)
    keys = [kernel_key(kernel, n) for kernel in kernel_types for n in kernel_names]
    by_projection = not eval_kernels and all(f.models[n].direction_weights() is not None
                                             for f in fits for n in keys)
    if by_projection:  # K_eval·W as ⟨∂f(x)/∂θ_S, v⟩: one projection per seed and kernel, no eval kernel
        accuracies = [{} for _ in fits]
        timing["projections_recorded"] = 0.0
        for kernel in kernel_types:  # one pass per type: a type's directions of every seed are held at once
            folder = out / "eval-projections" / ("" if kernel is KernelType.NTK else kernel.value)
            typed, seconds = score_with_projections(
                model, fits, kernel_names, folder, model_name=model_name, implementation=implementation,
                progress=progress, kernel=kernel, output=kernel_output(kernel, len(spec.labels)),
                keys={n: kernel_key(kernel, n) for n in kernel_names}, calibration=calibration)
            timing["projections_recorded"] += seconds
            for accuracy, part in zip(accuracies, typed):
                accuracy.update(part)
    else:
        if implementation == "fast" and len(plans) > 1:  # every seed scores the same eval blocks: record each once
            shared_cross_blocks(model, [CrossJob(p.store, p.batches["train"], p.eval_name) for p in plans],
                                plans[0].batches["eval"], kernel_names, progress=progress, calibration=calibration)
        accuracies = [score_with_kernels(model, f, kernel_names, implementation=implementation, progress=progress)
                      for f in fits]
    if not distributed.is_main():  # rank 0 writes results.json; every rank returns it
        return distributed.broadcast(None)
    per_seed = []
    for fit, accuracy in zip(fits, accuracies):
        fit.result["accuracy"] = {**accuracy, "zeroshot": score_predictions(fit, "zeroshot",
                                                                            fit.f0["eval"].argmax(1).numpy())}
        fit.result["timing_s"]["kernels_s"] = fit.plan.store.compute_seconds()
        fit.result["timing_s"]["train_dev_kernels_by_type_s"] = {
            t.value: sum(fit.plan.store.compute_seconds(store_name(part, t)) for part in ("train", "dev"))
            for t in kernel_types}
        per_seed.append(fit.result)
    by_type = {t.value: sum(r["timing_s"]["train_dev_kernels_by_type_s"][t.value] for r in per_seed)
               for t in kernel_types}
    timing["train_dev_kernels_by_type"] = by_type
    names = [*keys, "zeroshot"]
    results = {"task": spec.name, "model": model_name, "k": k, "seeds": list(seeds), "solver": solver,
               "kernel_types": {t.value: {"solver": kernel_solver(t, solver),
                                          "output": kernel_output(t, len(spec.labels))} for t in kernel_types},
               "subsets": [n for n in names if n != "zeroshot"], "kernel_subsets": kernel_names, "offset_f0": offset, "max_eval": max_eval,
               "adapter_checkpoint": described, "eval_predictions": "projections" if by_projection else "kernels",
               "dev_predictions": dev_predictions,
               **({"wanda_calibration_seed": calibration_seed} if calibration is not None else {}),
               "per_seed": per_seed, "summary": summarize_seeds(per_seed),
               "timing_s": {"total": time.perf_counter() - started,
                            "kernels_recorded": sum(r["timing_s"]["kernels_s"] for r in per_seed), **timing}}
    out.mkdir(parents=True, exist_ok=True)
    write_json(results_path, results)
    return distributed.broadcast(results)


def summarize_seeds(per_seed: list[dict]) -> dict:
    """Mean and std (ddof 0) over seeds of each accuracy, relative difference and, at a checkpoint,
    kernel distance in ``per_seed`` (the entries of a results file's ``per_seed``)."""
    first = per_seed[0]
    summary = {
        "accuracy": {n: _summary([r["accuracy"][n] for r in per_seed]) for n in first["accuracy"]},
        "relative_difference": {s: {p: _summary([r["relative_difference"][s][p] for r in per_seed])
                                    for p in ("p1", "p2")} for s in first["relative_difference"]},
    }
    if "kernel_distance" in first:
        summary["kernel_distance"] = {n: _summary([r["kernel_distance"][n] for r in per_seed])
                                      for n in first["kernel_distance"]}
    return summary


def _sum_timings(timings: list[dict]) -> dict:
    """Seconds added up key by key (nested dicts, such as the seconds per kernel type, too)."""
    total: dict = {}
    for timing in timings:
        for key, value in timing.items():
            total[key] = _sum_timings([total.get(key, {}), value]) if isinstance(value, dict) \
                else total.get(key, 0.0) + value
    return total


def combine_seed_results(parts: list[dict], order: list[int] | None = None) -> dict:
    """One results file from `run_compare` results of the same run over disjoint seeds (e.g. one call per
    seed): the per-seed entries in the order of the parts (or of the seeds ``order``, which must be exactly
    the parts' seeds), the summary over all of them, the seconds added up. Everything else must agree, or
    `UserError`."""
    if not parts:
        raise UserError("no per-seed results to combine")
    varying = ("seeds", "per_seed", "summary", "timing_s", "dev_predictions")  # λ's dev predictions may change
    shared = {key: value for key, value in parts[0].items() if key not in varying}
    for part in parts[1:]:
        other = {key: value for key, value in part.items() if key not in varying}
        if other != shared:
            differ = sorted(key for key in {*shared, *other} if shared.get(key) != other.get(key))
            raise UserError(f"per-seed results of different runs cannot be combined (they differ in {', '.join(differ)})")
    seeds = [seed for part in parts for seed in part["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"per-seed results repeat a seed: {seeds}")
    # results written before dev predictions were recorded all picked λ from dev kernels
    per_seed = [{**entry, "dev_predictions": entry.get("dev_predictions", part.get("dev_predictions", "kernels"))}
                for part in parts for entry in part["per_seed"]]
    if order is not None:
        if sorted(order) != sorted(seeds):
            raise UserError(f"per-seed results of seeds {seeds} cannot be put in the order {list(order)}")
        per_seed = sorted(per_seed, key=lambda entry: list(order).index(entry["seed"]))
        seeds = list(order)
    ways = list(dict.fromkeys(part.get("dev_predictions", "kernels") for part in parts))
    results = {key: value for key, value in parts[0].items() if key not in ("summary", "timing_s")}
    results["dev_predictions"] = ways[0] if len(ways) == 1 else "per seed"
    results.update(seeds=seeds, per_seed=per_seed, summary=summarize_seeds(per_seed),
                   timing_s=_sum_timings([part["timing_s"] for part in parts]))
    return results


def format_table(results: dict) -> str:
    """RoCoFT tables 5/6 shape: accuracy mean (std) and relative differences (and, at a fine-tuned
    checkpoint, each kernel's distance from the pretrained one)."""
    acc = results["summary"]["accuracy"]
    moved = results["summary"].get("kernel_distance")
    checkpoint = results.get("adapter_checkpoint")
    header = f"{results['task']}  model {results['model']}  k={results['k']}  seeds {results['seeds']}  " \
             f"solver {results['solver']}"
    if checkpoint:
        header += f"\nat the fine-tuned point {checkpoint['path']} ({checkpoint['spec']})"
    width = max(14, *(len(f"K_{name}") + 2 for name in acc))
    columns = f"{'kernel':<{width}}{'accuracy':>18}{'rel. diff p=1':>20}{'rel. diff p=2':>20}"
    lines = [header, columns + (f"{'|K0-Kt|/|K0|':>20}" if moved else "")]
    for name, stats in acc.items():
        diff = results["summary"]["relative_difference"].get(name)
        cells = [f"{stats['mean']:.3f} ({stats['std']:.3f})"]
        cells += [f"{diff[p]['mean']:.3f} ({diff[p]['std']:.3f})" if diff else "-" for p in ("p1", "p2")]
        if moved:
            cells.append(f"{moved[name]['mean']:.3f} ({moved[name]['std']:.3f})" if name in moved else "-")
        zeroshot = "fine-tuned" if checkpoint else "zero-shot"
        label = "K_full" if name == "full" else (zeroshot if name == "zeroshot" else f"K_{name}")
        lines.append(f"{label:<{width}}" + "".join(f"{c:>{18 if i == 0 else 20}}" for i, c in enumerate(cells)))
    return "\n".join(lines)
