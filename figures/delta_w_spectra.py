"""ΔW singular value spectra at the end of training, one line per method, from training runs.

    python figures/delta_w_spectra.py RUN_DIR [RUN_DIR ...] [--layer TEXT] [--out FILE]
"""

from ntk_peft.plotting import delta_w_figure_script

if __name__ == "__main__":
    print(delta_w_figure_script("spectra"))
