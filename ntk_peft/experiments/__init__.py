"""End-to-end studies built from the other subpackages (tasks → models → ntk → solvers → analysis)."""

from ntk_peft.experiments.any_model import compare_subsets
from ntk_peft.experiments.compare import default_out, fit_seed, format_table, run_compare, score_with_kernels
from ntk_peft.experiments.projections import score_with_projections
from ntk_peft.experiments.rocoft_report import report_section, write_report
from ntk_peft.experiments.rocoft_study import StudyConfig, run_study, study_jobs
from ntk_peft.experiments.rocoft_tables import rocoft_table
from ntk_peft.experiments.study_clock import StudyClock

__all__ = [
    "StudyClock", "StudyConfig", "compare_subsets", "default_out", "fit_seed", "format_table", "report_section",
    "rocoft_table", "run_compare", "run_study", "score_with_kernels", "score_with_projections", "study_jobs",
    "write_report",
]
