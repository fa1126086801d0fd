"""What this kernel supports: program types, map types and helpers, each found by asking the kernel for the
smallest thing that needs it (as bpftool's `feature probe` does). Every answer is cached: a probe costs one
syscall the first time and nothing after. Tests use these to skip with a reason instead of failing.
"""

from __future__ import annotations

import errno
from functools import cache

from ..errors import BpforgeError
from ..isa import Insn, encode
from ..isa.helpers import helper_id, helper_name
from ..isa.maptypes import BPF_F_NO_PREALLOC, MAP_TYPE_IDS, MapError, MapSpec
from ..isa.progtypes import PROG_TYPES, check_prog_type
from .maps import KernelMap
from .syscall import bpf_prog_load, close_fd, kernel_available

_RETURN_0 = [Insn.make("mov64_imm", dst=0, imm=0), Insn.make("exit")]
# Map types whose creation needs other than (key 4, value 8, 1 entry): key, value, entries, flags.
_MAP_SHAPES = {
    "ringbuf": (0, 0, 4096, 0), "user_ringbuf": (0, 0, 4096, 0), "queue": (0, 8, 1, 0), "stack": (0, 8, 1, 0),
    "bloom_filter": (0, 8, 1, 0), "lpm_trie": (8, 8, 1, BPF_F_NO_PREALLOC), "prog_array": (4, 4, 1, 0),
    "perf_event_array": (4, 4, 1, 0), "cgroup_array": (4, 4, 1, 0), "devmap": (4, 4, 1, 0),
    "devmap_hash": (4, 4, 1, 0), "cpumap": (4, 4, 1, 0), "xskmap": (4, 4, 1, 0), "sockmap": (4, 4, 1, 0),
    "sockhash": (4, 4, 1, 0), "reuseport_sockarray": (4, 4, 1, 0),
    "cgroup_storage": (16, 8, 0, 0), "percpu_cgroup_storage": (16, 8, 0, 0),
}


def _probe_spec(type_name: str) -> MapSpec:
    """The smallest map of a type that the kernel creates."""
    key, value, entries, flags = _MAP_SHAPES.get(type_name, (4, 8, 1, 0))
    return MapSpec.of(type_name, key, value, entries, flags, name=f"probe_{type_name}"[:15], source="probe")


def _unavailable() -> bool:
    return kernel_available() is not None


@cache
def prog_type_supported(prog_type: str) -> bool:
    """Whether the kernel loads a program of this type that returns 0 (types that need an attach target or
    BTF to load at all, such as tracing or struct_ops, report False)."""
    name = check_prog_type(prog_type)
    type_id = PROG_TYPES[name]
    if type_id is None or _unavailable():
        return False
    result = bpf_prog_load(encode(_RETURN_0), type_id, log_level=0)
    close_fd(result.fd)
    return result.fd is not None


@cache
def map_type_supported(type_name: str) -> bool:
    """Whether the kernel creates a small map of this type (map types that need BTF or special set-up, such
    as struct_ops, storage maps or arenas, report False)."""
    if type_name not in MAP_TYPE_IDS or _unavailable():
        return False
    try:
        KernelMap.create(_probe_spec(type_name)).close()
    except MapError:
        return False
    return True


@cache
def helper_supported(helper: int | str, prog_type: str = "xdp") -> bool:
    """Whether programs of `prog_type` may call `helper` (id or name, with or without "bpf_"). The probe
    calls it with no arguments set up: a complaint about arguments means the helper is there; "invalid
    func", "unknown func" or "cannot use helper" means it is not."""
    number = helper if isinstance(helper, int) else helper_id(helper.removeprefix("bpf_"))
    if number is None or helper_name(number) is None:
        raise BpforgeError(f"unknown helper {helper!r}")
    type_id = PROG_TYPES[check_prog_type(prog_type)]
    if type_id is None or _unavailable():
        return False
    code = encode([Insn.make("call", imm=number)] + _RETURN_0)
    result = bpf_prog_load(code, type_id, log_level=1, log_size=1 << 16)
    close_fd(result.fd)
    if result.fd is not None:
        return True
    log = result.log
    missing = ("invalid func " in log or "unknown func " in log or "cannot use helper" in log
               or "program of this type cannot use" in log or result.errno == errno.ENOSPC or result.log_truncated)
    return not missing


def probe_summary(prog_types: tuple[str, ...] = ("socket_filter", "sched_cls", "xdp"),
                  map_types: tuple[str, ...] = ("hash", "array", "prog_array", "percpu_hash", "percpu_array",
                                                "lru_hash", "lru_percpu_hash", "lpm_trie", "ringbuf")) -> dict:
    """{"available": reason|None, "prog_types": {...: bool}, "map_types": {...: bool}} for reports."""
    return {"available": kernel_available(),
            "prog_types": {p: prog_type_supported(p) for p in prog_types},
            "map_types": {m: map_type_supported(m) for m in map_types}}


__all__ = ["helper_supported", "map_type_supported", "probe_summary", "prog_type_supported"]
