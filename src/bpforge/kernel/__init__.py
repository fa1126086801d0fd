"""The running kernel's bpf() as an oracle: maps, program loading with the verifier's verdict and log,
BPF_PROG_TEST_RUN, and feature probes. Everything raises KernelUnavailable where bpf() cannot be used.

    syscall   bpf(cmd, attr), per-command attribute structs, kernel_available(), and the one
              BPF_PROG_LOAD (bpf_prog_load -> LoadResult) every program load and probe goes through
    maps      KernelMap: BPF_MAP_CREATE from a MapSpec, the BpfMap API
    btf       the object's BTF and the program's func_info/line_info, as libbpf sends them
    program   load_linked / load_insns / load_loaded -> KernelProgram, KernelVerdict, VerifierRejected
    testrun   test_run -> TestRunResult; xdp_md() / sk_buff() contexts
    probe     prog_type_supported / map_type_supported / helper_supported
    objects   pins (pin, open_pinned_map) and XDP links (attach_xdp -> XdpLink)
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
    load_linked,
    load_loaded,
    verify_insns,
    verify_linked,
)
from .syscall import KernelUnavailable, LoadResult, bpf, bpf_prog_load, kernel_available, prog_load
from .testrun import (
    TestRunError,
    TestRunResult,
    parse_sk_buff,
    parse_xdp_md,
    sk_buff,
    test_run,
    xdp_md,
)

__all__ = [
    "KernelMap", "KernelProgram", "KernelUnavailable", "KernelVerdict", "LoadResult", "TestRunError",
    "TestRunResult", "VerifierRejected", "bpf", "bpf_prog_load", "helper_supported", "kernel_available",
    "load_insns", "load_linked", "load_loaded", "map_type_supported", "parse_sk_buff", "parse_xdp_md",
    "possible_cpus", "probe_summary", "prog_load", "prog_type_supported", "sk_buff", "test_run", "verify_insns",
    "verify_linked", "xdp_md",
]
