"""Empirical NTK engine over parameter subsets (arrives with the eNTK issue)."""
