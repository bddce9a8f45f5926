"""Compute kernels, each beside its torch reference.

A subpackage, so it never shadows Hugging Face's top-level ``kernels`` package.
"""

from ntk_peft.kernels.monarch import monarch_matmul, monarch_matmul_reference, monarch_triton_calls, use_triton

__all__ = ["monarch_matmul", "monarch_matmul_reference", "monarch_triton_calls", "use_triton"]
