"""bpforge: load, verify, optimize, offload and partition eBPF programs."""

__version__ = "0.1.0"
