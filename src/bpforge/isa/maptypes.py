"""Map types and the map API shared by the interpreter's maps and the kernel's (uapi `enum bpf_map_type`,
update flags, and the errors both report the same way)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import Protocol

from ..errors import BpforgeError

MAP_TYPES = (
    "unspec", "hash", "array", "prog_array", "perf_event_array", "percpu_hash", "percpu_array", "stack_trace",
    "cgroup_array", "lru_hash", "lru_percpu_hash", "lpm_trie", "array_of_maps", "hash_of_maps", "devmap",
    "sockmap", "cpumap", "xskmap", "sockhash", "cgroup_storage", "reuseport_sockarray", "percpu_cgroup_storage",
    "queue", "stack", "sk_storage", "devmap_hash", "struct_ops", "ringbuf", "inode_storage", "task_storage",
    "bloom_filter", "user_ringbuf", "cgrp_storage", "arena",
)  # enum bpf_map_type, spelled as bpftool prints it
MAP_TYPE_IDS = {name: number for number, name in enumerate(MAP_TYPES)}
PERCPU_TYPES = frozenset({"percpu_hash", "percpu_array", "lru_percpu_hash", "percpu_cgroup_storage"})

# Update flags (bpf_map_update_elem's last argument).
BPF_ANY, BPF_NOEXIST, BPF_EXIST, BPF_F_LOCK = 0, 1, 2, 4
# Map creation flags that change behaviour the interpreter models.
BPF_F_NO_PREALLOC, BPF_F_NO_COMMON_LRU, BPF_F_RDONLY_PROG, BPF_F_WRONLY_PROG = 0x1, 0x2, 0x80, 0x100


def round8(size: int) -> int:
    """A per-CPU value's stride in the syscall ABI: each CPU's value rounded up to 8 bytes."""
    return (size + 7) & ~7


def split_cpu_values(value: bytes, value_size: int, num_cpus: int) -> list[bytes]:
    """A per-CPU map's syscall value split into each CPU's `value_size` bytes (the 8-byte padding dropped)."""
    step = round8(value_size)
    return [value[i * step:i * step + value_size] for i in range(num_cpus)]


def check_value_size(name: str, value: bytes, value_size: int, percpu_cpus: int | None) -> None:
    """EINVAL unless `value` has the syscall's size: value_size, or for a per-CPU map (percpu_cpus given)
    every CPU's value rounded up to 8 bytes."""
    expected = value_size if percpu_cpus is None else percpu_cpus * round8(value_size)
    if len(value) != expected:
        per = f" ({percpu_cpus} CPUs x {round8(value_size)} bytes)" if percpu_cpus is not None else ""
        raise MapError(errno.EINVAL, f"map '{name}': value must be {expected} bytes{per}, got {len(value)}")


def map_type_name(number: int) -> str:
    return MAP_TYPES[number] if 0 <= number < len(MAP_TYPES) else f"unknown({number})"


class MapError(BpforgeError):
    """A map operation refused, with the errno the kernel gives for it (ENOENT, EEXIST, E2BIG, EINVAL...)."""

    def __init__(self, err: int, message: str = "", **where):
        self.errno = err
        super().__init__(message or f"{errno.errorcode.get(err, err)}: {os.strerror(err)}", **where)


class BpfMap(Protocol):
    """What both the interpreter's maps and the kernel's maps offer to Python code (keys and values as bytes;
    a per-CPU map's value is the concatenation of every CPU's value, each rounded up to 8 bytes, as in the
    syscall ABI)."""

    name: str
    type_name: str
    key_size: int
    value_size: int
    max_entries: int

    def lookup(self, key: bytes) -> bytes | None: ...

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def keys(self) -> Iterator[bytes]: ...

    def items(self) -> Iterator[tuple[bytes, bytes]]: ...
