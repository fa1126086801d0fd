"""Maps without keys (kernel/bpf/queue_stack_maps.c, kernel/bpf/bloom_filter.c): queue, stack and
bloom_filter. Programs use bpf_map_push_elem / pop_elem / peek_elem; through bpf() an update pushes, a
lookup peeks and BPF_MAP_LOOKUP_AND_DELETE_ELEM pops (`push`, `peek`, `pop` here, as on KernelMap).

A queue or stack is the kernel's ring of max_entries + 1 slots with a head and a tail; BPF_EXIST on a full
one overwrites the oldest element. A bloom filter sets, for each of its nr_hash_funcs hash functions (the
low 4 bits of map_extra, 5 when 0), the bit jhash(value, seed + i) & mask of a bit array sized as
bloom_map_alloc sizes it. The seed is 0: the kernel's unless the map is created without BPF_F_ZERO_SEED,
when it draws one at random; then membership is the same but false positives may fall elsewhere.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping

from ...errors import ENOTSUPP, BpforgeError
from ...isa.maptypes import (
    BPF_ANY, BPF_EXIST, BPF_F_ACCESS_MASK, BPF_F_NUMA_NODE, BPF_F_ZERO_SEED, BPF_NOEXIST, MapSpec,
)
from ...isa.numbers import M32
from .base import VmMap, check_access_flags, check_create
from .hash import jhash
from .limits import KMALLOC_MAX_SIZE, check_memory

_PAGE_BITS = 15  # 4 KiB of bits per page of the bloom filter's bit array
_PAGE_MASK = (1 << _PAGE_BITS) - 1


class _Keyless(VmMap):
    """What queue, stack and bloom filter share: no keys to walk, element operations by value."""

    no_keys_errno = errno.EINVAL  # what get_next_key and delete return

    def _sys_delete(self, key):
        return -self.no_keys_errno

    def keys(self):
        self._readable("get_next_key")
        raise self._error(self.no_keys_errno, "get_next_key")

    def _keys(self):
        return []

    def _next_key(self, key):
        raise self._error(self.no_keys_errno, "get_next_key")

    def push(self, value: bytes, flags: int = BPF_ANY) -> None:
        """BPF_MAP_UPDATE_ELEM without a key."""
        self.update(b"", value, flags)

    def set_initial(self, data: bytes) -> None:
        check_create(self.name, self.type_name, False, "this map type has no initial contents")


class QueueStackMap(_Keyless):
    """BPF_MAP_TYPE_QUEUE (pop gives the oldest element) and BPF_MAP_TYPE_STACK (the newest)."""

    def __init__(self, mapdef: MapSpec, num_cpus: int):
        name, type_name = mapdef.name, mapdef.type_name
        check_create(name, type_name, mapdef.max_entries > 0, "max_entries is 0")
        check_create(name, type_name, mapdef.key_size == 0, f"key_size must be 0, not {mapdef.key_size}")
        check_create(name, type_name, mapdef.value_size > 0, "value_size is 0")
        check_access_flags(name, type_name, mapdef.flags, BPF_F_NUMA_NODE | BPF_F_ACCESS_MASK)
        check_create(name, type_name, mapdef.value_size <= KMALLOC_MAX_SIZE,
                     f"value_size {mapdef.value_size} is above {KMALLOC_MAX_SIZE}", errno.E2BIG)
        check_memory(name, type_name, (mapdef.max_entries + 1) * mapdef.value_size)
        super().__init__(name, mapdef.type, 0, mapdef.value_size, mapdef.max_entries, mapdef.flags, num_cpus)
        self.size = mapdef.max_entries + 1
        self.head = self.tail = 0
        self._slots: dict[int, bytes] = {}
        self.lifo = type_name == "stack"

    # the kernel's operations (0 or -errno, and the value)
    def push_elem(self, value: bytes, flags: int) -> int:
        if flags & BPF_NOEXIST or flags > BPF_EXIST:
            return -errno.EINVAL
        if (self.head + 1) % self.size == self.tail:  # full
            if not flags & BPF_EXIST:
                return -errno.E2BIG
            self.tail = (self.tail + 1) % self.size  # overwrite the oldest
        self._slots[self.head] = bytes(value)
        self.head = (self.head + 1) % self.size
        return 0

    def get_elem(self, delete: bool) -> tuple[int, bytes]:
        if self.head == self.tail:
            return -errno.ENOENT, bytes(self.value_size)
        if self.lifo:
            index = (self.head - 1) % self.size
            if delete:
                self.head = index
        else:
            index = self.tail
            if delete:
                self.tail = (self.tail + 1) % self.size
        return 0, self._slots[index]

    def _order(self) -> list[int]:
        count = (self.head - self.tail) % self.size
        slots = [(self.tail + i) % self.size for i in range(count)]
        return slots[::-1] if self.lifo else slots

    # syscall face
    def _sys_lookup(self, key):
        err, value = self.get_elem(False)
        return err, None if err else value

    def _sys_update(self, key, value, flags):
        return self.push_elem(value, flags)

    def peek(self) -> bytes | None:
        return self.lookup(b"")

    def pop(self) -> bytes | None:
        """BPF_MAP_LOOKUP_AND_DELETE_ELEM: the element a program's pop would get, or None (ENOENT)."""
        self._writable("lookup_and_delete")
        err, value = self.get_elem(True)
        return None if err else value

    def __len__(self):
        return (self.head - self.tail) % self.size

    def dump(self) -> dict:
        """Elements in the order pops would return them."""
        return {**self._header(), "entries": [{"value": self._slots[i].hex()} for i in self._order()]}

    def load_entries(self, entries: Iterable[Mapping]) -> None:
        """Push each entry's "value" (in order)."""
        _push_entries(self, entries)


class BloomFilterMap(_Keyless):
    """BPF_MAP_TYPE_BLOOM_FILTER: push adds a value, peek says whether it may be there (0) or surely is not
    (-ENOENT). Through bpf() a lookup peeks the value given (KernelMap.lookup gives zeros), `contains`
    peeks any value; nothing can be removed."""

    no_keys_errno = errno.EOPNOTSUPP

    def __init__(self, mapdef: MapSpec, num_cpus: int):
        name, type_name = mapdef.name, mapdef.type_name
        extra = mapdef.map_extra
        check_create(name, type_name, mapdef.value_size <= KMALLOC_MAX_SIZE,
                     f"value_size {mapdef.value_size} is above {KMALLOC_MAX_SIZE}", errno.E2BIG)
        check_create(name, type_name, mapdef.key_size == 0, f"key_size must be 0, not {mapdef.key_size}")
        check_create(name, type_name, mapdef.value_size > 0, "value_size is 0")
        check_create(name, type_name, mapdef.max_entries > 0, "max_entries is 0")
        check_access_flags(name, type_name, mapdef.flags, BPF_F_NUMA_NODE | BPF_F_ZERO_SEED | BPF_F_ACCESS_MASK)
        check_create(name, type_name, not extra & ~0xF, f"map_extra {extra:#x}: only the low 4 bits (hash count)")
        self.map_extra = extra
        self.nr_hash_funcs = extra or 5
        # bloom_map_alloc: max_entries * hashes * 7 / 5 bits, rounded up to a power of 2 (at least 64);
        # 2^32 bits when that would not fit in 31 bits.
        nr_bits = mapdef.max_entries * self.nr_hash_funcs
        if nr_bits > M32 or (nr_bits // 5) * 7 > M32 or (nr_bits // 5) * 7 > 1 << 31:
            self.mask = M32
        else:
            nr_bits = (nr_bits // 5) * 7
            nr_bits = 64 if nr_bits <= 64 else 1 << (nr_bits - 1).bit_length()
            self.mask = nr_bits - 1
        check_memory(name, type_name, (self.mask + 1) // 8)
        super().__init__(name, mapdef.type, 0, mapdef.value_size, mapdef.max_entries, mapdef.flags, num_cpus)
        self._pages: dict[int, bytearray] = {}  # the bit array in 4 KiB pages, made as bits get set

    def _hashes(self, value: bytes) -> list[int]:
        return [jhash(bytes(value), i) & self.mask for i in range(self.nr_hash_funcs)]

    def _test(self, bit: int) -> bool:
        page = self._pages.get(bit >> _PAGE_BITS)
        return page is not None and bool(page[(bit & _PAGE_MASK) >> 3] >> (bit & 7) & 1)

    def push_elem(self, value: bytes, flags: int) -> int:
        if flags != BPF_ANY:
            return -errno.EINVAL
        for bit in self._hashes(value):
            page = self._pages.get(bit >> _PAGE_BITS)
            if page is None:
                page = self._pages[bit >> _PAGE_BITS] = bytearray(1 << (_PAGE_BITS - 3))
            page[(bit & _PAGE_MASK) >> 3] |= 1 << (bit & 7)
        return 0

    def peek_elem(self, value: bytes) -> int:
        return 0 if all(self._test(h) for h in self._hashes(value)) else -errno.ENOENT

    def contains(self, value: bytes) -> bool:
        """Whether a program's peek of `value` succeeds (it may have been added)."""
        self._readable("lookup")
        value = bytes(value)
        if len(value) != self.value_size:
            raise self._error(errno.EINVAL, "lookup")
        return self.peek_elem(value) == 0

    def _sys_lookup(self, key):
        zeros = bytes(self.value_size)
        err = self.peek_elem(zeros)
        return err, None if err else zeros

    def _sys_update(self, key, value, flags):
        return self.push_elem(value, flags)

    def pop(self) -> bytes | None:
        self._writable("lookup_and_delete")
        raise self._error(ENOTSUPP, "lookup_and_delete")  # the syscall pops only queues and stacks

    def bits_set(self) -> int:
        return sum(bin(byte).count("1") for page in self._pages.values() for byte in page)

    def dump(self) -> dict:
        return {**self._header(), "hash_funcs": self.nr_hash_funcs, "bits": self.mask + 1,
                "bits_set": self.bits_set()}

    def load_entries(self, entries: Iterable[Mapping]) -> None:
        """Add each entry's "value"."""
        _push_entries(self, entries)


def _push_entries(m: _Keyless, entries: Iterable[Mapping]) -> None:
    for number, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("value"), str):
            raise BpforgeError(f"map '{m.name}': entry {number}: an entry is an object with a hex \"value\"")
        try:
            value = bytes.fromhex(entry["value"])
        except ValueError:
            raise BpforgeError(f"map '{m.name}': entry {number}: value is not hex") from None
        m._update(b"", value, BPF_ANY)


__all__ = ["BloomFilterMap", "QueueStackMap"]
