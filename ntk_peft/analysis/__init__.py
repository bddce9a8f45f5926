"""Pure analysis functions (no I/O): kernel comparisons, ΔW rank/spectrum and comparisons, adapter-class
projections and expressivity bounds."""

from ntk_peft.analysis.delta_w import (
    compare_delta_w,
    delta_w_metrics,
    effective_rank_of,
    factored_singular_values,
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
from ntk_peft.analysis.projections import (
    cols_project,
    cp_params,
    cp_project,
    lowrank_project,
    monarch_block_ranks,
    monarch_params,
    monarch_project,
    rows_project,
)

__all__ = ["centered_alignment", "cols_project", "compare_delta_w", "cp_params", "cp_project", "delta_w_metrics", "effective_rank", "effective_rank_of",
           "eigenvalues", "factored_singular_values", "kernel_distance", "lowrank_project", "monarch_block_ranks", "monarch_params",
           "monarch_project", "numerical_rank", "principal_angles", "relative_difference", "rows_project", "singular_values",
           "spectrum_metrics", "working_eps"]
