"""Kernel maps: BPF_MAP_CREATE from a map definition, and the `BpfMap` API over BPF_MAP_*_ELEM.

Keys and values are bytes, exactly as the syscall ABI copies them. A per-CPU map's value is one slot per
possible CPU, each `round_up(value_size, 8)` bytes (the kernel's bpf_map_value_size), in CPU order.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from ..elf.btf import scalar_btf
from ..elf.maps import arena_data_offset
from ..errors import BpforgeError
from ..isa.maptypes import (
    BPF_ANY,
    BPF_F_NO_PREALLOC,
    BPF_F_NUMA_NODE,
    BPF_F_RDONLY_PROG,
    MAP_TYPE_IDS,
    PERCPU_TYPES,
    MapError,
    MapSpec,
    check_value_size,
    map_errno_text,
    map_type_name,
    round8,
    split_cpu_values,
)
from ..isa.numbers import PAGE_SIZE
from .arena import ArenaMapping, map_arena
from .syscall import (
    BPF_BTF_LOAD,
    BPF_MAP_CREATE,
    BPF_MAP_DELETE_ELEM,
    BPF_MAP_FREEZE,
    BPF_MAP_GET_NEXT_KEY,
    BPF_MAP_LOOKUP_ELEM,
    BPF_MAP_UPDATE_ELEM,
    BtfLoadAttr,
    MapCreateAttr,
    MapElemAttr,
    MapFdAttr,
    bpf,
    close_fd,
    obj_name,
)

_FIXED_SIZES = {  # map types whose key/value sizes the kernel dictates, whatever the declaration says
    "ringbuf": (0, 0), "user_ringbuf": (0, 0),
    "prog_array": (4, 4),  # value: a program fd going in, a program id coming out
    "array_of_maps": (4, 4), "hash_of_maps": (None, 4),  # value: an inner map fd
    "perf_event_array": (4, 4), "cgroup_array": (4, 4),
}
_POSSIBLE_CPUS = "/sys/devices/system/cpu/possible"
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
# Map types the kernel creates only with BTF for key and value (bpf_local_storage_map_alloc_check).
_NEEDS_BTF = ("sk_storage", "inode_storage", "task_storage", "cgrp_storage")


@lru_cache(maxsize=1)
def possible_cpus() -> int:
    """How many CPUs the kernel may ever bring up: the slot count of a per-CPU map value (a list such as
    "0-3" or "0,2-5" in sysfs; the kernel iterates for_each_possible_cpu)."""
    try:
        with open(_POSSIBLE_CPUS) as f:
            text = f.read().strip()
    except OSError:
        return os.cpu_count() or 1
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count




@dataclass(eq=False)
class KernelMap:
    """An open kernel map (`fd`), usable as a `BpfMap`. Close it (or use `with`) when done."""

    fd: int
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    ncpus: int = 1  # value slots: possible CPUs for per-CPU maps, else 1
    frozen: bool = field(default=False)
    arena: ArenaMapping | None = field(default=None, repr=False)  # an arena's user mapping (kernel.arena)

    @property
    def type_name(self) -> str:
        return map_type_name(self.type)

    @property
    def num_cpus(self) -> int:
        """`ncpus`, under the name the interpreter's maps use."""
        return self.ncpus

    @property
    def percpu(self) -> bool:
        return self.type_name in PERCPU_TYPES

    @property
    def syscall_value_size(self) -> int:
        """Bytes of a value through the syscall: every CPU's value, each rounded up to 8, for per-CPU maps."""
        return self.ncpus * round8(self.value_size) if self.percpu else self.value_size

    # ---- creation / lifetime ---------------------------------------------------------------------------

    @classmethod
    def create(cls, spec: MapSpec, *, name: str | None = None, max_entries: int | None = None) -> KernelMap:
        """BPF_MAP_CREATE for `spec`: its type, sizes and flags as declared,
        except what the kernel dictates (ringbuf key/value 0, prog_array value 4, BPF_F_NO_PREALLOC for an
        LPM trie) and what libbpf fills in (a perf_event_array declared with 0 entries gets one per possible
        CPU; local storage maps, which the kernel creates only with BTF, get an int key and a byte-array
        value type). A definition with `initial` contents (global data) is filled with them and, when
        read-only to programs (.rodata), frozen, as libbpf does. `max_entries` overrides the declared
        size (tests shrink big tables). An arena is mapped into this process at once (`arena`, unmapped by
        close()) and its `initial` __arena globals copied in at elf.maps.arena_data_offset, as libbpf does.
        MapError(errno) when the kernel refuses."""
        map_name = name or spec.name
        type_name = map_type_name(spec.type)
        key_size, value_size = spec.key_size, spec.value_size
        fixed_key, fixed_value = _FIXED_SIZES.get(type_name, (None, None))
        key_size = key_size if fixed_key is None else fixed_key
        value_size = value_size if fixed_value is None else fixed_value
        flags = spec.flags
        if type_name == "lpm_trie":
            flags |= BPF_F_NO_PREALLOC  # the kernel refuses a preallocated trie (EINVAL)
        entries = spec.max_entries if max_entries is None else max_entries
        if type_name == "perf_event_array" and entries == 0:
            entries = possible_cpus()  # libbpf: one slot per possible CPU
        attr = MapCreateAttr(map_type=spec.type, key_size=key_size, value_size=value_size, max_entries=entries,
                             map_flags=flags, map_name=obj_name(map_name), map_extra=spec.map_extra)
        if spec.numa_node is not None:
            attr.map_flags |= BPF_F_NUMA_NODE
            attr.numa_node = spec.numa_node
        inner = None
        if spec.inner is not None:  # map-in-map: the kernel copies the inner template
            inner = cls.create(spec.inner)
            attr.inner_map_fd = inner.fd
        btf_fd = -1
        if type_name in _NEEDS_BTF:  # an int key and a byte-array value, the shapes the kernel checks
            btf_fd = _load_scalar_btf(value_size)
            attr.btf_fd, attr.btf_key_type_id, attr.btf_value_type_id = max(btf_fd, 0), 1, 3
        try:
            fd, err = bpf(BPF_MAP_CREATE, attr)
        finally:
            if inner is not None:
                inner.close()
            if btf_fd >= 0:
                close_fd(btf_fd)
        if fd < 0:
            raise MapError(err, f"cannot create map '{map_name}' ({type_name}, key {key_size}, value "
                                f"{value_size}, {entries} entries, flags {flags:#x}): {map_errno_text(err)}")
        kmap = cls(fd, map_name, spec.type, key_size, value_size, entries, flags,
                   possible_cpus() if type_name in PERCPU_TYPES else 1)
        initial = spec.initial
        try:
            if type_name == "arena":  # mapped at once, as libbpf does: that fixes user_vm_start
                kmap.arena = map_arena(map_name, fd, entries * PAGE_SIZE, attr.map_extra, flags)
                if initial is not None:  # the __arena globals (elf.maps.with_arena_data)
                    kmap.arena.write(arena_data_offset(spec.max_entries, len(initial)), initial)
            elif initial is not None:
                kmap.update(bytes(4), initial)
                if flags & BPF_F_RDONLY_PROG:
                    kmap.freeze()
        except BpforgeError:
            kmap.close()
            raise
        return kmap

    def close(self) -> None:
        if self.arena is not None:
            self.arena.close()
            self.arena = None
        close_fd(self.fd)
        self.fd = -1

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def __enter__(self) -> KernelMap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def freeze(self) -> None:
        """BPF_MAP_FREEZE: no more writes from user space (updates then fail with EPERM)."""
        _, err = bpf(BPF_MAP_FREEZE, MapFdAttr(map_fd=self._live_fd()))
        if err:
            raise self._error(err, "freeze")
        self.frozen = True

    # ---- the BpfMap protocol ---------------------------------------------------------------------------

    def lookup(self, key: bytes) -> bytes | None:
        """The value at `key`, or None when there is none (ENOENT)."""
        kbuf = self._key(key)
        vbuf = ctypes.create_string_buffer(max(self.syscall_value_size, 1))
        _, err = bpf(BPF_MAP_LOOKUP_ELEM, MapElemAttr(map_fd=self._live_fd(), key=_addr(kbuf),
                                                      value=ctypes.addressof(vbuf)))
        if err == errno.ENOENT:
            return None
        if err:
            raise self._error(err, "lookup")
        return vbuf.raw[:self.syscall_value_size]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Insert or replace (BPF_ANY), insert only (BPF_NOEXIST: EEXIST if present, so always for an array),
        replace only (BPF_EXIST: ENOENT if absent). E2BIG when a hash map is full or an array index is out
        of range; EPERM once the map is frozen."""
        kbuf = self._key(key)
        value = bytes(value)
        check_value_size(self.name, value, self.value_size, self.ncpus if self.percpu else None)
        vbuf = ctypes.create_string_buffer(value, max(len(value), 1))
        _, err = bpf(BPF_MAP_UPDATE_ELEM, MapElemAttr(map_fd=self._live_fd(), key=_addr(kbuf),
                                                      value=ctypes.addressof(vbuf), flags=flags))
        if err:
            raise self._error(err, "update")

    def delete(self, key: bytes) -> None:
        """Remove `key`: ENOENT if absent, EINVAL for arrays (their elements always exist)."""
        kbuf = self._key(key)
        _, err = bpf(BPF_MAP_DELETE_ELEM, MapElemAttr(map_fd=self._live_fd(), key=_addr(kbuf)))
        if err:
            raise self._error(err, "delete")

    def next_key(self, key: bytes | None) -> bytes | None:
        """BPF_MAP_GET_NEXT_KEY: the key after `key` (the first key for None, or for a key not in the map,
        as the kernel's hash maps do), None after the last."""
        kbuf = None if key is None else self._key(key)
        nbuf = ctypes.create_string_buffer(max(self.key_size, 1))
        _, err = bpf(BPF_MAP_GET_NEXT_KEY, MapElemAttr(map_fd=self._live_fd(), key=_addr(kbuf),
                                                       value=ctypes.addressof(nbuf)))
        if err == errno.ENOENT:
            return None
        if err:
            raise self._error(err, "get_next_key")
        return nbuf.raw[:self.key_size]

    def keys(self) -> Iterator[bytes]:
        """Every key, by BPF_MAP_GET_NEXT_KEY from "no key" (the first) until ENOENT (the last)."""
        key = self.next_key(None)
        while key is not None:
            yield key
            key = self.next_key(key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs; a key deleted between listing and lookup is skipped."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    # ---- maps without keys (queue, stack, bloom_filter) ----------------------------------------------------

    def push(self, value: bytes, flags: int = BPF_ANY) -> None:
        """BPF_MAP_UPDATE_ELEM without a key: push onto a queue or stack, add to a bloom filter."""
        self.update(b"", value, flags)

    def peek(self) -> bytes | None:
        """BPF_MAP_LOOKUP_ELEM without a key: the element a pop would take, or None when empty."""
        return self.lookup(b"")

    def pop(self) -> bytes | None:
        """BPF_MAP_LOOKUP_AND_DELETE_ELEM without a key: take the next element, or None when empty."""
        vbuf = ctypes.create_string_buffer(max(self.value_size, 1))
        _, err = bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, MapElemAttr(map_fd=self._live_fd(), key=0,
                                                                 value=ctypes.addressof(vbuf)))
        if err == errno.ENOENT:
            return None
        if err:
            raise self._error(err, "lookup_and_delete")
        return vbuf.raw[:self.value_size]

    def contains(self, value: bytes) -> bool:
        """A bloom filter's lookup of `value` (which the syscall reads): whether it may have been added."""
        value = bytes(value)
        if len(value) != self.value_size:
            raise MapError(errno.EINVAL, f"map '{self.name}': value must be {self.value_size} bytes")
        vbuf = ctypes.create_string_buffer(value, max(len(value), 1))
        _, err = bpf(BPF_MAP_LOOKUP_ELEM, MapElemAttr(map_fd=self._live_fd(), key=0, value=ctypes.addressof(vbuf)))
        if err == errno.ENOENT:
            return False
        if err:
            raise self._error(err, "lookup")
        return True

    # ---- conveniences ------------------------------------------------------------------------------------

    def cpu_values(self, value: bytes) -> list[bytes]:
        """A per-CPU map's value split into each CPU's `value_size` bytes (padding dropped)."""
        if not self.percpu:
            return [value]
        return split_cpu_values(value, self.value_size, self.ncpus)

    def __repr__(self) -> str:
        return (f"KernelMap({self.name!r}, {self.type_name}, fd={self.fd}, key={self.key_size}, "
                f"value={self.value_size}, entries={self.max_entries})")

    # ---- internals ---------------------------------------------------------------------------------------

    def _live_fd(self) -> int:
        if self.fd < 0:
            raise BpforgeError(f"map '{self.name}' is closed")
        return self.fd

    def _key(self, key: bytes) -> ctypes.Array | None:
        key = bytes(key)
        if len(key) != self.key_size:
            # The kernel copies key_size bytes from our pointer: a short buffer would be read past its end.
            raise MapError(errno.EINVAL, f"map '{self.name}': key must be {self.key_size} bytes, got {len(key)}")
        return ctypes.create_string_buffer(key, len(key)) if key else None

    def _error(self, err: int, op: str) -> MapError:
        return MapError(err, f"map '{self.name}' ({self.type_name}): {op}: {map_errno_text(err)}")


def _load_scalar_btf(value_size: int) -> int:
    """BPF_BTF_LOAD of [1] int, [2] char, [3] char[value_size] (`elf.btf.scalar_btf`): the key and value
    types a loader's BTF would give a local storage map (which the kernel requires). -1 when refused."""
    blob = scalar_btf(value_size)
    buf = ctypes.create_string_buffer(blob, len(blob))
    fd, _ = bpf(BPF_BTF_LOAD, BtfLoadAttr(btf=ctypes.addressof(buf), btf_size=len(blob)))
    return fd


def _addr(buf: ctypes.Array | None) -> int:
    return 0 if buf is None else ctypes.addressof(buf)


def map_type_id(name: str) -> int:
    """The kernel's number of a map type name ("hash", "lru_percpu_hash", ...)."""
    try:
        return MAP_TYPE_IDS[name]
    except KeyError:
        raise BpforgeError(f"unknown map type '{name}'") from None


__all__ = ["KernelMap", "map_type_id", "possible_cpus"]
