"""``--time-limit``: the study's jobs timed by a projection and started only when they fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ntk_peft.errors import UserError
from ntk_peft.experiments import rocoft_study, study_clock
from ntk_peft.experiments.rocoft_study import StudyConfig, StudyJob, run_study
from ntk_peft.experiments.study_clock import StudyClock, load_projection, parse_duration, projected_seconds

ROW = {"task": "mr", "k": 64, "kernels_s": 250.0, "kernels_per_seed_s": 100.0,
       "evaluation_s": {"capture": 30.0, "projection": 20.0},
       "fine_tuning_run_s": {"full": 50.0, "lora1": 40.0, "row1": 30.0}}


def test_durations_read_as_batch_schedulers_write_them():
    assert parse_duration("2h40m") == parse_duration("160m") == parse_duration("02:40") == 9600.0
    assert parse_duration("1.5h") == parse_duration("90") == parse_duration("5400s") == 5400.0
    assert parse_duration("0:01:30") == parse_duration("1m30s") == 90.0
    for bad in ("soon", "2x", "1h 2q", "", "0m", "1:2:3:4", "h"):
        with pytest.raises(UserError, match="time limit"):
            parse_duration(bad)


def test_each_kind_of_job_takes_its_share_of_the_projection():
    seconds = {job.describe(): projected_seconds(job, ROW, seeds=5, unscored=2) for job in [
        StudyJob("kernels", "mr", 64), StudyJob("kernels", "mr", 64, seed=13), StudyJob("fit", "mr", 64, seed=13),
        StudyJob("evaluate", "mr", 64), StudyJob("train", "mr", 64, "lora1", 13)]}
    assert seconds == {"kernels mr k=64": 250.0, "kernels mr k=64 seed 13": 100.0 + 30.0 + 20.0 / 5,
                       "fit kernels mr k=64 seed 13": 100.0, "evaluate kernels mr k=64": 30.0 + 20.0 * 2 / 5,
                       "fine-tune lora1 mr k=64 seed 13": 40.0}


def test_a_projection_file_is_read_by_task_and_k_and_bad_ones_are_named(tmp_path):
    path = tmp_path / "projection.json"
    path.write_text(json.dumps({"rows": [ROW]}))
    assert load_projection(path) == {("mr", 64): ROW}
    with pytest.raises(UserError, match="no such projection file"):
        load_projection(tmp_path / "missing.json")
    path.write_text(json.dumps({"total_h": 1.0}))
    with pytest.raises(UserError, match="not a projection"):
        load_projection(path)
    clock = StudyClock(60.0, {("mr", 64): ROW}, seeds=5)
    with pytest.raises(UserError, match="no row for SST-2 k=16: run benchmarks/bench_rocoft_study.py"):
        clock.check_rows([StudyJob("kernels", "mr", 64), StudyJob("kernels", "SST-2", 16)])


class FakeTime:
    """A clock that moves only when a fake job runs."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    perf_counter = monotonic


@pytest.fixture
def fake_jobs(monkeypatch):
    """Jobs that take ``slowness[kind]`` times their projection on a fake clock; returns the run order."""
    fake, ran, slowness = FakeTime(), [], {"kernels": 1.0, "fine-tuning": 1.0}
    monkeypatch.setattr(study_clock, "time", fake)
    monkeypatch.setattr(rocoft_study, "time", fake)

    def run(jobs, kind, config):  # no seed is recorded, so an evaluation job scores them all
        ran.extend(jobs)
        seeds = len(config.seeds)
        fake.now += max(projected_seconds(j, ROW, seeds, unscored=seeds) for j in jobs) * slowness[kind]

    monkeypatch.setattr(rocoft_study, "run_kernels", lambda job, config, progress: run([job], "kernels", config))
    monkeypatch.setattr(rocoft_study, "run_training", lambda jobs, config, progress: run(jobs, "fine-tuning", config))
    return fake, ran, slowness


def _study(tmp_path, kernel_jobs, fine_tune):
    return StudyConfig(tasks=["mr"], ks=[64], seeds=[13, 21], fine_tune=fine_tune, kernel_jobs=kernel_jobs,
                       runs=tmp_path / "runs", results=tmp_path / "results")


def test_jobs_that_do_not_fit_wait_and_the_ones_after_them_run(tmp_path, fake_jobs, capsys):
    """Split fits start only with room for the task's other fits and its evaluation (100 + 100 + 50 s);
    in 200 s the four fine-tuning runs go first and the study stops with that chain named."""
    fake, ran, _ = fake_jobs
    config = _study(tmp_path, "split", ["full", "lora1"])
    clock = StudyClock(200.0, {("mr", 64): ROW}, seeds=2)
    done = run_study(config, progress=False, clock=clock)
    assert [j.describe() for j in done] == [j.describe() for j in ran] == [
        "fine-tune full mr k=64 seed 13", "fine-tune full mr k=64 seed 21",
        "fine-tune lora1 mr k=64 seed 13", "fine-tune lora1 mr k=64 seed 21"]
    out = capsys.readouterr().out
    assert "[1/7] fine-tune full mr k=64 seed 13 (expected 1 min, 3 min left)" in out
    assert out.strip().endswith("time limit: stopping with 3 jobs left; the next, fit kernels mr k=64 seed 13, needs "
                                "about 4 min (more than the whole limit; --kernel-jobs seed records each seed on its "
                                "own), 0 min left")
    assert fake.now == 1000.0 + 180.0

    ran.clear()
    done = run_study(config, progress=False, clock=StudyClock(260.0, {("mr", 64): ROW}, seeds=2))
    assert [j.describe() for j in done][:3] == ["fit kernels mr k=64 seed 13", "fit kernels mr k=64 seed 21",
                                                "evaluate kernels mr k=64"]  # the chain fits: it runs first


def test_measured_times_scale_the_projection_of_the_jobs_of_their_kind(tmp_path, fake_jobs, capsys):
    """Fine-tuning runs taking twice their projection make the next one expected at 100 s, not 50 s;
    the kernels, on time, keep theirs."""
    fake, ran, slowness = fake_jobs
    slowness["fine-tuning"] = 2.0
    config = _study(tmp_path, "seed", ["full"])
    clock = StudyClock(400.0, {("mr", 64): ROW}, seeds=2)  # a seed's kernels: 100 + 30 + 20 / 2 = 140 s
    done = run_study(config, progress=False, clock=clock)
    assert [j.describe() for j in done] == ["kernels mr k=64 seed 13", "kernels mr k=64 seed 21",
                                            "fine-tune full mr k=64 seed 13"]
    assert clock.ratios == {"kernels": [1.0, 1.0], "fine-tuning": [2.0]}
    assert clock.expected(StudyJob("train", "mr", 64, "full", 21), 2) == 100.0
    assert capsys.readouterr().out.strip().endswith(
        "the next, fine-tune full mr k=64 seed 21, needs about 2 min, 0 min left")
    assert fake.now == 1000.0 + 140.0 * 2 + 100.0


def test_cli_time_limit_errors_are_one_line(tmp_path, capsys):
    from ntk_peft.cli.common import run_cli
    from ntk_peft.cli.peft import main

    argv = ["study", "rocoft", "--tasks", "sst2", "--k", "16", "--seeds", "13", "--fine-tune", "none",
            "--no-ablation", "--model", "tiny-llama", "--max-eval", "6", "--runs", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results")]
    projection = tmp_path / "projection.json"
    projection.write_text(json.dumps({"rows": [ROW]}))
    for extra, message in [(["--time-limit", "soon"], "a time limit is like 2h40m"),
                           (["--job-costs", str(projection)], "--job-costs goes with --time-limit"),
                           (["--time-limit", "1h"], "no such projection file"),  # RESULTS/bench_study_cpu_dev_...
                           (["--time-limit", "1h", "--job-costs", str(projection)], "no row for SST-2 k=16")]:
        assert run_cli(main, [*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err


def test_a_job_resuming_stored_work_does_not_scale_the_others(tmp_path, fake_jobs, capsys):
    """Seed 13's kernel job finds blocks a stopped run left: it is expected to take its whole projection,
    says it resumes, and its (short) seconds are not taken as the kernels' pace; seed 21's are."""
    fake, ran, slowness = fake_jobs
    slowness["kernels"] = 0.5
    config = _study(tmp_path, "seed", [])
    stopped = rocoft_study.kernel_folder(StudyJob("kernels", "mr", 64, seed=13), config) / "seed-13" / "blocks"
    stopped.mkdir(parents=True)
    (stopped / "train-0-0.safetensors").write_bytes(b"")
    clock = StudyClock(400.0, {("mr", 64): ROW}, seeds=2)
    done = run_study(config, progress=False, clock=clock)
    assert [j.describe() for j in done] == ["kernels mr k=64 seed 13", "kernels mr k=64 seed 21"]
    assert clock.ratios == {"kernels": [0.5]}
    out = capsys.readouterr().out
    assert "[1/2] kernels mr k=64 seed 13 (resuming, at most 2 min, 7 min left)" in out
    assert "[2/2] kernels mr k=64 seed 21 (expected 2 min, 6 min left)" in out


def test_stored_work_is_looked_for_where_each_kind_of_job_keeps_it(tmp_path):
    config = _study(tmp_path, "split", ["full"])
    fit13, fit21 = StudyJob("fit", "mr", 64, seed=13), StudyJob("fit", "mr", 64, seed=21)
    evaluate, train = StudyJob("evaluate", "mr", 64), StudyJob("train", "mr", 64, "full", 13)
    jobs = [fit13, fit21, evaluate, train, StudyJob("kernels", "mr", 64)]
    assert not any(rocoft_study.resumes_stored_work(job, config) for job in jobs)
    split = rocoft_study.kernel_folder(fit13, config)
    (split / "seed-13" / "blocks").mkdir(parents=True)
    assert not rocoft_study.resumes_stored_work(fit13, config)  # an empty folder holds no work
    (split / "seed-13" / "blocks" / "dev-0-0.safetensors").write_bytes(b"")
    assert [rocoft_study.resumes_stored_work(job, config) for job in jobs] == [True, False, False, False, False]
    (split / "eval-projections").mkdir()
    (split / "eval-projections" / "part-0.safetensors").write_bytes(b"")
    train_folder = Path(rocoft_study.train_config(train, config).out)
    train_folder.mkdir(parents=True)
    (train_folder / "checkpoint.pt").write_bytes(b"")
    assert [rocoft_study.resumes_stored_work(job, config) for job in jobs] == [True, False, True, True, False]
