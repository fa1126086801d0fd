"""Local storage maps (kernel/bpf/local_storage.c, net/core/bpf_sk_storage.c): cgroup_storage,
percpu_cgroup_storage and sk_storage. Their values belong to something else (a cgroup a program is
attached to, a socket), so what exists depends on the run:

- cgroup storage: BPF_PROG_TEST_RUN allocates a fresh, zeroed storage for each such map the program uses
  (bpf_cgroup_storages_alloc), which bpf_get_local_storage returns for the whole test run (all `repeat`
  runs) and which goes away afterwards; it is never linked into the map. Here: one storage per address
  space (a Machine's input), per CPU for percpu_cgroup_storage. Through bpf() the map is empty: nothing is
  attached to a cgroup.
- sk_storage: bpf_sk_storage_get finds or (BPF_SK_STORAGE_GET_F_CREATE) makes a value on the socket it is
  given; the only socket of a test run is the dummy one test_run hangs on its skb. Through bpf() the key is
  a socket fd, and the interpreter has no sockets: every key is EBADF, as a closed fd.
"""

from __future__ import annotations

import errno
from weakref import WeakKeyDictionary

from ...isa.maptypes import (
    BPF_EXIST, BPF_F_ACCESS_MASK, BPF_F_CLONE, BPF_F_LOCK, BPF_F_NO_PREALLOC, BPF_F_NUMA_NODE, MapSpec,
)
from ..memory import Memory
from .base import PerCpuValue, Unlisted, VmMap, check_access_flags, check_create
from .limits import LOCAL_STORAGE_MAX_VALUE, PCPU_MIN_UNIT_SIZE

BPF_SK_STORAGE_GET_F_CREATE = 1
CGROUP_STORAGE_KEY_SIZES = (8, 16)  # __u64 cgroup inode id, or struct bpf_cgroup_storage_key


class CgroupStorageMap(VmMap):
    def __init__(self, mapdef: MapSpec, num_cpus: int):
        name, type_name = mapdef.name, mapdef.type_name
        self.percpu = type_name == "percpu_cgroup_storage"
        limit = min(LOCAL_STORAGE_MAX_VALUE, PCPU_MIN_UNIT_SIZE) if self.percpu else LOCAL_STORAGE_MAX_VALUE
        check_create(name, type_name, mapdef.key_size in CGROUP_STORAGE_KEY_SIZES,
                     f"key_size must be 8 (a cgroup id) or 16 (struct bpf_cgroup_storage_key), not {mapdef.key_size}")
        check_create(name, type_name, mapdef.value_size > 0, "value_size is 0")
        check_create(name, type_name, mapdef.value_size <= limit, f"value_size is limited to {limit} bytes",
                     errno.E2BIG)
        check_access_flags(name, type_name, mapdef.flags, BPF_F_NUMA_NODE | BPF_F_ACCESS_MASK)
        check_create(name, type_name, mapdef.max_entries == 0, "max_entries must be 0 (storage is per cgroup)")
        super().__init__(name, mapdef.type, mapdef.key_size, mapdef.value_size, 0, mapdef.flags, num_cpus)
        self._runs: WeakKeyDictionary[Memory, object] = WeakKeyDictionary()

    def local_storage(self, memory: Memory, cpu: int) -> bytearray:
        """bpf_get_local_storage: the storage test_run allocated for the run living in `memory`."""
        storage = self._runs.get(memory)
        if storage is None:
            storage = self._runs[memory] = (PerCpuValue(self.num_cpus, self.value_size) if self.percpu
                                            else bytearray(self.value_size))
        return storage.values[cpu] if self.percpu else storage  # type: ignore[union-attr]

    # syscall face: no cgroup has storage attached
    def _sys_lookup(self, key):
        return -errno.ENOENT, None

    def _sys_update(self, key, value, flags):
        if flags & ~(BPF_F_LOCK | BPF_EXIST):
            return -errno.EINVAL
        return -errno.ENOENT

    def _sys_delete(self, key):
        return -errno.EINVAL

    def _keys(self):
        return []

    def set_initial(self, data: bytes) -> None:
        check_create(self.name, self.type_name, False, "this map type has no initial contents")


class SkStorageMap(Unlisted, VmMap):
    def __init__(self, mapdef: MapSpec, num_cpus: int):
        name, type_name, flags = mapdef.name, mapdef.type_name, mapdef.flags
        check_create(name, type_name, not flags & ~(BPF_F_NO_PREALLOC | BPF_F_CLONE),
                     f"flags {flags & ~(BPF_F_NO_PREALLOC | BPF_F_CLONE):#x} are not valid for this type")
        check_create(name, type_name, bool(flags & BPF_F_NO_PREALLOC), "BPF_F_NO_PREALLOC is required")
        check_create(name, type_name, mapdef.max_entries == 0, "max_entries must be 0 (storage is per socket)")
        check_create(name, type_name, mapdef.key_size == 4, f"key_size must be 4 (a socket fd), not {mapdef.key_size}")
        check_create(name, type_name, mapdef.value_size > 0, "value_size is 0")
        check_create(name, type_name, mapdef.value_size <= LOCAL_STORAGE_MAX_VALUE,
                     f"value_size is limited to {LOCAL_STORAGE_MAX_VALUE} bytes", errno.E2BIG)
        super().__init__(name, mapdef.type, 4, mapdef.value_size, 0, flags, num_cpus)
        self._sockets: WeakKeyDictionary[Memory, dict[int, bytearray]] = WeakKeyDictionary()

    def storage_get(self, memory: Memory, socket: int, value: bytes | None, flags: int) -> bytearray | None:
        """bpf_sk_storage_get on the socket at address `socket` of `memory`: its value, made from `value`
        (zeros for None) with BPF_SK_STORAGE_GET_F_CREATE, or None."""
        if flags > BPF_SK_STORAGE_GET_F_CREATE:
            return None
        values = self._sockets.setdefault(memory, {})
        found = values.get(socket)
        if found is None and flags == BPF_SK_STORAGE_GET_F_CREATE:
            found = values[socket] = bytearray(value if value is not None else bytes(self.value_size))
        return found

    def storage_delete(self, memory: Memory, socket: int) -> int:
        return 0 if self._sockets.get(memory, {}).pop(socket, None) is not None else -errno.ENOENT

    # syscall face: the key is a socket fd, and there are none
    def _sys_lookup(self, key):
        return -errno.EBADF, None

    def _sys_update(self, key, value, flags):
        return -errno.EBADF

    def _sys_delete(self, key):
        return -errno.EBADF

    def set_initial(self, data: bytes) -> None:
        check_create(self.name, self.type_name, False, "this map type has no initial contents")


__all__ = ["CgroupStorageMap", "SkStorageMap"]
