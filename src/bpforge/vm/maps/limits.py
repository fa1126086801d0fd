"""How big a map may be: the kernel's size limits (x86_64 constants) and the memory it would allocate at
BPF_MAP_CREATE, so that the interpreter refuses what the kernel refuses, with its errno, before anything is
allocated.

The kernel allocates a map's memory when it is created (a preallocated hash map's elements, an array's
values, a queue's ring) and fails with ENOMEM when the machine cannot give that much. The interpreter
allocates lazily, as elements are touched; it refuses, with ENOMEM, a map whose creation would make the
kernel allocate more than `VM_MAP_MEMORY_LIMIT` bytes, so that a definition never turns into gigabytes of
Python objects later. (A kernel on a big machine accepts maps up to its free memory; such a map is
reported as too big for the interpreter, never silently shrunk.)
"""

from __future__ import annotations

import errno

from .base import check_create

KMALLOC_MAX_SIZE = 1 << 22  # 1 << (MAX_PAGE_ORDER + PAGE_SHIFT): the biggest kmalloc, 4 MiB
PCPU_MIN_UNIT_SIZE = 32768  # a per-CPU value (rounded up to 8) may not be bigger
INT_MAX = (1 << 31) - 1
U16_MAX = 0xFFFF
MAX_BPF_STACK = 512
HTAB_ELEM_SIZE = 48  # sizeof(struct htab_elem), before the key and the value
HTAB_BUCKET_SIZE = 16  # sizeof(struct bucket)
LPM_DATA_SIZE_MAX = 256
LPM_NODE_SIZE = 24  # sizeof(struct lpm_trie_node), before the data
LOCAL_STORAGE_ELEM_SIZE = 128  # sizeof(struct bpf_local_storage_elem)
# BPF_LOCAL_STORAGE_MAX_VALUE_SIZE: sk/cgroup local storage values.
LOCAL_STORAGE_MAX_VALUE = min(KMALLOC_MAX_SIZE - MAX_BPF_STACK - LOCAL_STORAGE_ELEM_SIZE,
                              U16_MAX - LOCAL_STORAGE_ELEM_SIZE)
VM_MAP_MEMORY_LIMIT = 1 << 30


def round8(size: int) -> int:
    return (size + 7) & ~7


def check_memory(name: str, type_name: str, kernel_bytes: int) -> None:
    """ENOMEM for a map whose creation would allocate more than the interpreter's limit."""
    check_create(name, type_name, kernel_bytes <= VM_MAP_MEMORY_LIMIT,
                 f"the kernel would allocate {kernel_bytes} bytes for it at creation; the interpreter refuses "
                 f"maps above {VM_MAP_MEMORY_LIMIT} bytes", errno.ENOMEM)
