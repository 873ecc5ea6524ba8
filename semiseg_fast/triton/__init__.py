"""Triton kernels: the CUDA path of every op (and, with TRITON_INTERPRET=1, a CPU-testable one)."""
