"""Triton kernels, each beside its torch reference (a subpackage so it never shadows HF's `kernels`)."""
