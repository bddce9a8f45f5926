"""RoCoFT tables 5 and 6 (KLR accuracy, relative kernel differences) from ntk-compare folders, beside the paper.

    python figures/rocoft_tables.py RESULTS_DIR [RESULTS_DIR ...] [--out FILE.md]
"""

import argparse
import json
from pathlib import Path

from ntk_peft.experiments.rocoft_tables import rocoft_table

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="ntk-compare results folders (with results.json)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    table = rocoft_table([json.loads((folder / "results.json").read_text()) for folder in args.folders])
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")
