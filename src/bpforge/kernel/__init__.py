"""The running kernel's bpf() as an oracle: maps, program loading with the verifier's verdict and log,
BPF_PROG_TEST_RUN, and feature probes. Everything raises KernelUnavailable where bpf() cannot be used.

    syscall   bpf(cmd, attr), per-command attribute structs, kernel_available()
    maps      KernelMap: BPF_MAP_CREATE from a MapDef, the BpfMap API
    btf       the object's BTF and the program's func_info/line_info, as libbpf sends them
    program   load_program / load_insns -> KernelProgram, KernelVerdict, VerifierRejected
    testrun   test_run -> RunResult; xdp_md() / sk_buff() contexts
    probe     prog_type_supported / map_type_supported / helper_supported
"""

from .maps import KernelMap, possible_cpus
from .probe import (
    helper_supported,
    map_type_supported,
    probe_summary,
    prog_type_supported,
)
from .program import (
    KernelProgram,
    KernelVerdict,
    VerifierRejected,
    load_insns,
    load_loaded,
    load_program,
    verify_insns,
    verify_program,
)
from .syscall import KernelUnavailable, LoadResult, bpf, kernel_available, prog_load
from .testrun import (
    RunResult,
    TestRunError,
    parse_sk_buff,
    parse_xdp_md,
    sk_buff,
    test_run,
    xdp_md,
)

__all__ = [
    "KernelMap", "KernelProgram", "KernelUnavailable", "KernelVerdict", "LoadResult", "RunResult",
    "TestRunError", "VerifierRejected", "bpf", "helper_supported", "kernel_available", "load_insns",
    "load_loaded", "load_program", "map_type_supported", "parse_sk_buff", "parse_xdp_md", "possible_cpus",
    "probe_summary", "prog_load", "prog_type_supported", "sk_buff", "test_run", "verify_insns",
    "verify_program", "xdp_md",
]
