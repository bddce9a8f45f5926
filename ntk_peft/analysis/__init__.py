"""Pure analysis functions: ΔW rank/spectrum, Monarch/low-rank bounds, kernel metrics."""
