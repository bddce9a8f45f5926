"""Pure analysis functions (no I/O): kernel comparisons, ΔW rank/spectrum and comparisons."""

from ntk_peft.analysis.delta_w import (
    compare_delta_w,
    delta_w_metrics,
    effective_rank_of,
    numerical_rank,
    principal_angles,
    singular_values,
    spectrum_metrics,
    working_eps,
)
from ntk_peft.analysis.kernel_metrics import (
    centered_alignment,
    effective_rank,
    eigenvalues,
    kernel_distance,
    relative_difference,
)

__all__ = ["centered_alignment", "compare_delta_w", "delta_w_metrics", "effective_rank", "effective_rank_of",
           "eigenvalues", "kernel_distance", "numerical_rank", "principal_angles", "relative_difference", "singular_values",
           "spectrum_metrics", "working_eps"]
