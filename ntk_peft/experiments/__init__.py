"""End-to-end studies built from the other subpackages (tasks → models → ntk → solvers → analysis)."""

from ntk_peft.experiments.compare import default_out, format_table, run_compare, run_seed

__all__ = ["default_out", "format_table", "run_compare", "run_seed"]
