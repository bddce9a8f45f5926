"""The RoCoFT kernel study (its tables 5 and 6) as one resumable queue: ``ntk-peft study rocoft``.

Jobs, in order: for each k, for each task, one ``ntk-compare`` run (kernels full, row1, col1, lora1 and,
at k = 16, the row/column-selection ablation: random and Wanda-max rows and columns) and one fine-tuning run per
adapter (``full``: the table's "Full FT" row; ``lora1``, ``row1``) and seed. A finished job leaves a
small, committable record under ``results/<study>/<TASK>-k<k>/``:

- ``results.json``: the ntk-compare results (accuracy and relative kernel differences per seed);
- ``figure_data.json``: the first seed's train kernels as shown in the heatmaps (k = 16) and every
  kernel's spectrum, so the figures redraw without any kernel;
- ``fine_tuning.json``: adapter -> seed -> eval accuracy, best dev accuracy, steps, seconds.

A full fine-tuning run's model-sized files are deleted once it is finished (`drop_model_weights`).

With ``kernel_jobs="seed"`` (``--kernel-jobs seed``) a task's kernels are one job per seed, each recorded
as it finishes in ``kernel-seeds/seed-<seed>.json`` and combined into ``results.json`` (and
``figure_data.json``) once every seed is there: a machine that is lost between jobs (a preemptible or
time-limited one) loses one seed's work, not the task's. The price is one capture pass over the
evaluation set per seed instead of one for all seeds: by ``benchmarks/bench_rocoft_study.py``, 1.1-1.8x
a task's kernel time at k = 16 and 1.0-1.3x at k = 64.

``kernel_jobs="split"`` (``--kernel-jobs split``) keeps the seed-by-seed fitting without that price: one
fitting job per seed (its kernels, λ from the dev projections, the chosen model's directions kept in the
seed's store; ``kernel-seeds/fitted-<seed>.json`` marks it), then one evaluation job per task that reads
the fits back (`run_compare` with ``evaluate=False``, then the same call over every seed left) and
projects the evaluation set once for all of them. Seeds already recorded by per-seed jobs (a task begun
with ``--kernel-jobs seed``) are combined with the evaluation job's record, not run again. If the run
folders are lost between the fitting jobs and the evaluation job, the evaluation job recomputes what it
misses: slower, never wrong.

λ is picked on each seed's dev split from projections onto one direction per grid λ
(``dev_predictions="projections"``, `ntk_peft.experiments.dev_projections`): the dev×train kernels'
predictions without those kernels, whose cost grows with the product of the splits' tokens and the square
of the classes (by ``benchmarks/bench_dev_scoring.py``). The study's first tasks (SST-2 to MPQA at k = 16)
were run with the dev kernels (``"kernels"``); a seed's record says ``dev_predictions`` where it used
projections.

Kernel blocks and fine-tuning checkpoints stay in ``runs/`` (never committed): an interrupted job
resumes from them, and a finished job is found in the results folder and skipped. Under torchrun the
kernel jobs share their blocks over the ranks (`run_compare`) and fine-tuning runs are dealt out to
the ranks, one run per rank at a time.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ntk_peft.errors import UserError
from ntk_peft.experiments.compare import DEFAULT_SEEDS, run_compare
from ntk_peft.experiments.dev_projections import DEV_PREDICTIONS
from ntk_peft.experiments.rocoft_paper import PAIR_TASKS, SINGLE_TASKS
from ntk_peft.experiments.study_clock import StudyClock, format_minutes
from ntk_peft.io import write_json
from ntk_peft.ntk import distributed
from ntk_peft.ntk.blocked import DEFAULT_CACHE_BYTES

TABLE_SUBSETS = ("full", "row1", "col1", "lora1")
ABLATION_SUBSETS = ("row1:random", "row1:wanda-max", "col1:random", "col1:wanda-max")
# AdamW learning rate per fine-tuned adapter, 10 epochs at batch size 8 (see results/rocoft-smollm2/README.md).
FINE_TUNING_LR = {"full": 1e-5, "lora1": 1e-3, "row1": 1e-3}
DEFAULT_MAX_EVAL = 1000
KERNEL_JOBS = ("task", "seed", "split")
HEATMAP_K = 16  # figure data holds train kernels at this k only (k = 64 kernels are 16x larger)
ABLATION_K = 16  # the row/column-selection ablation runs at this k only


@dataclass(frozen=True)
class StudyJob:
    """One unit of the queue: the kernels of a task at k, or one fine-tuning run."""

    kind: str  # "kernels" | "fit" | "evaluate" (the two halves of a kernel job, ``kernel_jobs="split"``) | "train"
    task: str  # the task's LM-BFF name, e.g. SST-2
    k: int
    adapter: str | None = None
    seed: int | None = None  # a fine-tuning or fitting run's seed; a kernel job's with per-seed jobs (else all seeds)

    @property
    def folder(self) -> str:
        """``<TASK>-k<k>``: the job's results folder name."""
        return f"{self.task}-k{self.k}"

    def describe(self) -> str:
        if self.kind == "kernels":
            return f"kernels {self.task} k={self.k}" + ("" if self.seed is None else f" seed {self.seed}")
        if self.kind == "fit":
            return f"fit kernels {self.task} k={self.k} seed {self.seed}"
        if self.kind == "evaluate":
            return f"evaluate kernels {self.task} k={self.k}"
        return f"fine-tune {self.adapter} {self.task} k={self.k} seed {self.seed}"


@dataclass
class StudyConfig:
    """What ``ntk-peft study rocoft`` runs; every field has its command-line option."""

    tasks: list[str] = field(default_factory=lambda: [*SINGLE_TASKS, *PAIR_TASKS])
    ks: list[int] = field(default_factory=lambda: [16, 64])
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    fine_tune: list[str] = field(default_factory=lambda: list(FINE_TUNING_LR))
    ablation: bool = True
    model: str = "smollm2-135m"
    max_eval: int | None = DEFAULT_MAX_EVAL
    epochs: int = 10
    runs: Path = Path("runs/rocoft")
    results: Path = Path("results/rocoft-smollm2")
    data_dir: str | None = None
    block_size: int = 16
    kernel_jobs: str = "task"  # "task": one kernel job per task and k (all seeds); "seed": one per seed;
    # "split": one fitting job per seed, then one evaluation job for the task
    dev_predictions: str = "projections"  # λ selection's dev predictions (`run_compare`): "projections" or "kernels"
    capture_memory: int = DEFAULT_CACHE_BYTES  # bytes of recorded blocks held beyond a pair's two (same kernels)

    def __post_init__(self):
        if self.kernel_jobs not in KERNEL_JOBS:
            raise UserError(f"kernel jobs are per {' or per '.join(KERNEL_JOBS)}, got {self.kernel_jobs!r}")
        if self.dev_predictions not in DEV_PREDICTIONS:
            raise UserError(f"dev predictions are by {' or by '.join(DEV_PREDICTIONS)}, got {self.dev_predictions!r}")

    def subsets(self, k: int) -> list[str]:
        """The kernel subsets at ``k``: the table's, and at `ABLATION_K` the selection ablation's."""
        return [*TABLE_SUBSETS, *(ABLATION_SUBSETS if self.ablation and k == ABLATION_K else ())]


def parse_tasks(text: str) -> list[str]:
    """``all``, ``single``, ``pair`` or comma-separated task names (any spelling `get_task` takes)."""
    from ntk_peft.tasks import get_task

    groups = {"all": [*SINGLE_TASKS, *PAIR_TASKS], "single": list(SINGLE_TASKS), "pair": list(PAIR_TASKS)}
    names: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        for name in groups.get(part.lower(), [part]):
            canonical = get_task(name).name
            if canonical not in (*SINGLE_TASKS, *PAIR_TASKS):
                raise UserError(f"{canonical} is not a task of RoCoFT's tables 5/6; tasks: "
                                f"{', '.join((*SINGLE_TASKS, *PAIR_TASKS))}, or all, single, pair")
            if canonical not in names:
                names.append(canonical)
    if not names:
        raise UserError("no tasks given; e.g. --tasks all, --tasks single or --tasks sst2,rte")
    return names


def parse_fine_tune(text: str) -> list[str]:
    """Comma-separated adapters out of `FINE_TUNING_LR`, or ``none``."""
    if text.strip().lower() == "none":
        return []
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in FINE_TUNING_LR]
    if unknown or not names:
        raise UserError(f"--fine-tune takes {', '.join(FINE_TUNING_LR)} (comma-separated) or none; got {text!r}")
    return list(dict.fromkeys(names))


def study_jobs(config: StudyConfig) -> list[StudyJob]:
    """Every job in queue order: k by k (16 first), task by task; a task's kernels, then its fine-tuning."""
    jobs = []
    for k in config.ks:
        for task in config.tasks:
            if config.kernel_jobs == "seed":
                jobs += [StudyJob("kernels", task, k, seed=seed) for seed in config.seeds]
            elif config.kernel_jobs == "split":
                jobs += [StudyJob("fit", task, k, seed=seed) for seed in config.seeds]
                jobs.append(StudyJob("evaluate", task, k))
            else:
                jobs.append(StudyJob("kernels", task, k))
            jobs += [StudyJob("train", task, k, adapter, seed) for adapter in config.fine_tune for seed in config.seeds]
    return jobs


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _same_kernels(record: dict, config: StudyConfig, k: int) -> bool:
    """Whether a record (results, or a fitting job's mark) is of the study's model, subsets at ``k`` and
    evaluation subset."""
    return (record.get("model") == config.model and record.get("kernel_subsets") == config.subsets(k)
            and record.get("max_eval") == config.max_eval)


def _kernels_match(results: dict | None, config: StudyConfig, k: int, seeds: list[int]) -> bool:
    """Whether ``results`` are the kernels the study asks for at ``k`` over ``seeds``."""
    return results is not None and results.get("seeds") == seeds and _same_kernels(results, config, k)


def seed_record_path(config: StudyConfig, task: str, k: int, seeds: int | list[int]) -> Path:
    """Where the record of a per-seed kernel job (or of an evaluation job over several seeds) waits until
    every seed has one: ``kernel-seeds/seed-<seed>[-<seed>...].json``."""
    seeds = [seeds] if isinstance(seeds, int) else seeds
    return config.results / f"{task}-k{k}" / "kernel-seeds" / f"seed-{'-'.join(map(str, seeds))}.json"


def fitted_path(config: StudyConfig, task: str, k: int, seed: int) -> Path:
    """The mark of a finished fitting job (``kernel_jobs="split"``), beside the seed records."""
    return config.results / f"{task}-k{k}" / "kernel-seeds" / f"fitted-{seed}.json"


def seed_records(config: StudyConfig, task: str, k: int) -> list[dict]:
    """The task's waiting kernel records of the study's kernels at ``k`` (each over one seed or several)."""
    folder = config.results / f"{task}-k{k}" / "kernel-seeds"
    records = [_read_json(path) or {} for path in sorted(folder.glob("seed-*.json"))]
    return [r for r in records if _kernels_match(r.get("results"), config, k, (r.get("results") or {}).get("seeds"))]


def recorded_seeds(config: StudyConfig, task: str, k: int) -> set[int]:
    """The seeds the task's waiting records at ``k`` hold (`seed_records`)."""
    return {seed for record in seed_records(config, task, k) for seed in record["results"]["seeds"]}


def job_done(job: StudyJob, config: StudyConfig) -> bool:
    """Whether the job's record is in the results folder (for its seeds, subsets and evaluation set)."""
    folder = config.results / job.folder
    if job.kind in ("kernels", "fit", "evaluate"):
        if _kernels_match(_read_json(folder / "results.json"), config, job.k, config.seeds):
            return True
        if job.seed is None:  # a task's kernel or evaluation job
            return False
        if job.seed in recorded_seeds(config, job.task, job.k):
            return True
        fitted = _read_json(fitted_path(config, job.task, job.k, job.seed)) if job.kind == "fit" else None
        return fitted is not None and _fitted_match(fitted, config, job.k)
    record = _read_json(folder / "fine_tuning.json") or {}
    return str(job.seed) in record.get("runs", {}).get(job.adapter, {})


def _fitted_match(fitted: dict, config: StudyConfig, k: int) -> bool:
    """Whether a fitting job's mark is of the kernels the study asks for at ``k``."""
    return _same_kernels(fitted, config, k) and fitted.get("dev_predictions") == config.dev_predictions


def train_config(job: StudyJob, config: StudyConfig):
    """The `TrainConfig` of a fine-tuning job (its run folder under ``runs/<study>/train``)."""
    from ntk_peft.train import TrainConfig

    out = config.runs / "train" / f"{job.task}-{job.adapter}-k{job.k}-s{job.seed}"
    return TrainConfig(task=job.task, adapter=job.adapter, out=str(out), k=job.k, seed=job.seed, model=config.model,
                       epochs=config.epochs, lr=FINE_TUNING_LR[job.adapter], max_eval=config.max_eval,
                       data_dir=config.data_dir, track_every=None)  # ΔW measured at the start and end only


# ---- running the jobs ------------------------------------------------------------------------------------------

def kernel_folder(job: StudyJob, config: StudyConfig) -> Path:
    """The ntk-compare output folder of a kernel job: ``split/`` holds every seed's stores where the task's
    evaluation job reads them back; a one-seed job's stores (and projections) are its own."""
    out = config.runs / "kernels" / job.folder
    if job.kind in ("fit", "evaluate"):
        return out / "split"
    return out if job.seed is None else out / f"seed-{job.seed}-job"


def resumes_stored_work(job: StudyJob, config: StudyConfig) -> bool:
    """Whether a job starts from work a stopped run left behind (kernel blocks, evaluation projections,
    a fine-tuning checkpoint), so that its seconds cover only part of it."""
    if job.kind == "train":
        return (Path(train_config(job, config).out) / "checkpoint.pt").is_file()
    out = kernel_folder(job, config)
    if job.kind == "fit":
        places = [out / f"seed-{job.seed}" / "blocks"]
    elif job.kind == "evaluate":
        places = [out / "eval-projections"]
    else:
        places = [*out.glob("seed-*/blocks"), out / "eval-projections"]
    return any(place.is_dir() and any(place.iterdir()) for place in places)


def run_kernels(job: StudyJob, config: StudyConfig, progress: bool = True) -> None:
    """One task's ntk-compare run (or one seed's), then its results and figure data into the results
    folder (rank 0); a seed's record waits in ``kernel-seeds/`` until every seed has one. A fitting job
    (``kind="fit"``) records only its mark; an evaluation job goes to `run_evaluation`."""
    if job.kind == "evaluate":
        run_evaluation(job, config, progress)
        return
    out = kernel_folder(job, config)
    results = run_compare(job.task, config.subsets(job.k), k=job.k, model_name=config.model,
                          seeds=config.seeds if job.seed is None else [job.seed], calibration_seed=config.seeds[0],
                          max_eval=config.max_eval, out=out, data_dir=config.data_dir, block_size=config.block_size,
                          progress=progress, dev_predictions=config.dev_predictions, evaluate=job.kind != "fit",
                          capture_memory=config.capture_memory)
    if not distributed.is_main():
        return
    folder = config.results / job.folder
    folder.mkdir(parents=True, exist_ok=True)
    heatmaps = job.k == HEATMAP_K
    if job.kind == "fit":
        path = fitted_path(config, job.task, job.k, job.seed)
        path.parent.mkdir(exist_ok=True)
        write_json(path, {"model": config.model, "kernel_subsets": config.subsets(job.k), "max_eval": config.max_eval,
                          "dev_predictions": config.dev_predictions, "fitted": results["fitted"]})
        return
    if job.seed is None:
        write_json(folder / "figure_data.json", figure_data(out, results, heatmaps))
        write_json(folder / "results.json", results)  # last: its presence marks the job done
        return
    _record_seeds(config, job, out, results)


def _record_seeds(config: StudyConfig, job: StudyJob, out: Path, results: dict) -> None:
    """Keep the record of a run over some of the seeds (with the figure data if it has the first seed) and
    combine the records if every seed has one."""
    first = results["seeds"][0] == config.seeds[0]  # the figures show the first seed's kernels
    record = seed_record_path(config, job.task, job.k, results["seeds"])
    record.parent.mkdir(parents=True, exist_ok=True)
    write_json(record,
               {"results": results, "figure_data": figure_data(out, results, job.k == HEATMAP_K) if first else None})
    combine_seed_records(config, job.task, job.k)


def run_evaluation(job: StudyJob, config: StudyConfig, progress: bool = True) -> None:
    """A task's evaluation job (``kernel_jobs="split"``): every seed without a record yet, scored in one
    `run_compare` over the fitting jobs' folder (their kernels, λ and kept directions read back, computed
    where missing), so the evaluation set is projected once for all of them; then recorded and combined."""
    recorded = distributed.broadcast(recorded_seeds(config, job.task, job.k) if distributed.is_main() else None)
    seeds = [seed for seed in config.seeds if seed not in recorded]
    if not seeds:
        if distributed.is_main():
            combine_seed_records(config, job.task, job.k)
        return
    out = kernel_folder(job, config)
    results = run_compare(job.task, config.subsets(job.k), k=job.k, model_name=config.model, seeds=seeds,
                          calibration_seed=config.seeds[0], max_eval=config.max_eval, out=out,
                          data_dir=config.data_dir, block_size=config.block_size, progress=progress,
                          dev_predictions=config.dev_predictions, capture_memory=config.capture_memory)
    if distributed.is_main():
        _record_seeds(config, job, out, results)


def combine_seed_records(config: StudyConfig, task: str, k: int) -> bool:
    """Once the task's waiting records (`seed_records`) hold every seed once: ``results.json`` and
    ``figure_data.json`` from them (`combine_seed_results`, in the study's seed order), and the records
    and fitting marks removed. Returns whether the task's kernels are complete."""
    import shutil

    from ntk_peft.experiments.compare import combine_seed_results

    records = seed_records(config, task, k)
    seeds = [seed for record in records for seed in record["results"]["seeds"]]
    if sorted(seeds) != sorted(config.seeds):
        return False
    folder = config.results / f"{task}-k{k}"
    first = next(r for r in records if r["results"]["seeds"][0] == config.seeds[0])
    write_json(folder / "figure_data.json", first["figure_data"])
    write_json(folder / "results.json", combine_seed_results([r["results"] for r in records], order=config.seeds))
    shutil.rmtree(folder / "kernel-seeds")
    return True


def rescore_task(config: StudyConfig, task: str, k: int, progress: bool = True) -> bool:
    """Add each seed's eval confusion counts (`score_predictions`) to a finished task's ``results.json``
    recorded before they were kept: every `run_compare` call its seeds came from (a run folder under
    ``runs/kernels/<TASK>-k<k>`` that holds a ``results.json``) runs again over its stored blocks, and
    everything recorded (accuracies, relative differences, λ) must come back the same, else `UserError`
    and nothing is written. Returns whether the record changed (not when every seed already has counts)."""
    path = config.results / f"{task}-k{k}" / "results.json"
    recorded = _read_json(path)
    if recorded is None or all("eval_confusion" in entry for entry in recorded["per_seed"]):
        return False
    folder = config.runs / "kernels" / f"{task}-k{k}"
    runs: dict[Path, dict] = {}  # run folder -> its results, the first folder holding each recorded seed
    for run in [folder, folder / "split", *sorted(folder.glob("seed-*-job"))]:
        previous = _read_json(run / "results.json")
        held = {entry["seed"] for entry in recorded["per_seed"]} - {s for r in runs.values() for s in r["seeds"]}
        if previous is not None and held & set(previous["seeds"]):
            runs[run] = previous
    found = {seed for previous in runs.values() for seed in previous["seeds"]}
    missing = [entry["seed"] for entry in recorded["per_seed"] if entry["seed"] not in found]
    if missing:  # before any work
        raise UserError(f"{task} k={k}: seeds {missing} have no run folder with their stored blocks under {folder}")
    rescored: dict[int, dict] = {}
    for run, previous in runs.items():
        again = run_compare(task, recorded["kernel_subsets"], k=k, model_name=recorded["model"],
                            seeds=previous["seeds"], calibration_seed=recorded.get("wanda_calibration_seed"),
                            max_eval=recorded["max_eval"], out=run, data_dir=config.data_dir,
                            block_size=config.block_size, progress=progress,
                            dev_predictions=previous.get("dev_predictions", "kernels"),
                            capture_memory=config.capture_memory)
        rescored.update({entry["seed"]: entry for entry in again["per_seed"] if entry["seed"] not in rescored})
    kept = ("accuracy", "relative_difference", "lambda", "lambda_over_scale")
    for entry in recorded["per_seed"]:
        again = rescored[entry["seed"]]
        differ = [key for key in kept if again.get(key) != entry.get(key)]
        if differ:
            raise UserError(f"{task} k={k} seed {entry['seed']}: rescoring from the stored blocks changed "
                            f"{', '.join(differ)}; the record is left as it was")
        entry["eval_confusion"] = again["eval_confusion"]
    write_json(path, recorded)
    return True


def figure_data(run_folder: Path, results: dict, heatmaps: bool) -> dict:
    """From the first seed's train kernels: each kernel's spectrum (eigenvalues of the flattened kernel,
    descending, over the largest) and, with ``heatmaps``, the kernel the heatmaps show (the logit
    difference's for two classes, else the trace over classes) with the labels; 6 significant digits."""
    from ntk_peft.analysis import eigenvalues
    from ntk_peft.plotting import load_train_kernels
    from ntk_peft.solvers.estimators import scalar_kernel

    seed = results["seeds"][0]
    kernels, labels = load_train_kernels(run_folder / f"seed-{seed}")

    def rounded(values: np.ndarray) -> list:
        return np.vectorize(lambda v: float(f"{v:.6g}"), otypes=[float])(values).tolist()

    data = {"seed": seed, "labels": labels.tolist(), "spectra": {}, "heatmaps": {}}
    for name, kernel in kernels.items():
        values = eigenvalues(kernel)
        data["spectra"][name] = rounded(np.clip(values / values[0], 0.0, None))
        if heatmaps:
            data["heatmaps"][name] = rounded(scalar_kernel(kernel))
    return data


def run_training(jobs: list[StudyJob], config: StudyConfig, progress: bool = True) -> None:
    """Fine-tuning runs dealt out over the ranks (all of them in one process without torchrun); each
    finished run is recorded in its task's ``fine_tuning.json`` by rank 0."""
    mine = jobs[distributed.rank()::distributed.world_size()]
    finished = []
    for job in mine:
        finished.append((job, _train_one(job, config, progress)))
        if not distributed.active():
            record_fine_tuning(job, config, finished[-1][1])
    if distributed.active():
        everyone = distributed.all_gather(finished)
        if distributed.is_main():
            for part in everyone:
                for job, metrics in part:
                    record_fine_tuning(job, config, metrics)
        distributed.barrier()


def _train_one(job: StudyJob, config: StudyConfig, progress: bool) -> dict:
    """Train (resuming a stopped run); a run finished before is read back, not evaluated again."""
    from ntk_peft.models import load_model
    from ntk_peft.train import train

    run = train_config(job, config)
    folder = Path(run.out)
    metrics, saved = _read_json(folder / "metrics.json"), _read_json(folder / "config.json")
    if metrics is not None and "eval_accuracy" in metrics and saved == asdict(run):
        return metrics
    model, tokenizer = load_model(config.model, seed=job.seed)
    metrics = train(run, model=model.to(distributed.device()), tokenizer=tokenizer, progress=progress)
    if job.adapter == "full":
        drop_model_weights(folder)
    return metrics


def drop_model_weights(folder: Path) -> None:
    """Delete a finished full fine-tuning run's model-sized files (checkpoint with AdamW state, ``adapter/``,
    ``best/``: 2.7 GB for SmolLM2, 65 runs per k); its metrics, configuration and ΔW records stay."""
    import shutil

    (folder / "checkpoint.pt").unlink(missing_ok=True)
    for name in ("adapter", "best"):
        shutil.rmtree(folder / name, ignore_errors=True)


def record_fine_tuning(job: StudyJob, config: StudyConfig, metrics: dict) -> None:
    """Add one run's numbers to ``<results>/<TASK>-k<k>/fine_tuning.json`` (written atomically)."""
    path = config.results / job.folder / "fine_tuning.json"
    record = _read_json(path) or {"task": job.task, "k": job.k, "model": config.model, "epochs": config.epochs,
                                  "batch_size": 8, "max_eval": config.max_eval, "lr": {}, "runs": {}}
    record["lr"][job.adapter] = FINE_TUNING_LR[job.adapter]
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = record["runs"].setdefault(job.adapter, {})
    runs[str(job.seed)] = {"eval_accuracy": metrics["eval_accuracy"], "n_eval": metrics["n_eval"],
                           "best_dev": metrics["best_dev"], "steps": metrics["final_step"],
                           "train_seconds": round(metrics["train_seconds"], 1),
                           **({"eval_confusion": metrics["eval_confusion"]} if "eval_confusion" in metrics else {})}
    record["runs"][job.adapter] = dict(sorted(runs.items(), key=lambda item: int(item[0])))
    write_json(path, record)


def run_study(config: StudyConfig, progress: bool = True, after_each=None,
              clock: StudyClock | None = None) -> list[StudyJob]:
    """Run every job not done yet, in queue order; returns the jobs run.

    Consecutive fine-tuning jobs go out together (one per rank under torchrun). ``after_each(job)``
    runs on rank 0 after each kernel job and each group of fine-tuning jobs (the report is redrawn there).
    With a ``clock`` (`ntk_peft.experiments.study_clock`) a job starts only if it is expected to finish in
    the time left: the first such job in queue order runs next, and the study stops when none fits. A job
    that resumes stored work is expected to take its whole projection and does not scale the others.
    """
    config.results.mkdir(parents=True, exist_ok=True)
    pending = [job for job in study_jobs(config) if not job_done(job, config)]
    pending = distributed.broadcast(pending)
    if clock is not None:
        clock.check_rows(pending)
    done: list[StudyJob] = []
    total = len(pending)
    while pending:
        picked = distributed.broadcast(_next_group(pending, config, clock) if distributed.is_main() else None)
        if not picked:
            break
        group = [pending[i] for i in picked]
        pending = [job for i, job in enumerate(pending) if i not in picked]
        job = group[0]
        started = time.perf_counter()
        resumed = clock is not None and any(resumes_stored_work(j, config) for j in group)
        if distributed.is_main():
            expected = "" if clock is None else (
                f" ({'resuming, at most' if resumed else 'expected'} "
                f"{format_minutes(clock.expected(job, _unscored(job, config)))}, {format_minutes(clock.left())} left)")
            print(f"[{len(done) + 1}/{total}] " + "; ".join(j.describe() for j in group) + expected, flush=True)
        projected = None if clock is None else max(clock.projected(j, _unscored(j, config)) for j in group)
        if job.kind != "train":
            run_kernels(job, config, progress)
        else:
            run_training(group, config, progress)
        done += group
        seconds = time.perf_counter() - started
        if clock is not None and not resumed:  # a resumed job's seconds would understate the next ones
            clock.record(group, projected, seconds)
        if distributed.is_main():
            print(f"    done in {seconds:.0f} s", flush=True)
            if after_each is not None:
                after_each(group)
    return done


def _unscored(job: StudyJob, config: StudyConfig) -> int:
    """Seeds a task's evaluation job still scores (those without a record)."""
    if job.kind != "evaluate":
        return len(config.seeds)
    return len(config.seeds) - len(recorded_seeds(config, job.task, job.k))


def _next_group(pending: list[StudyJob], config: StudyConfig, clock: StudyClock | None) -> list[int]:
    """Positions in ``pending`` of the jobs to run next: the first job (with a clock, the first that fits
    the time left) and, if it fine-tunes, the fine-tuning jobs after it that fit, one per rank. Empty,
    with the reason printed, when nothing fits."""
    def needed(job: StudyJob) -> float:
        evaluation = StudyJob("evaluate", job.task, job.k) if job.kind == "fit" else job
        return clock.needed(job, pending, _unscored(evaluation, config))

    def fits(position: int) -> bool:
        return clock is None or needed(pending[position]) <= clock.left()

    first = next((i for i in range(len(pending)) if fits(i)), None)
    if first is None:
        job = pending[0]
        seconds = needed(job)
        whole = (" (more than the whole limit" + ("; --kernel-jobs seed records each seed on its own)"
                                                  if job.kind == "fit" else ")")) if seconds > clock.limit_s else ""
        print(f"time limit: stopping with {len(pending)} jobs left; the next, {job.describe()}, needs about "
              f"{format_minutes(seconds)}{whole}, {format_minutes(max(clock.left(), 0))} left", flush=True)
        return []
    group = [first]
    if pending[first].kind == "train":
        for position in range(first + 1, len(pending)):
            if len(group) == distributed.world_size() or pending[position].kind != "train":
                break
            if fits(position):
                group.append(position)
    return group
