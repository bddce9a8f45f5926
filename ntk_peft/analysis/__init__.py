"""Pure analysis functions (no I/O): kernel comparisons now; ΔW rank/spectrum and
Monarch/low-rank bounds with their issues."""

from ntk_peft.analysis.kernel_metrics import centered_alignment, effective_rank, eigenvalues, relative_difference

__all__ = ["centered_alignment", "effective_rank", "eigenvalues", "relative_difference"]
