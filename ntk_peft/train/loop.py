"""Prompt-based fine-tuning with any adapter: cross-entropy over the label-word logits.

`train(config)` runs AdamW with a linear/cosine/constant schedule and warmup,
gradient clipping, dev evaluation every N steps (optional early stop on dev
accuracy), ΔW tracking (`DeltaWTracker`), and writes into ``config.out``:

- ``config.json``: the configuration;
- ``adapter/``: the adapter at the end (``adapter.safetensors`` + ``adapter.json``
  with spec and targets); ``best/`` the one with the best dev accuracy;
- ``metrics.json``: loss per step, dev accuracy per evaluation, final eval accuracy,
  ``step_seconds`` (forward, backward and optimizer step only; summed over resumed
  parts), ``peak_rss_mb`` (the process's peak resident memory at the end of training) and
  ``peak_rss_before_training_mb`` (the same once the model and adapter were loaded);
- ``delta_w.csv`` (tidy: step, layer, metric, value) and ``delta_w_summary.json``;
- ``checkpoint.pt`` every evaluation: adapter, optimizer, scheduler and step,
  so a rerun with the same configuration resumes where it stopped.

Deterministic given the seed: the adapter's initialisation and the order of
examples (a permutation per epoch from ``(seed, epoch)``) do not depend on
where a run was interrupted.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ntk_peft.errors import UserError
from ntk_peft.io import atomic_write, check_output_dir, torch_save, write_json
from ntk_peft.train.tracking import DeltaWTracker

SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class TrainConfig:
    """Everything that defines a fine-tuning run (written to ``config.json``)."""

    task: str
    adapter: str
    out: str
    k: int = 16
    seed: int = 42
    model: str = "smollm2-135m"
    steps: int | None = None
    epochs: float | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "linear"
    warmup: float = 0.0
    batch_size: int = 8
    max_grad_norm: float | None = 1.0
    eval_every: int = 50
    early_stop: int | None = None
    targets: str | None = None
    track_every: int | None = 10
    track_layers: str | None = None
    max_eval: int | None = None
    data_dir: str | None = None

    def validate(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise UserError("give --steps or --epochs, not both")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup < 1 and not (self.warmup >= 1 and float(self.warmup).is_integer()):
            raise UserError("--warmup is a fraction of the steps in [0, 1) or a whole number of steps")
        if self.lr <= 0 or self.batch_size <= 0 or self.eval_every <= 0:
            raise UserError("--lr, --batch-size and --eval-every must be positive")


def _lr_lambda(schedule: str, warmup_steps: int, total: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return factor


def _order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _write_json(path: Path, value) -> None:
    write_json(path, value)


def _predicted(model, tokenizer, spec, examples, batch_size: int, desc: str | None = None) -> torch.Tensor:
    """``[n]`` argmax of the model's label logits; a tqdm bar labelled ``desc`` when given (the final evaluation).

    Batches go by prompt length (`predict_logits`): on the study's evaluation sets unsorted batches of
    16 carried 1.35-2.3x as many tokens as the prompts themselves.
    """
    from ntk_peft.solvers import predict_logits

    was_training = model.training
    model.eval()
    logits = predict_logits(model, tokenizer, spec, examples, batch_size, progress=desc is not None, desc=desc or "")
    model.train(was_training)
    return logits.argmax(1)


def _accuracy(model, tokenizer, spec, examples, batch_size: int) -> float:
    """Accuracy of the model's label logits on ``examples`` (0 when there are none)."""
    if not examples:
        return 0.0
    labels = torch.tensor([e.label for e in examples])
    return int((_predicted(model, tokenizer, spec, examples, batch_size) == labels).sum()) / len(examples)


def _evaluate(model, tokenizer, spec, examples, batch_size: int, desc: str | None) -> dict:
    """The final evaluation: accuracy, and the ``[C, C]`` counts (rows the true class, columns the predicted)."""
    from sklearn.metrics import confusion_matrix

    if not examples:
        return {"eval_accuracy": 0.0, "eval_confusion": []}
    labels = [e.label for e in examples]
    predicted = _predicted(model, tokenizer, spec, examples, batch_size, desc).numpy()
    counts = confusion_matrix(labels, predicted, labels=list(range(len(spec.labels))))
    return {"eval_accuracy": int(counts.trace()) / len(examples), "eval_confusion": counts.tolist()}


def train(config: TrainConfig, *, model=None, tokenizer=None, progress: bool = True) -> dict:
    """Fine-tune ``config.adapter`` on the k-shot split; returns the metrics dict (also in metrics.json)."""
    import numpy as np

    from ntk_peft.adapters import apply_adapter, parse_spec
    from ntk_peft.models import label_logits, load_model
    from ntk_peft.tasks import get_task, load_split, make_batch, to_device

    config.validate()
    spec = get_task(config.task)
    adapter_spec = parse_spec(config.adapter)
    split = load_split(spec, config.k, config.seed, config.data_dir)
    out = check_output_dir(config.out)
    config_path = out / "config.json"
    if config_path.is_file():
        previous = json.loads(config_path.read_text())
        if previous != asdict(config):
            raise UserError(f"{out} holds a run with another configuration; choose another --out")

    if model is None:
        model, tokenizer = load_model(config.model, seed=config.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    handle = apply_adapter(model, adapter_spec, config.targets, seed=config.seed)
    # Everything is checked (task, split, model, adapter, targets): only now is anything written.
    out.mkdir(parents=True, exist_ok=True)
    _write_json(config_path, asdict(config))
    params = handle.parameters()
    for p in params:
        p.requires_grad_(True)

    train_examples = split.train
    steps_per_epoch = math.ceil(len(train_examples) / config.batch_size)
    total = config.steps if config.steps is not None else math.ceil((config.epochs or 10) * steps_per_epoch)
    warmup_steps = int(config.warmup if config.warmup >= 1 else round(config.warmup * total))
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.schedule, warmup_steps, total))
    evaluation = split.eval
    if config.max_eval is not None and config.max_eval < len(evaluation):
        keep = np.sort(np.random.default_rng(0).permutation(len(evaluation))[: config.max_eval])
        evaluation = [evaluation[i] for i in keep]

    metrics = {"loss": [], "dev_accuracy": [], "best_dev": None, "best_step": None, "steps": total,
               "num_trainable": handle.num_trainable()}
    step, bad_evals = 0, 0
    checkpoint_path = out / "checkpoint.pt"
    tracker = DeltaWTracker(handle, config.track_every, out / "delta_w.csv", config.track_layers)
    if checkpoint_path.is_file():  # resume: everything measured so far is on disk
        state = torch.load(checkpoint_path, weights_only=False)
        with torch.no_grad():
            for (name, p) in handle.named_parameters():
                p.copy_(state["adapter"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, metrics, bad_evals = state["step"], state["metrics"], state["bad_evals"]
        tracker.rows, tracker.last_sigma = state["tracker_rows"], state["tracker_sigma"]
        torch.set_rng_state(state["rng"])  # dropout draws continue as if never interrupted
        _truncate_csv(out / "delta_w.csv", step)
    else:
        torch.manual_seed(config.seed)  # dropout, where the model has any
        if (out / "delta_w.csv").is_file():  # a run that stopped before its first checkpoint
            (out / "delta_w.csv").unlink()

    def save_checkpoint():
        state = {"adapter": {n: p.detach().clone() for n, p in handle.named_parameters()},
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                 "metrics": metrics, "bad_evals": bad_evals, "tracker_rows": tracker.rows,
                 "tracker_sigma": tracker.last_sigma, "rng": torch.get_rng_state()}
        torch_save(checkpoint_path, state)

    started = time.perf_counter()
    metrics["peak_rss_before_training_mb"] = _peak_rss_mb()  # model, adapter and data loaded
    if step == 0 and tracker.due(0):
        tracker.measure(0)
    model.train()
    bar = tqdm(total=total, initial=step, desc=f"train {adapter_spec} {spec.name}", unit="step",
               disable=not progress)
    stopped_early = config.early_stop is not None and bad_evals >= config.early_stop  # a resumed, stopped run
    while step < total and not stopped_early:
        epoch, position = divmod(step, steps_per_epoch)
        order = _order(len(train_examples), config.seed, epoch)
        chunk = [train_examples[i] for i in order[position * config.batch_size:(position + 1) * config.batch_size]]
        batch = to_device(make_batch(tokenizer, spec, chunk), model)  # the model's device: a GPU rank's own
        step_started = time.perf_counter()
        logits = label_logits(model, batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        if not torch.isfinite(loss):
            raise UserError(f"the loss became {loss.item()} at step {step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        metrics["step_seconds"] = metrics.get("step_seconds", 0.0) + time.perf_counter() - step_started
        step += 1
        metrics["loss"].append([step, loss.item()])
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if tracker.due(step, final=step == total):
            tracker.measure(step)
        if step % config.eval_every == 0 or step == total:
            dev = _accuracy(model, tokenizer, spec, split.dev, config.batch_size)
            metrics["dev_accuracy"].append([step, dev])
            bar.set_postfix(loss=f"{loss.item():.3f}", dev=f"{dev:.3f}")
            if metrics["best_dev"] is None or dev > metrics["best_dev"]:
                metrics["best_dev"], metrics["best_step"], bad_evals = dev, step, 0
                handle.save(out / "best")
            else:
                bad_evals += 1
                stopped_early = config.early_stop is not None and bad_evals >= config.early_stop
            save_checkpoint()
    bar.close()
    metrics["peak_rss_mb"] = max(metrics.get("peak_rss_mb", 0.0), _peak_rss_mb())  # model, data and training
    if not tracker.rows or tracker.rows[-1]["step"] != step:  # the end is always measured
        tracker.measure(step)
    handle.save(out / "adapter")
    metrics["final_step"] = step
    metrics["stopped_early"] = stopped_early
    metrics.update(_evaluate(model, tokenizer, spec, evaluation, 2 * config.batch_size,
                             desc=f"evaluate {spec.name}" if progress else None))
    metrics["n_eval"] = len(evaluation)
    metrics["train_seconds"] = metrics.get("train_seconds", 0.0) + time.perf_counter() - started
    _write_json(out / "metrics.json", metrics)
    _write_json(out / "delta_w_summary.json", tracker.summary())
    return metrics


def _peak_rss_mb() -> float:
    """The process's peak resident memory so far (MiB); ru_maxrss is KiB on Linux, bytes on macOS."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _truncate_csv(path: Path, step: int) -> None:
    """Drop rows measured after ``step`` (written after the last checkpoint, measured again on resume)."""
    if not path.is_file():
        return
    import csv

    with path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= step]
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=("step", "layer", "metric", "value"))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)
