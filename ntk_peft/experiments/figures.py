"""Every figure of the toolkit from results folders, computing what is missing (``ntk-peft figures``).

Results live under one root (default ``runs/``), in the folders the commands
write by default at each size:

- kernels: ``ntk-compare/<folder>`` (``ntk-compare --task sst2 --subset row1 --subset col1 --subset lora1``),
- training: ``train/<folder>`` per adapter (``ntk-peft train`` with ΔW tracking),
- bounds: ``bounds/<folder>`` (``ntk-peft bounds`` on SmolLM2's pretrained weights).

A folder that is missing or unfinished is computed (all three are resumable,
so an interrupted ``ntk-peft figures`` continues where it stopped); existing
results are only read. ``--quick`` uses tiny settings (one seed, a few
training steps, one layer) and folders of its own, so quick and full results
never mix. Each figure gets a stable file name, a caption ``<name>.txt``
beside it, and the output folder a ``README.md`` index.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ntk_peft.errors import UserError

FIGURE_NAMES = ("kernel_heatmaps", "kernel_spectra", "delta_w_rank", "delta_w_spectra", "monarch_vs_lowrank")


@dataclass(frozen=True)
class FigureSizes:
    """What ``ntk-peft figures`` computes when results are missing."""

    label: str
    kernel_folder: str
    kernel_k: int
    kernel_seeds: tuple[int, ...]
    kernel_max_eval: int | None
    train_adapters: tuple[tuple[str, float], ...]  # (spec, learning rate)
    train_steps: int
    train_track_every: int
    train_track_layers: str | None
    train_max_eval: int | None
    bounds_folder: str
    bounds_layers: tuple[int, ...]
    bounds_types: tuple[str, ...]
    bounds_budget_ranks: tuple[int, ...]
    bounds_cp: bool
    model: str = "smollm2-135m"
    task: str = "sst2"
    kernel_subsets: tuple[str, ...] = ("row1", "col1", "lora1")
    train_k: int = 16

    def train_folder(self, spec: str) -> str:
        suffix = "" if self.label == "full" else f"-{self.label}"
        return f"{self.task}-{spec}-k{self.train_k}-s42{suffix}".replace(":", "_")


FULL = FigureSizes(
    label="full", kernel_folder="sst2-smollm2-135m-k16", kernel_k=16, kernel_seeds=(13, 21, 42, 87, 100),
    kernel_max_eval=None,
    train_adapters=(("lora8", 1e-3), ("more4x8", 1e-3), ("row1", 1e-3), ("col1", 1e-3), ("cp16", 1e-3),
                    ("lorma+8", 1e-3), ("full", 2e-5)),
    train_steps=60, train_track_every=20, train_track_layers=None, train_max_eval=None,
    bounds_folder="smollm2-135m-layers0-15-29", bounds_layers=(0, 15, 29),
    bounds_types=("q", "k", "v", "o", "gate", "up", "down"), bounds_budget_ranks=(1, 2, 4, 8, 16, 32),
    bounds_cp=True)

QUICK = FigureSizes(
    label="quick", kernel_folder="sst2-smollm2-135m-k16-quick", kernel_k=16, kernel_seeds=(13,),
    kernel_max_eval=16,
    train_adapters=(("lora4", 1e-3), ("more4x4", 1e-3), ("row1", 1e-3), ("lorma+4", 1e-3)),
    train_steps=6, train_track_every=2, train_track_layers="layers.15.", train_max_eval=16,
    bounds_folder="smollm2-135m-layer15-quick", bounds_layers=(15,), bounds_types=("q", "o", "up"),
    bounds_budget_ranks=(1, 4, 16), bounds_cp=False)


def _log(message: str) -> None:
    print(message, flush=True)


def check_given(kernels: Path | None, train_runs: list[Path], bounds: Path | None) -> None:
    """Refuse a given folder without its results before anything is computed."""
    for option, folder, needed, what in [("--kernels", kernels, "results.json", "an ntk-compare folder"),
                                         *[("--train-run", run, "delta_w_summary.json", "a finished tracked run")
                                           for run in train_runs],
                                         ("--bounds", bounds, "bounds.csv", "an ntk-peft bounds folder")]:
        if folder is not None and not (folder / needed).is_file():
            raise UserError(f"{option} {folder}: no {needed} (not {what})")


def kernel_results(root: Path, sizes: FigureSizes, folder: Path | None, progress: bool) -> Path:
    """An ntk-compare results folder: ``folder`` if given, else ``root/ntk-compare/...``, computed if missing."""
    if folder is not None:
        return folder
    from ntk_peft.experiments.compare import run_compare

    out = root / "ntk-compare" / sizes.kernel_folder
    done = out / "results.json"
    if not done.is_file() or json.loads(done.read_text()).get("seeds") != list(sizes.kernel_seeds):
        _log(f"kernels: computing {out} ({len(sizes.kernel_seeds)} seed(s), k={sizes.kernel_k})")
        run_compare(sizes.task, list(sizes.kernel_subsets), k=sizes.kernel_k, seeds=list(sizes.kernel_seeds),
                    model_name=sizes.model, max_eval=sizes.kernel_max_eval, out=out, progress=progress)
    return out


def train_results(root: Path, sizes: FigureSizes, folders: list[Path] | None, progress: bool) -> list[Path]:
    """Tracked training runs: ``folders`` if given, else ``root/train/...`` per adapter, trained if missing."""
    if folders:
        return folders
    from ntk_peft.train import TrainConfig, train

    out = []
    for spec, lr in sizes.train_adapters:
        folder = root / "train" / sizes.train_folder(spec)
        if not (folder / "delta_w_summary.json").is_file():
            _log(f"training: {folder} ({sizes.train_steps} steps)")
            train(TrainConfig(task=sizes.task, adapter=spec, out=str(folder), model=sizes.model, k=sizes.train_k,
                              steps=sizes.train_steps, lr=lr, eval_every=sizes.train_steps,
                              track_every=sizes.train_track_every, track_layers=sizes.train_track_layers,
                              max_eval=sizes.train_max_eval), progress=progress)
        out.append(folder)
    return out


def bounds_results(root: Path, sizes: FigureSizes, folder: Path | None) -> Path:
    """An ``ntk-peft bounds`` folder (``bounds.csv``): ``folder`` if given, else computed under ``root/bounds``."""
    if folder is not None:
        return folder
    from ntk_peft.experiments.bounds_study import bounds_study, model_matrices, summary_table

    out = root / "bounds" / sizes.bounds_folder
    if not (out / "table.md").is_file():
        _log(f"bounds: computing {out}")
        matrices = model_matrices(sizes.model, list(sizes.bounds_layers), list(sizes.bounds_types))
        rows = bounds_study(matrices, sizes.bounds_budget_ranks, cp=sizes.bounds_cp, out=out)
        (out / "table.md").write_text(summary_table(rows) + "\n")
    return out


def _read_bounds(folder: Path) -> list[dict]:
    import csv

    with (folder / "bounds.csv").open(newline="") as handle:
        return [dict(r, params=int(r["params"]), budget_rank=int(r["budget_rank"]),
                     relative_error=float(r["relative_error"])) for r in csv.DictReader(handle)]


def make_all(root: str | Path = "runs", out: str | Path | None = None, *, quick: bool = False,
             kernels: str | Path | None = None, train_runs: list | None = None, bounds: str | Path | None = None,
             progress: bool = True, sizes: FigureSizes | None = None) -> dict[str, Path]:
    """Regenerate every figure; returns figure name -> PNG path (captions and README.md beside them).

    ``sizes`` overrides what is computed when missing (default `QUICK` or `FULL` by ``quick``).
    """
    from ntk_peft import plotting

    sizes = sizes or (QUICK if quick else FULL)
    root = Path(root)
    out = Path(out) if out is not None else root / ("figures-quick" if quick else "figures")
    started = time.perf_counter()
    kernels, bounds = (None if kernels is None else Path(kernels)), (None if bounds is None else Path(bounds))
    train_runs = [Path(r) for r in train_runs or []]
    check_given(kernels, train_runs, bounds)
    kernel_dir = kernel_results(root, sizes, kernels, progress)
    run_dirs = train_results(root, sizes, train_runs, progress)
    bounds_dir = bounds_results(root, sizes, bounds)
    out.mkdir(parents=True, exist_ok=True)

    results = json.loads((kernel_dir / "results.json").read_text())
    seed = results["seeds"][0]
    train_kernels, labels = plotting.load_train_kernels(kernel_dir / f"seed-{seed}")
    where = f"{results['task']}, {results['model']}, k={results['k']}, seed {seed}"
    runs = [plotting.load_delta_w_run(r) for r in run_dirs]
    layer = plotting.pick_layer(runs, None)
    figures = {
        "kernel_heatmaps": (
            plotting.kernel_heatmaps(train_kernels, labels, out / "kernel_heatmaps.png",
                                     f"train-train eNTKs, {where}"),
            f"Train-train eNTK of the label-logit function for {', '.join(plotting.kernel_label(n) for n in train_kernels)}"
            f" ({where}; {len(labels)} examples sorted by class, white lines between classes; entries capped at the "
            "95th percentile of |K|, as RoCoFT figure 4). Two classes: the kernel of the logit difference. A 2x2 "
            f"block structure means the kernel already separates the classes. From {kernel_dir}."),
        "kernel_spectra": (
            plotting.kernel_spectra(train_kernels, out / "kernel_spectra.png", f"eNTK spectra, {where}"),
            f"Eigenvalues of each flattened train kernel [n·C, n·C], in float64, divided by the largest, log scale "
            f"(RoCoFT figure 6; {where}). A faster decay means fewer effective directions. From {kernel_dir}."),
        "delta_w_rank": (
            plotting.delta_w_rank(runs, out / "delta_w_rank.png"),
            "Median over tracked layers of the numerical rank of ΔW (machine tolerance, and 1e-3·σ_max) and of its "
            "effective rank, against the training step, one line per run (LoRMA figure 7); LoRMA runs also show "
            "their inflated matrix I(BA) dotted; log scale, rank 0 drawn at 0.5. From " + ", ".join(str(r) for r in run_dirs) + "."),
        "delta_w_spectra": (
            plotting.delta_w_spectra(runs, out / "delta_w_spectra.png", layer, f"ΔW spectra at the end: {layer}"),
            f"Singular values σ_i/σ_1 of ΔW at the end of each run for {layer}, log scale; a flat head then a cliff "
            f"is a low-rank update, a slow decay a full-rank one. Runs with ΔW = 0 are left out."),
        "monarch_vs_lowrank": (
            plotting.bounds_figure(_read_bounds(bounds_dir), out / "monarch_vs_lowrank.png",
                                   f"best error at equal budgets: {bounds_dir.name}"),
            "Best relative Frobenius error ‖M − P(M)‖_F/‖M‖_F of each adapter class (low rank, Monarch, rows, "
            "columns; CP on stacks) on pretrained weight matrices, against its parameter count; faint lines are "
            f"single matrices, bold lines the median per budget. From {bounds_dir}."),
    }
    index = ["# Figures", "", f"Regenerated by `ntk-peft figures{' --quick' if quick else ''}` in "
             f"{time.perf_counter() - started:.0f} s (including any computing).", "",
             "| file | what it shows |", "|---|---|"]
    for name, (path, caption) in figures.items():
        path.with_suffix(".txt").write_text(caption + "\n")
        index.append(f"| `{path.name}` | {caption.replace('|', chr(92) + '|')} |")  # a bare | would split the cell
    (out / "README.md").write_text("\n".join(index) + "\n")
    return {name: path for name, (path, _) in figures.items()}
