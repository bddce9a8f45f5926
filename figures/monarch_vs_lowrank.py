"""Relative error against parameter count for every adapter class, from an `ntk-peft bounds` folder.

    python figures/monarch_vs_lowrank.py BOUNDS_DIR [--out FILE]
"""

from ntk_peft.plotting import bounds_figure_script

if __name__ == "__main__":
    print(bounds_figure_script())
