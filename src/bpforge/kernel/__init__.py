"""The running kernel's bpf() as an oracle: load programs into the real verifier (more in later work)."""

from .syscall import KernelUnavailable, LoadResult, kernel_available, prog_load

__all__ = ["KernelUnavailable", "LoadResult", "kernel_available", "prog_load"]
