"""Array maps (kernel/bpf/arraymap.c): array and percpu_array, every element preallocated and zeroed, a
u32 index as key. Storage is created on first touch, so a big array costs nothing until used."""

from __future__ import annotations

import errno

from ...isa.maptypes import (
    BPF_EXIST, BPF_F_ACCESS_MASK, BPF_F_INNER_MAP, BPF_F_LOCK, BPF_F_MMAPABLE, BPF_F_NUMA_NODE,
    BPF_F_PRESERVE_ELEMS, BPF_NOEXIST, MapSpec, round8,
)
from ...isa.numbers import PAGE_SIZE
from .base import PerCpuValue, VmMap, check_access_flags, check_create
from .limits import INT_MAX, PCPU_MIN_UNIT_SIZE, check_memory

_FLAGS = BPF_F_NUMA_NODE | BPF_F_MMAPABLE | BPF_F_ACCESS_MASK | BPF_F_PRESERVE_ELEMS | BPF_F_INNER_MAP


def check_array(mapdef: MapSpec, key_size: int, value_size: int, allowed: int = _FLAGS,
                max_entries: int | None = None) -> None:
    """array_map_alloc_check, shared by every array-shaped map (`allowed`: the type's creation flags;
    `max_entries` when the map's differs from the definition's)."""
    name, type_name, flags = mapdef.name, mapdef.type_name, mapdef.flags
    entries = mapdef.max_entries if max_entries is None else max_entries
    check_create(name, type_name, entries > 0, "max_entries is 0")
    check_create(name, type_name, key_size == 4, f"key_size must be 4 (a u32 index), not {key_size}")
    check_create(name, type_name, value_size > 0, "value_size is 0")
    check_access_flags(name, type_name, flags, allowed)
    numa = flags & BPF_F_NUMA_NODE or mapdef.numa_node is not None
    check_create(name, type_name, not (type_name == "percpu_array" and numa), "a per-CPU array has no NUMA node")
    check_create(name, type_name, type_name == "array" or not flags & (BPF_F_MMAPABLE | BPF_F_INNER_MAP),
                 "BPF_F_MMAPABLE and BPF_F_INNER_MAP are for plain arrays")
    check_create(name, type_name, type_name == "perf_event_array" or not flags & BPF_F_PRESERVE_ELEMS,
                 "BPF_F_PRESERVE_ELEMS is for perf_event_array")
    check_create(name, type_name, value_size <= INT_MAX, f"value_size {value_size} is above INT_MAX", errno.E2BIG)
    check_create(name, type_name, not (type_name == "percpu_array" and round8(value_size) > PCPU_MIN_UNIT_SIZE),
                 f"per-CPU values are limited to {PCPU_MIN_UNIT_SIZE} bytes", errno.E2BIG)


def kernel_bytes(mapdef: MapSpec, value_size: int, num_cpus: int) -> int:
    """What array_map_alloc allocates: every value (per-CPU arrays: a pointer per index and each CPU's
    value), page-aligned when mmapable."""
    entries = mapdef.max_entries
    if mapdef.type_name == "percpu_array":
        return entries * 8 + entries * round8(value_size) * num_cpus
    if mapdef.flags & BPF_F_MMAPABLE:
        return PAGE_SIZE + -(-entries * round8(value_size) // PAGE_SIZE) * PAGE_SIZE
    return entries * round8(value_size)


def index_of(key: bytes) -> int:
    return int.from_bytes(key, "little")


def next_index(key: bytes | None, max_entries: int) -> bytes | None:
    """array_map_get_next_key, for every map indexed 0..max_entries-1: no key or one past the end restarts
    at 0; the last index ends the walk."""
    index = max_entries if key is None else index_of(key)
    if index >= max_entries:
        return bytes(4)
    return None if index == max_entries - 1 else (index + 1).to_bytes(4, "little")


class ArrayMap(VmMap):
    """BPF_MAP_TYPE_ARRAY. Lookup of an index past the end is ENOENT (None), update there E2BIG; delete is
    always EINVAL (elements cannot go away) and BPF_NOEXIST always EEXIST (they all exist)."""

    def __init__(self, mapdef: MapSpec, num_cpus: int):
        check_array(mapdef, mapdef.key_size, mapdef.value_size)
        check_memory(mapdef.name, mapdef.type_name, kernel_bytes(mapdef, mapdef.value_size, num_cpus))
        super().__init__(mapdef.name, mapdef.type, mapdef.key_size, mapdef.value_size, mapdef.max_entries,
                         mapdef.flags, num_cpus)
        self._slots: dict = {}  # index -> storage, for indexes touched so far (the others are zeros)

    def _slot(self, index: int):
        storage = self._slots.get(index)
        if storage is None:
            storage = self._slots[index] = self._new_storage()
        return storage

    def _new_storage(self):
        return bytearray(self.value_size)

    def _check_update(self, index: int, flags: int) -> int:
        # array_map_update_elem's order: unknown flags, index, NOEXIST (tested as a bit), BPF_F_LOCK.
        if flags & ~BPF_F_LOCK > BPF_EXIST:
            return -errno.EINVAL
        if index >= self.max_entries:
            return -errno.E2BIG
        if flags & BPF_NOEXIST:
            return -errno.EEXIST
        if flags & BPF_F_LOCK:  # no bpf_spin_lock in our values
            return -errno.EINVAL
        return 0

    # syscall face
    def _sys_lookup(self, key):
        index = index_of(key)
        if index >= self.max_entries:
            return -errno.ENOENT, None
        storage = self._slots.get(index)
        return 0, bytes(self.value_size) if storage is None else bytes(storage)

    def _sys_update(self, key, value, flags):
        index = index_of(key)
        err = self._check_update(index, flags)
        if not err:
            self._slot(index)[:] = value
        return err

    def _sys_delete(self, key):
        return -errno.EINVAL

    def _keys(self):
        return [i.to_bytes(4, "little") for i in range(self.max_entries)]

    def _next_key(self, key):
        return next_index(key, self.max_entries)

    def __len__(self):
        return self.max_entries

    # program face
    def prog_lookup(self, key, cpu):
        index = index_of(key)
        return self._slot(index) if index < self.max_entries else None

    def prog_update(self, key, value, flags, cpu):
        index = index_of(key)
        err = self._check_update(index, flags)
        if not err:
            self._slot(index)[:] = value  # in place: a pointer from an earlier lookup sees the new value
        return err

    def prog_delete(self, key, cpu=0):
        return -errno.EINVAL

    def prog_elements(self, cpu: int):
        """(key, live storage) of every element, as bpf_for_each_map_elem visits them (index order)."""
        for index in range(self.max_entries):
            yield index.to_bytes(4, "little"), self._cpu_storage(self._slot(index), cpu)

    @staticmethod
    def _cpu_storage(storage, cpu: int):
        return storage

    def set_initial(self, data: bytes) -> None:
        """Contents of a global-data map (.data/.rodata/.bss): the value of its single element."""
        check_create(self.name, self.type_name, len(data) == self.value_size,
                     f"initial contents are {len(data)} bytes, the value {self.value_size}")
        self._slot(0)[:] = data


class PercpuArrayMap(ArrayMap):
    """BPF_MAP_TYPE_PERCPU_ARRAY: one value per CPU per index. The syscall reads and writes all CPUs'
    values (each padded to 8 bytes, the padding kept); a program sees and updates its own CPU's."""

    percpu = True

    def _new_storage(self):
        return PerCpuValue(self.num_cpus, self.value_size)

    def _sys_lookup(self, key):
        index = index_of(key)
        if index >= self.max_entries:
            return -errno.ENOENT, None
        storage = self._slots.get(index)
        return 0, bytes(self.syscall_value_size) if storage is None else storage.syscall_bytes()

    def _sys_update(self, key, value, flags):
        # bpf_percpu_array_update refuses every flag above BPF_EXIST before looking at the index.
        if flags > BPF_EXIST:
            return -errno.EINVAL
        index = index_of(key)
        err = self._check_update(index, flags)
        if not err:
            self._slot(index).set_all(value)
        return err

    def prog_lookup(self, key, cpu):
        index = index_of(key)
        return self._slot(index).values[cpu] if index < self.max_entries else None

    @staticmethod
    def _cpu_storage(storage, cpu: int):
        return storage.values[cpu]

    def prog_update(self, key, value, flags, cpu):
        index = index_of(key)
        err = self._check_update(index, flags)
        if not err:
            self._slot(index).set_one(cpu, value)
        return err

    def set_initial(self, data: bytes) -> None:
        check_create(self.name, self.type_name, False, "per-CPU arrays have no initial contents")
