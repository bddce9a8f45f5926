"""ΔW rank and effective rank over training steps, one line per method (LoRMA figure 7), from training runs.

    python figures/delta_w_rank.py RUN_DIR [RUN_DIR ...] [--out FILE]
"""

from ntk_peft.plotting import delta_w_figure_script

if __name__ == "__main__":
    print(delta_w_figure_script("rank"))
