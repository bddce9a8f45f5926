"""Kernels and ntk-compare over torch.distributed (gloo, processes spawned by torchrun) equal one process.

Every process runs one thread (torchrun's default, and the worker sets it), so
the arithmetic of a block does not depend on how many processes share the work
and the kernels compare bitwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ntk_peft.ntk import KernelStore

WORKER = Path(__file__).with_name("distributed_worker.py")


def torchrun(nproc: int, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NTK_PEFT_BACKEND": "gloo"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    done = torchrun(1, str(WORKER), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(str(out / "rank-0.safetensors")), out


@pytest.mark.parametrize("nproc", [2, 3])
def test_kernels_from_several_ranks_equal_one_process_bitwise(one_process, tmp_path, nproc):
    reference, reference_out = one_process
    done = torchrun(nproc, str(WORKER), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in range(nproc):  # every rank returns the whole kernels, stored or exchanged in memory
        got = load_file(str(tmp_path / f"rank-{rank}.safetensors"))
        assert got.keys() == reference.keys()
        for key in reference:
            assert torch.equal(got[key], reference[key]), (rank, key)
    blocks = sorted(p.name for p in (tmp_path / "store" / "blocks").iterdir())
    assert blocks == sorted(p.name for p in (reference_out / "store" / "blocks").iterdir())
    assert len(blocks) == 10 + 12  # 4 blocks: 10 unordered pairs; 4 x 3 cross pairs; no temporary file left
    store = KernelStore(tmp_path / "store", {})  # no identity keys given: opens any store
    ranks = {store.block_metadata(*_key(name))["rank"] for name in blocks}
    assert ranks == {str(r) for r in range(nproc)}  # every rank did part of the work


def _key(file_name: str) -> tuple[str, int, int]:
    name, i, j = file_name[: -len(".safetensors")].rsplit("-", 2)
    return name, int(i), int(j)


def test_killed_rank_then_rerun_completes_identically_computing_only_missing_blocks(one_process, tmp_path):
    reference, _ = one_process
    killed = torchrun(2, str(WORKER), str(tmp_path), "--kill-after", "2")
    assert killed.returncode != 0
    blocks = tmp_path / "store" / "blocks"
    before = {p.name: p.stat().st_mtime_ns for p in blocks.iterdir()}
    assert 2 <= len(before) < 22 and all(name.endswith(".safetensors") for name in before)
    done = torchrun(2, str(WORKER), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in blocks.iterdir()}
    assert len(after) == 22
    assert {name: after[name] for name in before} == before  # blocks found were read back, not rewritten
    got = load_file(str(tmp_path / "rank-0.safetensors"))
    for key in reference:
        assert torch.equal(got[key], reference[key]), key


def test_two_processes_racing_on_one_store_never_corrupt_it(one_process, tmp_path):
    """No process group: both compute every block of the same store at once; every block stays whole."""
    reference, _ = one_process
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    store = tmp_path / "store"
    racers = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / f"racer{k}"), "--store", str(store)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
    for racer in racers:
        _, err = racer.communicate(timeout=600)
        assert racer.returncode == 0, err[-3000:]
    names = sorted(p.name for p in (store / "blocks").iterdir())
    assert len(names) == 22 and all(n.endswith(".safetensors") for n in names)  # no temporary file left behind
    for k in range(2):
        got = load_file(str(tmp_path / f"racer{k}" / "rank-0.safetensors"))
        for key in reference:
            assert torch.equal(got[key], reference[key]), (k, key)
    meta = json.loads((store / "meta.json").read_text())
    assert set(meta["kernels"]) == {"train", "eval"}


@pytest.mark.parametrize("dev", ["kernels", "projections"])
def test_ntk_compare_under_torchrun_writes_the_results_of_one_process(tmp_path, dev):
    argv = ["-m", "ntk_peft.cli.compare", "--task", "sst2", "--subset", "row1", "--subset", "lora1",
            "--model", "tiny-llama", "--k", "4", "--seeds", "13,21", "--max-eval", "24", "--block-size", "4",
            "--no-figures", "--dev-predictions", dev]
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"p{nproc}"
        done = torchrun(nproc, *argv, "--out", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("K_row1" in done.stdout) and done.stdout.count("results:") == 1  # rank 0 alone prints
        assert (f"rank 0 of {nproc}" in done.stderr) == (nproc > 1)
        results[nproc] = json.loads((out / "results.json").read_text())
    strip = lambda r: {k: v for k, v in r.items() if k not in ("timing_s", "per_seed")}  # noqa: E731
    assert strip(results[2]) == strip(results[1])
    for one, two in zip(results[1]["per_seed"], results[2]["per_seed"]):
        assert {k: v for k, v in two.items() if k != "timing_s"} == {k: v for k, v in one.items() if k != "timing_s"}
    assert results[1]["dev_predictions"] == dev
    # the kernels themselves (or the dev projections that stand in for the dev kernels), bitwise
    for pattern in ("train-[0-9]*", "dev-[0-9]*" if dev == "kernels" else "dev-projections-*"):
        for seed in (13, 21):
            one = sorted((tmp_path / "p1" / f"seed-{seed}" / "blocks").glob(pattern))
            two = sorted((tmp_path / "p2" / f"seed-{seed}" / "blocks").glob(pattern))
            assert [p.name for p in one] == [p.name for p in two] and one
            for a, b in zip(one, two):
                left, right = load_file(str(a)), load_file(str(b))
                assert all(torch.equal(left[k], right[k]) for k in left)


def test_a_bad_argument_under_torchrun_ends_every_rank_with_the_one_line_error(tmp_path):
    done = torchrun(2, "-m", "ntk_peft.cli.compare", "--task", "nosuch", "--subset", "row1", "--model", "tiny-llama",
                    "--out", str(tmp_path), timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("ntk-compare: error:")
             or "error: unknown task" in line]
    assert len(lines) >= 2 and all("nosuch" in line for line in lines)  # one per rank, no hang


AGREED_SCRIPT = """
import sys
from ntk_peft.cli.common import run_cli
from ntk_peft.errors import UserError
from ntk_peft.ntk import distributed


def main(argv):
    distributed.init_from_env()

    def check():
        if distributed.rank() == 1:  # the last rank, and the only one that finds anything wrong
            raise UserError("rank 1 alone finds this wrong")
        return "fine"

    try:
        distributed.agreed(check)
        print("went on", flush=True)
    finally:
        distributed.shutdown(wait=True)


sys.exit(run_cli(main, prog="agreed"))
"""


def test_an_error_on_one_rank_in_an_agreed_step_stops_every_rank_with_its_line(tmp_path):
    script = tmp_path / "agreed.py"
    script.write_text(AGREED_SCRIPT)
    done = torchrun(2, str(script), timeout=300)
    assert done.returncode != 0 and "went on" not in done.stdout  # rank 0 did not go on past the check
    lines = [line for line in done.stderr.splitlines() if line.startswith("agreed: error:")]
    assert lines == ["agreed: error: rank 1 alone finds this wrong"] * 2, done.stderr[-3000:]


def test_an_agreed_step_in_one_process_is_the_step_itself():
    from ntk_peft.errors import UserError
    from ntk_peft.ntk import distributed

    assert distributed.agreed(lambda: 7) == 7

    def fails():
        raise UserError("as it was")

    with pytest.raises(UserError, match="as it was") as caught:
        distributed.agreed(fails)
    assert type(caught.value) is UserError  # raised as it is, not re-made


def test_the_documented_multi_node_command_with_two_nodes_on_this_machine(one_process, tmp_path):
    """README's N-machine line with N = 2 (both 'nodes' here, on loopback), --out on the shared folder."""
    import socket

    reference, _ = one_process
    with socket.socket() as probe:  # a free port for node 0's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NTK_PEFT_BACKEND": "gloo"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={rank}",
                               "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}", str(WORKER),
                               str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    for rank in (0, 1):
        got = load_file(str(tmp_path / f"rank-{rank}.safetensors"))
        assert all(torch.equal(got[key], reference[key]) for key in reference)
