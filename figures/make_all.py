"""Regenerate every figure of the toolkit (same as ``ntk-peft figures``), computing missing results.

    python figures/make_all.py [--results runs] [--out DIR] [--quick] [--kernels DIR] [--train-run DIR ...]
                               [--bounds DIR]
"""

import sys

from ntk_peft.cli.peft import main

if __name__ == "__main__":
    sys.exit(main(["figures", *sys.argv[1:]]))
