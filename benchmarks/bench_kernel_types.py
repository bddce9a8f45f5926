"""Cost of the SignGD kernels against the eNTK on SmolLM2: one 16 x 16 block pair of SST-2 prompts.

Both blocks are recorded once (the passes are shared by every kernel type and
not timed here; their time is reported as ``capture_s``). Then for each subset
and kernel type the block kernel is timed (median of ``--repeats`` after a
warm-up): ``ntk`` on the label logits (what ``ntk-compare`` computes for it),
and ``ntk``/``signgd``/``asymmetric_signgd`` on the logit difference (the sign
kernels' output; the asymmetric type computes both orientations, as a blocked
run stores them). Ratios are to the label-logit NTK of the same subset. Sign
kernels materialise per-example gradients layer by layer, where the NTK uses
token Grams; peak memory is the process's peak RSS after each row.

Usage::

    python benchmarks/bench_kernel_types.py [--subsets full,row1,col1,lora1] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from timing import median_seconds


def measure(subsets: list[str], repeats: int) -> dict:
    from ntk_peft import load_model
    from ntk_peft.adapters import parse_spec
    from ntk_peft.ntk import capture, subset_params
    from ntk_peft.ntk.fast import fast_kernel
    from ntk_peft.ntk.kernel_types import KernelType, output_map
    from ntk_peft.tasks import load_split, make_batch

    model, tok = load_model("smollm2-135m")
    for p in model.parameters():
        p.requires_grad_(False)
    split = load_split("sst2", 16, 42)
    start = time.perf_counter()
    left = capture(model, make_batch(tok, "sst2", split.train[:16]))
    right = capture(model, make_batch(tok, "sst2", split.eval[:16]))
    capture_s = time.perf_counter() - start
    difference = output_map("difference", 2)
    left_d, right_d = left.with_outputs(difference), right.with_outputs(difference)
    rows = []
    with torch.no_grad():
        for spec in subsets:
            sub = subset_params(model, parse_spec(spec))
            row = {"subset": spec, "parameters": sub.size}
            row["ntk_labels_s"] = median_seconds(lambda: fast_kernel(model, sub, left, right), repeats)
            for kernel in KernelType:
                row[f"{kernel.value}_s"] = median_seconds(lambda k=kernel: fast_kernel(
                    model, sub, left_d, right_d, kernel=k, with_flip=not k.symmetric), repeats)
                row[f"{kernel.value}_ratio"] = row[f"{kernel.value}_s"] / row["ntk_labels_s"]
            row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"capture_s": capture_s, "threads": torch.get_num_threads(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subsets", default="full,row1,col1,lora1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    result = measure(args.subsets.split(","), args.repeats)
    print(f"capture of both blocks (shared by every kernel type): {result['capture_s']:.1f} s")
    print(f"{'subset':<8}{'NTK labels s':>14}{'NTK diff':>10}{'signgd':>10}{'asym':>10}  (ratios to NTK labels)")
    for row in result["rows"]:
        print(f"{row['subset']:<8}{row['ntk_labels_s']:>14.2f}{row['ntk_ratio']:>10.2f}{row['signgd_ratio']:>10.2f}"
              f"{row['asymmetric_signgd_ratio']:>10.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
