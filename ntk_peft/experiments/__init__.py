"""End-to-end studies built from the other subpackages (tasks → models → ntk → solvers → analysis)."""

from ntk_peft.experiments.compare import format_table, run_compare, run_seed

__all__ = ["format_table", "run_compare", "run_seed"]
