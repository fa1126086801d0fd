"""The maps bpf_redirect_map sends XDP frames through (kernel/bpf/cpumap.c, kernel/bpf/devmap.c,
net/xdp/xskmap.c): cpumap, devmap, devmap_hash and xskmap.

Their values are not plain bytes to the kernel: an update must name something that exists (a possible
CPU, a network interface of this namespace, an AF_XDP socket; optionally a program by fd for the second
stage), and a lookup gives back what the kernel keeps (struct bpf_cpumap_val / bpf_devmap_val with the
program's id instead of its fd). The interpreter knows the interfaces (`devices`, the host's by default)
and the possible CPUs (`num_cpus`); it has no programs to attach by fd and no AF_XDP sockets, so naming
one fails as a closed fd does in the kernel.

Each map answers `redirect_target(index)`, whether bpf_redirect_map finds an entry there (the helper in
vm.helpers does the rest of __bpf_xdp_redirect_map), and `redirect_flags`, the flags it accepts beyond
the action on a miss.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from functools import lru_cache

from ...isa.contexts import NetDevice, host_device
from ...isa.maptypes import (
    BPF_EXIST, BPF_F_NUMA_NODE, BPF_F_RDONLY, BPF_F_RDONLY_PROG, BPF_F_WRONLY, BPF_NOEXIST, MapSpec,
)
from .array import index_of, next_index
from .base import VmMap, check_access_flags, check_create
from .limits import check_memory

BPF_F_BROADCAST, BPF_F_EXCLUDE_INGRESS = 1 << 3, 1 << 4
CPUMAP_MAX_QSIZE = 16384
_DEV_FLAGS = BPF_F_NUMA_NODE | BPF_F_RDONLY | BPF_F_WRONLY


@lru_cache(maxsize=1)
def config_nr_cpus(path: str = "/sys/devices/system/cpu/kernel_max") -> int:
    """CONFIG_NR_CPUS of the running kernel (sysfs gives it less one), the most CPUs a cpumap may have;
    8192, the usual x86_64 distribution setting, where sysfs cannot be read."""
    try:
        with open(path) as f:
            return int(f.read().strip()) + 1
    except (OSError, ValueError):
        return 8192


def _check_shape(mapdef: MapSpec, value_sizes: tuple[int, ...], allowed: int) -> None:
    name, type_name = mapdef.name, mapdef.type_name
    check_create(name, type_name, mapdef.max_entries > 0, "max_entries is 0")
    check_create(name, type_name, mapdef.key_size == 4, f"key_size must be 4, not {mapdef.key_size}")
    check_create(name, type_name, mapdef.value_size in value_sizes,
                 f"value_size must be {' or '.join(map(str, value_sizes))}, not {mapdef.value_size}")
    check_access_flags(name, type_name, mapdef.flags, allowed)


class _IndexedMap(VmMap):
    """An array of `max_entries` optional entries (cpumap, devmap, xskmap): get_next_key walks every index
    whether filled or not, as array maps do."""

    def __init__(self, mapdef: MapSpec, num_cpus: int, flags: int):
        check_memory(mapdef.name, mapdef.type_name, mapdef.max_entries * 8)  # a pointer per index
        super().__init__(mapdef.name, mapdef.type, 4, mapdef.value_size, mapdef.max_entries, flags, num_cpus)
        self._entries: dict[int, bytearray] = {}

    def _keys(self):
        return [i.to_bytes(4, "little") for i in range(self.max_entries)]

    def _next_key(self, key):
        return next_index(key, self.max_entries)

    def __len__(self):
        return len(self._entries)

    def _sys_lookup(self, key):
        entry = self._entries.get(index_of(key))
        return (-errno.ENOENT, None) if entry is None else (0, bytes(entry))

    def _sys_delete(self, key):
        index = index_of(key)
        if index >= self.max_entries:
            return -errno.EINVAL
        self._entries.pop(index, None)
        return 0

    def _update_index(self, key, flags) -> tuple[int, int]:
        """(index, 0) or (_, -errno) after the checks cpu_map and dev_map updates both start with: no flag
        above BPF_EXIST, the index in range, and BPF_NOEXIST refused (every index exists)."""
        index = index_of(key)
        if flags > BPF_EXIST:
            return index, -errno.EINVAL
        if index >= self.max_entries:
            return index, -errno.E2BIG
        if flags == BPF_NOEXIST:
            return index, -errno.EEXIST
        return index, 0

    def _items(self):
        for index in sorted(self._entries):
            yield index.to_bytes(4, "little"), bytes(self._entries[index])

    def redirect_target(self, index: int) -> bool:
        return index in self._entries

    def set_initial(self, data: bytes) -> None:
        check_create(self.name, self.type_name, False, "this map type has no initial contents")


class CpuMap(_IndexedMap):
    """BPF_MAP_TYPE_CPUMAP: index = a CPU, value = struct bpf_cpumap_val {u32 qsize; int prog fd / u32
    prog id} (4 or 8 bytes). A qsize of 0 removes the entry. Programs may only redirect through it."""

    redirect_flags = 0

    def __init__(self, mapdef: MapSpec, num_cpus: int):
        _check_shape(mapdef, (4, 8), BPF_F_NUMA_NODE)
        limit = config_nr_cpus()
        check_create(mapdef.name, mapdef.type_name, mapdef.max_entries <= limit,
                     f"more entries than the kernel's NR_CPUS ({limit})", errno.E2BIG)
        super().__init__(mapdef, num_cpus, mapdef.flags)

    def _sys_update(self, key, value, flags):
        # cpu_map_update_elem
        cpu, err = self._update_index(key, flags)
        if err:
            return err
        qsize, prog_fd = struct.unpack("<Ii", value.ljust(8, b"\0"))
        if qsize > CPUMAP_MAX_QSIZE:
            return -errno.EOVERFLOW
        if cpu >= self.num_cpus:  # not a possible CPU
            return -errno.ENODEV
        if qsize == 0:
            self._entries.pop(cpu, None)
            return 0
        if prog_fd > 0:  # __cpu_map_entry_alloc cannot load the program: the entry is not made
            return -errno.ENOMEM
        self._entries[cpu] = bytearray(struct.pack("<II", qsize, 0)[:self.value_size])
        return 0


class DevMap(_IndexedMap):
    """BPF_MAP_TYPE_DEVMAP: index -> struct bpf_devmap_val {u32 ifindex; int prog fd / u32 prog id} (4 or
    8 bytes); an ifindex of 0 empties the slot. The kernel marks the map BPF_F_RDONLY_PROG: programs may
    look an entry up but not write it."""

    redirect_flags = BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS

    def __init__(self, mapdef: MapSpec, num_cpus: int,
                 devices: Callable[[int], NetDevice | None] = host_device):
        _check_shape(mapdef, (4, 8), _DEV_FLAGS)
        self.devices = devices
        super().__init__(mapdef, num_cpus, mapdef.flags | BPF_F_RDONLY_PROG)

    def _sys_update(self, key, value, flags):
        # __dev_map_update_elem
        index, err = self._update_index(key, flags)
        if err:
            return err
        err, entry = _devmap_entry(self, value)
        if err:
            return err
        if entry is None:
            self._entries.pop(index, None)
        else:
            self._entries[index] = entry
        return 0

    def prog_lookup(self, key, cpu):
        return self._entries.get(index_of(key))

    def __len__(self):
        return len(self._entries)


def _devmap_entry(m: VmMap, value: bytes) -> tuple[int, bytearray | None]:
    """The entry an update makes (None: the ifindex is 0, no entry) or -EINVAL, as __dev_map_alloc_node
    refuses an interface that does not exist or a program it cannot take by fd."""
    ifindex, prog_fd = struct.unpack("<Ii", value.ljust(8, b"\0"))
    if ifindex == 0:
        return (-errno.EINVAL, None) if prog_fd > 0 or m.type_name == "devmap_hash" else (0, None)
    if m.devices(ifindex) is None or prog_fd > 0:  # type: ignore[attr-defined]
        return -errno.EINVAL, None
    return 0, bytearray(struct.pack("<II", ifindex, 0)[:m.value_size])


class DevMapHash(VmMap):
    """BPF_MAP_TYPE_DEVMAP_HASH: the same values, any u32 key, up to max_entries of them, in a table of
    roundup_pow_of_two(max_entries) buckets indexed by key & (buckets - 1), each listing its newest entry
    first (the order of BPF_MAP_GET_NEXT_KEY)."""

    redirect_flags = BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS

    def __init__(self, mapdef: MapSpec, num_cpus: int,
                 devices: Callable[[int], NetDevice | None] = host_device):
        _check_shape(mapdef, (4, 8), _DEV_FLAGS)
        check_create(mapdef.name, mapdef.type_name, mapdef.max_entries <= 1 << 31,
                     "the bucket count overflows (more than 2^31 entries)")
        self.n_buckets = 1 << (mapdef.max_entries - 1).bit_length()
        check_memory(mapdef.name, mapdef.type_name, self.n_buckets * 8)
        super().__init__(mapdef.name, mapdef.type, 4, mapdef.value_size, mapdef.max_entries,
                         mapdef.flags | BPF_F_RDONLY_PROG, num_cpus)
        self.devices = devices
        self._entries: dict[int, tuple[int, bytearray]] = {}  # key -> (link order, value)
        self._seq = 0

    def _sys_lookup(self, key):
        found = self._entries.get(index_of(key))
        return (-errno.ENOENT, None) if found is None else (0, bytes(found[1]))

    def _sys_update(self, key, value, flags):
        # __dev_map_hash_update_elem: the flags, then the interface, then the room
        if flags > BPF_EXIST:
            return -errno.EINVAL
        index = index_of(key)
        old = self._entries.get(index)
        if old is not None and flags & BPF_NOEXIST:
            return -errno.EEXIST
        err, entry = _devmap_entry(self, value)
        if err:
            return err
        if old is None and len(self._entries) >= self.max_entries:
            return -errno.E2BIG
        self._seq += 1
        self._entries[index] = (self._seq, entry)
        return 0

    def _sys_delete(self, key):
        return 0 if self._entries.pop(index_of(key), None) is not None else -errno.ENOENT

    def _keys(self):
        order = sorted(self._entries.items(), key=lambda kv: (kv[0] & (self.n_buckets - 1), -kv[1][0]))
        return [k.to_bytes(4, "little") for k, _ in order]

    def __len__(self):
        return len(self._entries)

    def prog_lookup(self, key, cpu):
        found = self._entries.get(index_of(key))
        return None if found is None else found[1]

    def redirect_target(self, index: int) -> bool:
        return index in self._entries

    def set_initial(self, data: bytes) -> None:
        check_create(self.name, self.type_name, False, "this map type has no initial contents")


class XskMap(_IndexedMap):
    """BPF_MAP_TYPE_XSKMAP: index -> an AF_XDP socket by fd. The interpreter has no AF_XDP sockets, so
    every slot stays empty (an update fails as with a closed fd); the syscall cannot read a slot back."""

    redirect_flags = 0

    def __init__(self, mapdef: MapSpec, num_cpus: int):
        _check_shape(mapdef, (4,), _DEV_FLAGS)
        super().__init__(mapdef, num_cpus, mapdef.flags)

    def _sys_lookup(self, key):
        return -errno.EOPNOTSUPP, None

    def _sys_update(self, key, value, flags):
        if flags > BPF_EXIST:
            return -errno.EINVAL
        if index_of(key) >= self.max_entries:
            return -errno.E2BIG
        return -errno.EBADF

    def _sys_delete(self, key):
        return -errno.EINVAL if index_of(key) >= self.max_entries else 0

    def prog_lookup(self, key, cpu):
        return None  # a program would get the xdp_sock, or NULL for an empty slot


REDIRECT_MAPS = (CpuMap, DevMap, DevMapHash, XskMap)  # what bpf_redirect_map takes

__all__ = ["REDIRECT_MAPS", "CpuMap", "DevMap", "DevMapHash", "XskMap", "config_nr_cpus"]
