"""``ntk-peft study rocoft``: the queue, its records, resuming, and the report drawn from the records alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ntk_peft.errors import UserError
from ntk_peft.experiments.rocoft_report import BEGIN, END, report_section, table6, top_of_grid, write_report
from ntk_peft.experiments.rocoft_study import (
    StudyConfig,
    StudyJob,
    job_done,
    parse_fine_tune,
    parse_tasks,
    run_kernels,
    run_study,
    study_jobs,
)

COMMITTED = Path(__file__).resolve().parents[2] / "results" / "rocoft-smollm2"


def test_queue_order_and_parsing():
    config = StudyConfig(tasks=parse_tasks("sst2,rte"), ks=[16, 64], seeds=[13, 21], fine_tune=parse_fine_tune("full"))
    jobs = study_jobs(config)
    assert [j.describe() for j in jobs[:4]] == ["kernels SST-2 k=16", "fine-tune full SST-2 k=16 seed 13",
                                                "fine-tune full SST-2 k=16 seed 21", "kernels RTE k=16"]
    assert len(jobs) == 2 * 2 * 3 and jobs[6] == StudyJob("kernels", "SST-2", 64)
    assert config.subsets(16)[4:] == ["row1:random", "row1:wanda-max", "col1:random", "col1:wanda-max"]
    assert config.subsets(64) == ["full", "row1", "col1", "lora1"]  # the selection ablation at k = 16 only
    assert parse_tasks("single") == ["SST-2", "sst-5", "mr", "cr", "mpqa", "subj", "trec"]
    assert parse_tasks("all")[-6:] == ["MNLI", "SNLI", "QNLI", "RTE", "MRPC", "QQP"]
    assert parse_fine_tune("none") == []
    with pytest.raises(UserError, match="not a task of RoCoFT's tables"):
        parse_tasks("cola")
    with pytest.raises(UserError, match="--fine-tune takes full, lora1, row1"):
        parse_fine_tune("lora8")


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """SST-2 and RTE at k = 16 on tiny-llama: kernels with the ablation, two fine-tuned adapters, two seeds."""
    root = tmp_path_factory.mktemp("study")
    config = StudyConfig(tasks=["SST-2", "RTE"], ks=[16], seeds=[13, 21], fine_tune=["full", "row1"], model="tiny-llama",
                         max_eval=8, epochs=1, runs=root / "runs", results=root / "results")
    reports = []
    ran = run_study(config, progress=False, after_each=lambda jobs: reports.append([j.describe() for j in jobs]))
    return config, ran, reports


def test_study_records_every_job_and_skips_them_on_a_rerun(small_study):
    config, ran, reports = small_study
    assert ran == study_jobs(config) and len(reports) == len(ran)  # one group per job without torchrun
    assert all(job_done(job, config) for job in ran)
    assert run_study(config, progress=False) == []  # everything is found in the results folder
    results = json.loads((config.results / "SST-2-k16" / "results.json").read_text())
    assert results["kernel_subsets"] == ["full", "row1", "col1", "lora1", "row1:random", "row1:wanda-max",
                                         "col1:random", "col1:wanda-max"]
    assert results["max_eval"] == 8 and results["seeds"] == [13, 21]
    tuning = json.loads((config.results / "RTE-k16" / "fine_tuning.json").read_text())
    assert tuning["lr"] == {"full": 1e-5, "row1": 1e-3} and list(tuning["runs"]["row1"]) == ["13", "21"]
    run = tuning["runs"]["full"]["21"]
    metrics = json.loads((config.runs / "train" / "RTE-full-k16-s21" / "metrics.json").read_text())
    assert run["eval_accuracy"] == metrics["eval_accuracy"] and run["n_eval"] == 8 and run["steps"] == 4
    assert run["eval_confusion"] == metrics["eval_confusion"] and np.array(run["eval_confusion"]).sum() == 8
    full = config.runs / "train" / "RTE-full-k16-s21"  # model-sized files dropped once recorded; the rest kept
    assert not (full / "checkpoint.pt").exists() and not (full / "best").exists() and not (full / "adapter").exists()
    assert (full / "config.json").is_file() and (full / "delta_w_summary.json").is_file()
    assert (config.runs / "train" / "RTE-row1-k16-s21" / "best").is_dir()


def test_a_recorded_run_lost_from_the_results_is_read_back_not_trained_again(small_study):
    config, _, _ = small_study
    path = config.results / "SST-2-k16" / "fine_tuning.json"
    before = json.loads(path.read_text())
    lost = json.loads(path.read_text())
    del lost["runs"]["row1"]["13"]
    path.write_text(json.dumps(lost))
    checkpoint = config.runs / "train" / "SST-2-row1-k16-s13" / "checkpoint.pt"
    stamp = checkpoint.stat().st_mtime_ns
    ran = run_study(config, progress=False)
    assert ran == [StudyJob("train", "SST-2", 16, "row1", 13)]
    assert json.loads(path.read_text()) == before and checkpoint.stat().st_mtime_ns == stamp


def test_figure_data_are_the_first_seeds_kernels_as_drawn(small_study):
    from ntk_peft.analysis import eigenvalues
    from ntk_peft.plotting import load_train_kernels
    from ntk_peft.solvers.estimators import scalar_kernel

    config, _, _ = small_study
    data = json.loads((config.results / "RTE-k16" / "figure_data.json").read_text())
    kernels, labels = load_train_kernels(config.runs / "kernels" / "RTE-k16" / "seed-13")
    assert data["seed"] == 13 and data["labels"] == labels.tolist()
    for name in ("full", "row1", "col1:wanda-max"):
        np.testing.assert_allclose(data["heatmaps"][name], scalar_kernel(kernels[name]), rtol=1e-5, atol=0)
        values = eigenvalues(kernels[name])
        np.testing.assert_allclose(data["spectra"][name], np.clip(values / values[0], 0, None), rtol=1e-5,
                                   atol=1e-12)


def test_report_cells_come_from_the_records_and_the_rest_is_pending(small_study):
    config, _, _ = small_study
    section = report_section(config.results)
    assert section.startswith(BEGIN) and section.endswith(END)
    results = json.loads((config.results / "SST-2-k16" / "results.json").read_text())
    row1 = [r["accuracy"]["row1"] * 100 for r in results["per_seed"]]
    tuning = json.loads((config.results / "SST-2-k16" / "fine_tuning.json").read_text())
    full_ft = [r["eval_accuracy"] * 100 for r in tuning["runs"]["full"].values()]
    table = next(line for line in section.splitlines() if line.startswith("| K_row1 |"))
    assert table.split(" | ")[1] == f"{np.mean(row1):.1f} ({np.std(row1):.1f}) [88.5 (0.4)]"  # SST-2, then paper
    assert table.split(" | ")[2] == "pending [42.9 (1.9)]"  # sst-5 not run
    full_row = next(line for line in section.splitlines() if line.startswith("| Full FT |"))
    assert full_row.split(" | ")[1] == f"{np.mean(full_ft):.1f} ({np.std(full_ft):.1f}) [89.0 (1.5)]"
    lora_ft = next(line for line in section.splitlines() if line.startswith("| LoRA-1 FT |"))
    assert lora_ft.split(" | ")[1] == "pending"  # not fine-tuned in this study: no number, no paper value
    rte = json.loads((config.results / "RTE-k16" / "results.json").read_text())["per_seed"]
    at_top = sum(entry["lambda_over_scale"]["full"] == pytest.approx(10.0) for entry in rte)
    assert f"| RTE | 16 | 2 seeds | full 2, row1 2 | 8 | {at_top} of 2 |" in section
    # columns and rows carry the paper's task names, not the data folders' (sst-5, mr, ...)
    assert "| k = 16 | SST-2 | SST-5 | MR | CR | MPQA | Subj | TREC |" in section
    assert "| SST-5 | 16 | pending |" in section and "| sst-5 |" not in section


def test_table6_reports_each_k_and_brackets_the_papers_values_only_at_k16():
    per_seed = [{"relative_difference": {"row1": {"p1": 0.3, "p2": 0.4}, "col1": {"p1": 0.1, "p2": 0.125}}},
                {"relative_difference": {"row1": {"p1": 0.2, "p2": 0.5}, "col1": {"p1": 0.1, "p2": 0.175}}}]
    entry = {"results": {"per_seed": per_seed}}
    study = {("SST-2", 16): entry, ("SST-2", 64): entry}
    k16 = table6(study, 16, ("SST-2", "sst-5"))
    k64 = table6(study, 64, ("SST-2", "sst-5"))
    assert k16[0] == "| k = 16 | SST-2 | SST-5 |" and k64[0] == "| k = 64 | SST-2 | SST-5 |"
    row = {line.split(" | ")[0]: line.split(" | ")[1:] for line in k64[2:]}
    assert row["| K_row1, p=2"] == ["0.450 (0.050)", "pending |"]  # the paper has no k = 64 table 6
    assert row["| K_col1, p=1"][0] == "0.100 (0.000)"
    assert row["| K_lora1, p=1"][0] == "pending"  # not in these records
    row16 = {line.split(" | ")[0]: line.split(" | ")[1:] for line in k16[2:]}
    assert row16["| K_row1, p=2"] == ["0.450 (0.050) [0.130 (0.014)]", "pending [0.113 (0.012)] |"]


def test_rescoring_adds_the_confusion_counts_from_the_stored_blocks_and_refuses_a_changed_record(small_study,
                                                                                                  tmp_path,
                                                                                                  monkeypatch):
    import dataclasses
    import shutil

    from ntk_peft.experiments.rocoft_study import rescore_task

    config, _, _ = small_study
    copy = dataclasses.replace(config, runs=tmp_path / "runs", results=tmp_path / "results")
    shutil.copytree(config.runs / "kernels", copy.runs / "kernels")
    shutil.copytree(config.results / "SST-2-k16", copy.results / "SST-2-k16")
    path = copy.results / "SST-2-k16" / "results.json"
    written = json.loads(path.read_text())
    counts = [entry.pop("eval_confusion") for entry in written["per_seed"]]  # as recorded before they were kept
    for seed_counts, entry in zip(counts, written["per_seed"]):  # 8 eval examples; the diagonal is the accuracy
        assert set(seed_counts) == set(entry["accuracy"])
        assert all(np.trace(seed_counts[name]) / 8 == entry["accuracy"][name] for name in seed_counts)
    path.write_text(json.dumps(written))
    blocks = {p: p.stat().st_mtime_ns for p in copy.runs.glob("**/blocks/*.safetensors")}
    assert rescore_task(copy, "SST-2", 16, progress=False)
    assert [entry["eval_confusion"] for entry in json.loads(path.read_text())["per_seed"]] == counts
    assert {p: p.stat().st_mtime_ns for p in copy.runs.glob("**/blocks/*.safetensors")} == blocks  # read, not redone
    assert not rescore_task(copy, "SST-2", 16, progress=False)  # every seed has its counts: nothing to do

    written["per_seed"][1]["accuracy"]["row1"] += 0.125  # a record the stored blocks do not give back
    path.write_text(json.dumps(written))
    with pytest.raises(UserError, match="seed 21: rescoring from the stored blocks changed accuracy"):
        rescore_task(copy, "SST-2", 16, progress=False)
    assert json.loads(path.read_text()) == written
    run_record = copy.runs / "kernels" / "SST-2-k16" / "results.json"
    run_record.write_text(json.dumps({**json.loads(run_record.read_text()), "seeds": [13]}))  # seed 21's run lost
    monkeypatch.setattr("ntk_peft.experiments.rocoft_study.run_compare", lambda *a, **k: pytest.fail("work begun"))
    with pytest.raises(UserError, match=r"seeds \[21\] have no run folder"):  # refused before any work
        rescore_task(copy, "SST-2", 16, progress=False)
    shutil.rmtree(copy.runs / "kernels" / "SST-2-k16")
    with pytest.raises(UserError, match=r"seeds \[13, 21\] have no run folder"):
        rescore_task(copy, "SST-2", 16, progress=False)


def test_prediction_balance_reads_the_confusion_counts():
    from ntk_peft.experiments.rocoft_report import prediction_balance_table

    def seed(kernel):  # rows: true class (6 of "0", 14 of "1"), columns: predicted
        zero_shot = [[0, 6], [0, 14]]  # always the largest class: 70% accurate, balanced accuracy 50%
        return {"eval_confusion": {"zeroshot": zero_shot, **{n: kernel for n in ("full", "row1", "col1", "lora1")}}}

    tuned = {"13": {"eval_confusion": [[2, 4], [0, 14]]}, "21": {"eval_confusion": [[6, 0], [0, 14]]}}
    study = {("MRPC", 16): {"results": {"per_seed": [seed([[6, 0], [4, 10]]), seed([[3, 3], [6, 8]])]},
                            "fine_tuning": {"runs": {"full": tuned}}},
             ("QQP", 16): {"results": {"per_seed": [seed([[6, 0], [4, 10]])]},  # its runs recorded no counts
                           "fine_tuning": {"runs": {"full": {"13": {"eval_accuracy": 0.5}}}}},
             ("RTE", 16): {"results": {"per_seed": [{"accuracy": {}}]}}}
    lines = prediction_balance_table(study)
    row = lines[2].split(" | ")
    assert row[:4] == ["| MRPC", "16", "1 (70.0)", "100.0 (0.0)"]
    assert row[4] == "52.5 (2.5)"  # K_θ predicts "1" for 10 and 11 of 20
    assert row[8] == "80.0 (10.0)"  # Full FT predicts "1" for 18 and 14 of 20
    assert row[9] == "50.0 (0.0)"  # zero-shot's balanced accuracy
    assert row[10] == "69.6 (16.1)"  # K_θ's: (1 + 10/14) / 2 and (1/2 + 8/14) / 2
    assert row[11] == "83.3 (16.7) |"  # Full FT's: (2/6 + 1) / 2 and 1
    qqp = lines[3].split(" | ")
    assert qqp[8] == "-" and qqp[11] == "- |"
    assert lines[-1].endswith("adds them where the kernel stores remain): RTE k=16.")
    assert prediction_balance_table({})[0] == "No finished task records its counts yet."


def test_seed_table_lists_each_seeds_numbers_and_dashes_what_is_missing():
    from ntk_peft.experiments.rocoft_report import seed_table

    def seed(number, accuracy, confusion=None):
        record = {"seed": number, "accuracy": {n: accuracy for n in ("zeroshot", "full", "row1", "col1", "lora1")},
                  "lambda_over_scale": {"full": 10.000000000000002, "row1": 1e-05, "col1": 0.1, "lora1": 1.0}}
        if confusion is not None:
            record["eval_confusion"] = {"full": confusion}
        return record

    study = {("MRPC", 64): {"results": {"per_seed": [seed(13, 0.5, [[1, 3], [0, 4]]), seed(21, 0.625)]},
                            "fine_tuning": {"runs": {"full": {"13": {"eval_accuracy": 0.75}}}}}}
    lines = seed_table(study, "MRPC", 64)
    assert lines[0].startswith("| seed | zero-shot | K_θ | K_row1 | K_col1 | K_lora1 | λ/scale K_θ |")
    assert lines[2] == "| 13 | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 10 | 1e-05 | 0.1 | 1 | 62.5 | 75.0 | - | - |"
    assert lines[3] == "| 21 | 62.5 | 62.5 | 62.5 | 62.5 | 62.5 | 10 | 1e-05 | 0.1 | 1 | - | - | - | - |"
    with pytest.raises(UserError, match="has no combined results.json"):
        seed_table(study, "RTE", 64)


def test_seed_table_of_a_committed_task_matches_its_records():
    from ntk_peft.experiments.rocoft_report import load_study, seed_table

    study = load_study(COMMITTED)
    results, runs = study["QQP", 16]["results"], study["QQP", 16]["fine_tuning"]["runs"]
    lines = seed_table(study, "QQP", 16)
    assert len(lines) == 2 + len(results["per_seed"])
    for line, record in zip(lines[2:], results["per_seed"]):
        cells = line.strip("| ").split(" | ")
        assert cells[0] == str(record["seed"]) and float(cells[2]) == round(100 * record["accuracy"]["full"], 1)
        confusion = np.array(record["eval_confusion"]["full"])  # balanced accuracy by hand: recall per class
        assert float(cells[10]) == round(100 * np.mean([confusion[c, c] / confusion[c].sum() for c in range(2)]), 1)
        assert float(cells[11]) == round(100 * runs["full"][cells[0]]["eval_accuracy"], 1)


def test_figures_script_prints_a_task_seed_by_seed_and_refuses_bad_input(tmp_path):
    import subprocess
    import sys

    script = [sys.executable, str(COMMITTED.parents[1] / "figures" / "rocoft_study.py")]
    shown = subprocess.run([*script, str(COMMITTED), "--seeds", "qqp", "16"], capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout.splitlines()[2].startswith("| 13 | 62.2 |")
    for argv, message in (([str(tmp_path), "--seeds", "qqp", "16"], "error: QQP k=16 has no combined results.json"),
                          ([str(COMMITTED), "--seeds", "nope", "16"], "error: unknown task 'nope'"),
                          ([str(COMMITTED), "--seeds", "qqp", "sixteen"], "error: K is a shot count")):
        refused = subprocess.run([*script, *argv], capture_output=True, text=True)
        assert refused.returncode == 2 and refused.stderr.startswith(message) and len(refused.stderr.splitlines()) == 1


def test_top_of_grid_counts_the_seeds_whose_full_kernel_took_the_largest_lambda():
    seeds = [{"lambda_over_scale": {"full": 10.000000000000002, "row1": 0.1}},
             {"lambda_over_scale": {"full": 1.0, "row1": 10.0}},  # only K_θ counts
             {"lambda": {"full": 3.0}}]  # recorded before the field existed: left out of the count
    assert top_of_grid(seeds) == "1 of 2"
    assert top_of_grid(seeds[2:]) == "-"


def test_write_report_keeps_the_hand_written_text_and_is_deterministic(small_study, tmp_path):
    config, _, _ = small_study
    readme = config.results / "README.md"
    readme.write_text("# study\n\nreading above\n\n" + BEGIN + "\nold\n" + END + "\n\nreading below\n")
    write_report(config.results, figures=True)
    first = readme.read_text()
    assert first.startswith("# study\n\nreading above\n\n" + BEGIN) and first.endswith(END + "\n\nreading below\n")
    write_report(config.results, figures=False)
    assert readme.read_text() == first
    assert (config.results / "figures" / "SST-2-k16-heatmaps.png").stat().st_size > 10_000
    assert (config.results / "figures" / "RTE-k16-spectra.png").stat().st_size > 10_000
    for path in (config.results / "figures").iterdir():
        path.unlink()
    write_report(config.results, figures={"RTE-k16"})  # what the CLI redraws after RTE's kernel job
    assert sorted(p.name for p in (config.results / "figures").iterdir()) == ["RTE-k16-heatmaps.png",
                                                                              "RTE-k16-spectra.png"]


def test_per_seed_kernel_jobs_record_each_seed_then_make_the_records_of_one_job(small_study, tmp_path):
    """``kernel_jobs="seed"``: a seed's kernels are recorded as they finish, so a machine lost between seeds
    loses none of them; once every seed is there, the results and figure data are those of the one-job
    run (the same per-seed numbers: the Wanda-max subsets are calibrated on the first seed in both)."""
    whole_config, _, _ = small_study
    config = StudyConfig(tasks=["SST-2"], ks=[16], seeds=[13, 21], fine_tune=[], model="tiny-llama", max_eval=8,
                         runs=tmp_path / "runs", results=tmp_path / "results", kernel_jobs="seed")
    jobs = study_jobs(config)
    assert [j.describe() for j in jobs] == ["kernels SST-2 k=16 seed 13", "kernels SST-2 k=16 seed 21"]
    run_kernels(jobs[0], config, progress=False)  # ... and the machine is lost
    folder = config.results / "SST-2-k16"
    assert job_done(jobs[0], config) and not job_done(jobs[1], config) and not (folder / "results.json").exists()
    assert "| SST-2 | 16 | pending (1 seed recorded) | 0 | 8 |" in report_section(config.results)
    assert run_study(config, progress=False) == [jobs[1]]  # on a new machine: the missing seed only
    assert all(job_done(j, config) for j in jobs) and not (folder / "kernel-seeds").exists()

    combined = json.loads((folder / "results.json").read_text())
    whole = json.loads((whole_config.results / "SST-2-k16" / "results.json").read_text())
    assert combined["seeds"] == [13, 21] and combined["wanda_calibration_seed"] == whole["wanda_calibration_seed"] == 13
    assert {k: v for k, v in combined.items() if k not in ("per_seed", "summary", "timing_s")} == \
        {k: v for k, v in whole.items() if k not in ("per_seed", "summary", "timing_s")}
    for ours, theirs in zip(combined["per_seed"], whole["per_seed"]):
        assert ours["seed"] == theirs["seed"] and ours["accuracy"] == theirs["accuracy"]
        for subset, values in theirs["relative_difference"].items():
            for p, value in values.items():
                np.testing.assert_allclose(ours["relative_difference"][subset][p], value, rtol=1e-10, atol=0)
    for name, values in whole["summary"]["relative_difference"].items():
        np.testing.assert_allclose(combined["summary"]["relative_difference"][name]["p2"]["mean"], values["p2"]["mean"],
                                   rtol=1e-10, atol=0)
    assert combined["summary"]["accuracy"] == whole["summary"]["accuracy"]
    assert combined["timing_s"]["kernels_recorded"] == pytest.approx(
        sum(r["timing_s"]["kernels_s"] for r in combined["per_seed"]), rel=1e-12)
    figures = json.loads((folder / "figure_data.json").read_text())
    expected = json.loads((whole_config.results / "SST-2-k16" / "figure_data.json").read_text())
    assert figures["seed"] == 13 and figures["labels"] == expected["labels"]
    for name in expected["heatmaps"]:
        np.testing.assert_allclose(figures["heatmaps"][name], expected["heatmaps"][name], rtol=1e-5, atol=0)
        np.testing.assert_allclose(figures["spectra"][name], expected["spectra"][name], rtol=1e-5, atol=1e-12)


def _without_timings(results: dict) -> tuple[dict, list[dict]]:
    return ({k: v for k, v in results.items() if k not in ("per_seed", "summary", "timing_s")},
            [{k: v for k, v in r.items() if k != "timing_s"} for r in results["per_seed"]])


def test_split_kernel_jobs_fit_seed_by_seed_and_project_the_evaluation_once(small_study, tmp_path, monkeypatch):
    """``kernel_jobs="split"``: each seed's fit (kernels, λ from dev projections, the chosen directions kept)
    is its own job; the task's evaluation job reads the fits back, with no direction or dev projection
    computed again, and captures the evaluation blocks and their f0 once for both seeds. The records equal
    the one-job run's apart from timings."""
    from ntk_peft.experiments import compare, dev_projections, projections

    calls = {"dev directions": 0, "eval directions": 0, "eval captures": 0, "f0 eval": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(dev_projections, "recorded_directions",
                        counted("dev directions", dev_projections.recorded_directions))
    monkeypatch.setattr(projections, "subset_directions", counted("eval directions", projections.subset_directions))
    monkeypatch.setattr(projections, "capture", counted("eval captures", projections.capture))
    predict = compare.predict_logits
    monkeypatch.setattr(compare, "predict_logits", lambda *a, **kw: (calls.__setitem__(
        "f0 eval", calls["f0 eval"] + (kw.get("desc") == "f0 eval")), predict(*a, **kw))[1])

    whole_config, _, _ = small_study
    config = StudyConfig(tasks=["SST-2"], ks=[16], seeds=[13, 21], fine_tune=[], model="tiny-llama", max_eval=8,
                         runs=tmp_path / "runs", results=tmp_path / "results", kernel_jobs="split")
    jobs = study_jobs(config)
    assert [j.describe() for j in jobs] == ["fit kernels SST-2 k=16 seed 13", "fit kernels SST-2 k=16 seed 21",
                                            "evaluate kernels SST-2 k=16"]
    run_kernels(jobs[0], config, progress=False)  # ... and the machine is lost
    folder = config.results / "SST-2-k16"
    assert job_done(jobs[0], config) and not job_done(jobs[1], config) and not job_done(jobs[2], config)
    assert not (folder / "results.json").exists() and calls["dev directions"] == 1 and calls["f0 eval"] == 0
    other = StudyConfig(**{**config.__dict__, "ablation": False})  # a mark of other kernels does not count
    assert not job_done(study_jobs(other)[0], other)
    assert "| SST-2 | 16 | pending |" in report_section(config.results)  # a fit has no accuracy yet

    stores = config.runs / "kernels" / "SST-2-k16" / "split"
    assert run_study(config, progress=False) == jobs[1:]
    assert calls == {"dev directions": 2, "eval directions": 0, "eval captures": 1, "f0 eval": 1}
    assert not list(stores.rglob("blocks/direction-of-*"))  # the kept directions go once projected
    assert all(job_done(j, config) for j in jobs) and not (folder / "kernel-seeds").exists()
    combined = json.loads((folder / "results.json").read_text())
    whole = json.loads((whole_config.results / "SST-2-k16" / "results.json").read_text())
    assert combined["seeds"] == [13, 21] and combined["eval_predictions"] == "projections"
    assert _without_timings(combined)[0] == _without_timings(whole)[0]
    for ours, theirs in zip(*(_without_timings(r)[1] for r in (combined, whole))):
        assert ours["seed"] == theirs["seed"] and ours["accuracy"] == theirs["accuracy"]
        assert ours["lambda"] == theirs["lambda"]
    assert combined["summary"]["accuracy"] == whole["summary"]["accuracy"]
    figures = json.loads((folder / "figure_data.json").read_text())
    assert figures["seed"] == 13 and figures["labels"] == json.loads(
        (whole_config.results / "SST-2-k16" / "figure_data.json").read_text())["labels"]


def test_split_jobs_take_up_a_task_begun_seed_by_seed(small_study, tmp_path):
    """A task whose first seed was recorded by a per-seed job (``--kernel-jobs seed``) and is then run with
    ``split``: that seed's fit counts as done and the evaluation job scores only the other seed."""
    whole_config, _, _ = small_study
    common = dict(tasks=["SST-2"], ks=[16], seeds=[13, 21], fine_tune=[], model="tiny-llama", max_eval=8,
                  runs=tmp_path / "runs", results=tmp_path / "results")
    run_kernels(StudyJob("kernels", "SST-2", 16, seed=13), StudyConfig(**common, kernel_jobs="seed"), progress=False)
    config = StudyConfig(**common, kernel_jobs="split")
    jobs = study_jobs(config)
    assert job_done(jobs[0], config) and not job_done(jobs[1], config)
    assert run_study(config, progress=False) == jobs[1:]
    assert not (config.runs / "kernels" / "SST-2-k16" / "split" / "seed-13").exists()  # never fitted again
    combined = json.loads((config.results / "SST-2-k16" / "results.json").read_text())
    whole = json.loads((whole_config.results / "SST-2-k16" / "results.json").read_text())
    assert combined["seeds"] == [13, 21] and _without_timings(combined)[0] == _without_timings(whole)[0]
    assert [r["accuracy"] for r in combined["per_seed"]] == [r["accuracy"] for r in whole["per_seed"]]
    assert combined["timing_s"]["kernels_recorded"] == pytest.approx(
        sum(r["timing_s"]["kernels_s"] for r in combined["per_seed"]), rel=1e-12)


def test_cli_runs_a_small_study_and_reports_its_status(tmp_path, capsys):
    from ntk_peft.cli.common import run_cli
    from ntk_peft.cli.peft import main

    argv = ["study", "rocoft", "--tasks", "sst2", "--k", "16", "--seeds", "13", "--fine-tune", "none",
            "--no-ablation", "--model", "tiny-llama", "--max-eval", "6", "--runs", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results")]
    assert run_cli(main, argv) == 0
    out = capsys.readouterr().out
    assert "kernels SST-2 k=16" in out and "1 jobs run" in out
    assert run_cli(main, [*argv, "--status"]) == 0
    assert "done     kernels SST-2 k=16\n1 of 1 jobs done" in capsys.readouterr().out
    assert run_cli(main, [*argv[:2], "--tasks", "cola"]) == 2
    assert "not a task of RoCoFT's tables 5/6" in capsys.readouterr().err
    assert run_cli(main, [*argv, "--kernel-jobs", "seed", "--status"]) == 0  # the task's record counts for its seeds
    assert "done     kernels SST-2 k=16 seed 13\n1 of 1 jobs done" in capsys.readouterr().out
    assert run_cli(main, [*argv, "--kernel-jobs", "task-and-seed"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    results = tmp_path / "results" / "SST-2-k16" / "results.json"
    recorded = json.loads(results.read_text())
    assert run_cli(main, [*argv, "--rescore"]) == 0  # every seed has its counts: nothing rescored
    assert "rescored" not in capsys.readouterr().out
    for entry in recorded["per_seed"]:
        del entry["eval_confusion"]
    results.write_text(json.dumps(recorded))
    lost = tmp_path / "results" / "RTE-k16" / "results.json"  # a record whose kernel stores are gone
    lost.parent.mkdir()
    lost.write_text(json.dumps({**recorded, "task": "RTE"}))
    at = argv.index("--tasks") + 1
    assert run_cli(main, [*argv[:at], "rte,sst2", *argv[at + 1:], "--rescore"]) == 2  # RTE named, SST-2 done
    out, err = capsys.readouterr()
    assert "rescored SST-2 k=16: eval confusion counts added" in out
    assert "not rescored: RTE k=16: seeds [13] have no run folder" in err and err.strip().endswith("(reasons above)")
    assert "eval_confusion" in json.loads(results.read_text())["per_seed"][0]
    assert "eval_confusion" not in json.loads(lost.read_text())["per_seed"][0]


def test_committed_readme_tables_regenerate_bit_identically():
    """The committed README's generated part is exactly what the committed results files give."""
    readme = (COMMITTED / "README.md").read_text()
    assert BEGIN in readme and END in readme
    committed = BEGIN + readme.split(BEGIN, 1)[1].split(END, 1)[0] + END
    assert committed == report_section(COMMITTED)


def test_under_torchrun_two_ranks_give_the_records_of_one_process(tmp_path):
    """Kernel blocks shared over 2 gloo ranks and the fine-tuning runs dealt out (one seed per rank), with
    one kernel job per task or per seed: the records equal one process's, apart from timings."""
    from tests.ntk.test_distributed import torchrun

    argv = ["-m", "ntk_peft.cli.peft", "study", "rocoft", "--tasks", "sst2", "--k", "16", "--seeds", "13,21",
            "--fine-tune", "row1", "--no-ablation", "--model", "tiny-llama", "--max-eval", "6", "--epochs", "1"]
    records = {}
    for nproc, kernel_jobs in ((1, "task"), (2, "task"), (2, "seed"), (2, "split")):
        out = tmp_path / f"p{nproc}-{kernel_jobs}"
        done = torchrun(nproc, *argv, "--runs", str(out / "runs"), "--results", str(out / "results"),
                        "--kernel-jobs", kernel_jobs)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("jobs run; report:") == 1  # rank 0 alone reports
        assert ("fine-tune row1 SST-2 k=16 seed 13; fine-tune row1 SST-2 k=16 seed 21" in done.stdout) == (nproc == 2)
        folder = out / "results" / "SST-2-k16"
        results = json.loads((folder / "results.json").read_text())
        tuning = json.loads((folder / "fine_tuning.json").read_text())
        for run in tuning["runs"]["row1"].values():
            del run["train_seconds"]
        records[nproc, kernel_jobs] = ({k: v for k, v in results.items() if k not in ("timing_s", "per_seed")},
                                       [{k: v for k, v in r.items() if k != "timing_s"} for r in results["per_seed"]],
                                       tuning)
    assert records[2, "task"] == records[1, "task"] == records[2, "seed"] == records[2, "split"]


def test_capture_memory_reaches_the_kernel_pass_and_bad_values_are_refused(tmp_path, capsys, monkeypatch):
    """``--capture-gib`` (study and ntk-compare) becomes `run_kernel_jobs`' ``cache_bytes``; 0, negative or
    non-numeric values end in one line with status 2."""
    from ntk_peft.cli import compare as compare_cli
    from ntk_peft.cli.common import run_cli
    from ntk_peft.cli.peft import main
    from ntk_peft.experiments import compare

    seen = []
    original = compare.run_kernel_jobs
    monkeypatch.setattr(compare, "run_kernel_jobs",
                        lambda jobs, **kw: seen.append(kw["cache_bytes"]) or original(jobs, **kw))
    argv = ["study", "rocoft", "--tasks", "sst2", "--k", "16", "--seeds", "13", "--fine-tune", "none",
            "--no-ablation", "--model", "tiny-llama", "--max-eval", "6", "--runs", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results")]
    assert run_cli(main, [*argv, "--capture-gib", "0.5"]) == 0
    assert seen == [1 << 29]
    assert run_cli(compare_cli.main, ["--task", "sst2", "--subset", "row1", "--model", "tiny-llama", "--k", "4",
                                      "--seeds", "13", "--max-eval", "6", "--no-figures", "--out",
                                      str(tmp_path / "compare"), "--capture-gib", "2"]) == 0
    assert seen == [1 << 29, 2 << 30]
    capsys.readouterr()
    for bad in ("0", "-1", "lots", "inf"):
        assert run_cli(main, [*argv, "--capture-gib", bad]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "expected a positive number" in err
