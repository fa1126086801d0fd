"""Hash maps (kernel/bpf/hashtab.c): hash, percpu_hash, lru_hash, lru_percpu_hash.

Iteration follows the kernel's table: buckets in index order, each bucket newest-linked first. The bucket
is jhash(key, seed) & (n_buckets - 1) with n_buckets = roundup_pow_of_two(max_entries). The kernel seeds
jhash randomly unless the map has BPF_F_ZERO_SEED; we always use seed 0, so a BPF_F_ZERO_SEED map iterates
exactly as the kernel's does and any other map in one order the kernel could have produced.

Where a program's pointer leads after the element changes (what `prog_lookup` returned), checked against
the kernel by test_vm_maps_kernel.py:
- hash: an update *replaces* the element (htab_map_update_elem links a new one and unlinks the old), so an
  old pointer keeps the old value until that memory is reused. A preallocated map swaps: the replaced
  element becomes the CPU's spare (extra_elems), the storage of the next replacing update on that CPU. A
  deleted element goes onto the deleting CPU's free list (pcpu_freelist: pushed on top, popped from the
  inserting CPU's list first, then the next CPUs'). A BPF_F_NO_PREALLOC map frees to the CPU's
  bpf_mem_alloc cache, which hands the same memory to that CPU's next allocation (no RCU wait): replaced
  and deleted elements are reused LIFO per CPU. (The allocator refills its cache from an irq_work; if that
  lands between a free and the next allocation the kernel hands out a fresh element instead.)
- percpu_hash, lru_percpu_hash: an update of an existing element writes in place (the pointer sees it).
- lru_hash: like hash, a new node every update; the old one returns to the LRU's free lists (lru.py).
"""

from __future__ import annotations

import errno

from ...errors import ENOTSUPP
from ...isa.maptypes import (
    BPF_EXIST, BPF_F_ACCESS_MASK, BPF_F_LOCK, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC, BPF_F_NUMA_NODE,
    BPF_F_ZERO_SEED, BPF_NOEXIST, MapSpec, round8,
)
from ...isa.numbers import M32
from .base import PerCpuValue, VmMap, check_access_flags, check_create
from .limits import HTAB_BUCKET_SIZE, HTAB_ELEM_SIZE, KMALLOC_MAX_SIZE, PCPU_MIN_UNIT_SIZE, check_memory
from .lru import Lru, Node

_FLAGS = BPF_F_NO_PREALLOC | BPF_F_NO_COMMON_LRU | BPF_F_NUMA_NODE | BPF_F_ACCESS_MASK | BPF_F_ZERO_SEED
# htab_map_alloc: max_entries above 2^31 is E2BIG, and so is a bucket array whose size overflows a u32
# (n_buckets > U32_MAX / sizeof(struct bucket)), i.e. more than 2^27 entries.
_MAX_ENTRIES = 1 << 27


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    """__jhash_mix: each step subtracts, xors a rotation, adds, on 32 bits."""
    for x, y, z, k in ((0, 2, 1, 4), (1, 0, 2, 6), (2, 1, 0, 8), (0, 2, 1, 16), (1, 0, 2, 19), (2, 1, 0, 4)):
        v = [a, b, c]
        v[x] = ((v[x] - v[y]) & M32) ^ _rol(v[y], k)
        v[y] = (v[y] + v[z]) & M32
        a, b, c = v
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    """__jhash_final, returning c."""
    for x, y, k in ((2, 1, 14), (0, 2, 11), (1, 0, 25), (2, 1, 16), (0, 2, 4), (1, 0, 14), (2, 1, 24)):
        v = [a, b, c]
        v[x] = ((v[x] ^ v[y]) - _rol(v[y], k)) & M32
        a, b, c = v
    return c


def jhash(key: bytes, seed: int = 0) -> int:
    """Bob Jenkins' lookup3 as include/linux/jhash.h has it (jhash2 over u32 words agrees with it on a
    little-endian host, which is what htab_map_hash picks for keys of a multiple of 4 bytes)."""
    length = len(key)
    a = b = c = (0xDEADBEEF + length + seed) & M32
    i = 0
    while length > 12:
        a = (a + int.from_bytes(key[i:i + 4], "little")) & M32
        b = (b + int.from_bytes(key[i + 4:i + 8], "little")) & M32
        c = (c + int.from_bytes(key[i + 8:i + 12], "little")) & M32
        a, b, c = _mix(a, b, c)
        length -= 12
        i += 12
    if length == 0:
        return c
    tail = key[i:].ljust(12, b"\0")  # the switch's fall-through adds the last 1..12 bytes little-endian
    a = (a + int.from_bytes(tail[0:4], "little")) & M32
    b = (b + int.from_bytes(tail[4:8], "little")) & M32
    c = (c + int.from_bytes(tail[8:12], "little")) & M32
    return _final(a, b, c)


class _Elem:
    """A linked element: key, value storage (bytearray, or PerCpuValue), bucket, and `seq`, the order in
    which it was linked (a bucket lists the newest first)."""

    __slots__ = ("bucket", "key", "seq", "value")


class _LruElem(Node):
    """An LRU map's element is its LRU node (struct htab_elem embeds struct bpf_lru_node)."""

    __slots__ = ("bucket", "key", "seq", "value")


def _roundup_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def check_hash(mapdef: MapSpec, key_size: int, value_size: int) -> None:
    """htab_map_alloc_check."""
    name, type_name, flags = mapdef.name, mapdef.type_name, mapdef.flags
    lru = type_name in ("lru_hash", "lru_percpu_hash")
    percpu = type_name in ("percpu_hash", "lru_percpu_hash")
    check_access_flags(name, type_name, flags, _FLAGS)
    check_create(name, type_name, lru or not flags & BPF_F_NO_COMMON_LRU, "BPF_F_NO_COMMON_LRU is for LRU maps")
    check_create(name, type_name, not (lru and flags & BPF_F_NO_PREALLOC), "an LRU map must be preallocated",
                 ENOTSUPP)
    check_create(name, type_name, not (flags & BPF_F_NUMA_NODE and (percpu or flags & BPF_F_NO_COMMON_LRU)),
                 "BPF_F_NUMA_NODE with per-CPU values or lists")
    check_create(name, type_name, mapdef.max_entries > 0, "max_entries is 0")
    check_create(name, type_name, key_size > 0, "key_size is 0")
    check_create(name, type_name, value_size > 0, "value_size is 0")
    check_create(name, type_name, key_size + value_size < KMALLOC_MAX_SIZE - HTAB_ELEM_SIZE,
                 f"key and value together must be under {KMALLOC_MAX_SIZE - HTAB_ELEM_SIZE} bytes", errno.E2BIG)
    check_create(name, type_name, not (percpu and round8(value_size) > PCPU_MIN_UNIT_SIZE),
                 f"per-CPU values are limited to {PCPU_MIN_UNIT_SIZE} bytes", errno.E2BIG)
    check_create(name, type_name, mapdef.max_entries <= _MAX_ENTRIES, "more than 2^27 entries", errno.E2BIG)


def kernel_bytes(type_name: str, key_size: int, value_size: int, max_entries: int, flags: int,
                 num_cpus: int) -> int:
    """What htab_map_alloc allocates: the buckets and, preallocated, every element (plus a spare per CPU
    for plain hash maps), each with its per-CPU values for per-CPU maps."""
    lru = type_name in ("lru_hash", "lru_percpu_hash")
    percpu = type_name in ("percpu_hash", "lru_percpu_hash")
    total = _roundup_pow2(max_entries) * HTAB_BUCKET_SIZE
    if flags & BPF_F_NO_PREALLOC:
        return total
    elems = max_entries + (0 if percpu or lru else num_cpus)
    elem_size = HTAB_ELEM_SIZE + round8(key_size) + (8 if percpu else round8(value_size))
    total += elems * elem_size
    if percpu:
        total += elems * round8(value_size) * num_cpus
    return total


class HashMap(VmMap):
    """The four hash map types; `percpu` and `lru` select the kernel's code path."""

    def __init__(self, mapdef: MapSpec, num_cpus: int, value_size: int | None = None):
        value_size = mapdef.value_size if value_size is None else value_size
        check_hash(mapdef, mapdef.key_size, value_size)
        check_memory(mapdef.name, mapdef.type_name, kernel_bytes(mapdef.type_name, mapdef.key_size, value_size,
                                                                 mapdef.max_entries, mapdef.flags, num_cpus))
        max_entries = mapdef.max_entries
        self.lru = mapdef.type_name in ("lru_hash", "lru_percpu_hash")
        self.percpu = mapdef.type_name in ("percpu_hash", "lru_percpu_hash")
        if self.lru and mapdef.flags & BPF_F_NO_COMMON_LRU:
            # htab_map_alloc: every CPU's list gets the same number of nodes, at least one.
            rounded = -(-max_entries // num_cpus) * num_cpus
            max_entries = rounded if rounded <= 0xFFFFFFFF else max_entries // num_cpus * num_cpus
        super().__init__(mapdef.name, mapdef.type, mapdef.key_size, value_size, max_entries, mapdef.flags,
                         num_cpus)
        self.prealloc = not mapdef.flags & BPF_F_NO_PREALLOC
        self.n_buckets = _roundup_pow2(max_entries)
        self._elems: dict[bytes, _Elem | _LruElem] = {}
        self._seq = 0
        self._order: list[bytes] | None = []  # keys in iteration order; None once stale
        self._recycled: list[list] = [[] for _ in range(num_cpus)]  # per CPU: freed storage, newest last
        self._spare: list = [None] * num_cpus  # htab->extra_elems: one spare element per CPU (made on use)
        if self.prealloc and not self.lru:
            # pcpu_freelist_populate: max_entries elements (+ one spare per CPU for plain hash maps) dealt
            # out evenly, the first CPUs taking the remainder; alloc_extra_elems then pops the spares from
            # the creating CPU's list onwards. Never-used elements are counted, not made.
            spares = 0 if self.percpu else num_cpus
            total = max_entries + spares
            self._fresh = [total // num_cpus + (cpu < total % num_cpus) for cpu in range(num_cpus)]
            for _ in range(spares):
                self._pop_fresh(self.syscall_cpu)
        if self.lru:
            self._lru = Lru(max_entries, num_cpus, bool(mapdef.flags & BPF_F_NO_COMMON_LRU), self._new_node,
                            self._evict)

    # ---- storage --------------------------------------------------------------------------------------

    def _new_storage(self):
        return PerCpuValue(self.num_cpus, self.value_size) if self.percpu else bytearray(self.value_size)

    def _new_node(self) -> _LruElem:
        node = _LruElem()
        node.key, node.value = None, self._new_storage()
        return node

    def _link(self, elem, key: bytes) -> None:
        """Put `elem` at the head of its bucket (replacing whatever had the same key)."""
        elem.key = key
        elem.bucket = jhash(key) & (self.n_buckets - 1)
        self._seq += 1
        elem.seq = self._seq
        self._elems[key] = elem
        self._order = None

    def _unlink(self, key: bytes):
        self._order = None
        return self._elems.pop(key)

    def _evict(self, node) -> bool:
        """htab_lru_map_delete_node: the LRU takes back a node; unlink its element if it is still linked."""
        if node.key is not None and self._elems.get(node.key) is node:
            self._unlink(node.key)
            return True
        return False

    def _wrap(self, cpu: int):
        return [(cpu + i) % self.num_cpus for i in range(self.num_cpus)]  # for_each_cpu_wrap

    def _pop_fresh(self, cpu: int) -> bool:
        for other in self._wrap(cpu):
            if self._fresh[other]:
                self._fresh[other] -= 1
                return True
        return False

    def _alloc(self, cpu: int, replacing) -> tuple[int, object]:
        """alloc_htab_elem's choice of storage for a non-LRU map: (0 or -E2BIG, storage)."""
        if self.prealloc:
            if replacing is not None and not self.percpu:
                spare = self._spare[cpu] if self._spare[cpu] is not None else self._new_storage()
                self._spare[cpu] = replacing.value
                return 0, spare
            for other in self._wrap(cpu):  # __pcpu_freelist_pop: this CPU's list first, then the next ones
                if self._recycled[other]:
                    return 0, self._recycled[other].pop()
                if self._fresh[other]:
                    self._fresh[other] -= 1
                    return 0, self._new_storage()
            return -errno.E2BIG, None
        if replacing is None and len(self._elems) >= self.max_entries:
            return -errno.E2BIG, None
        return 0, self._recycled[cpu].pop() if self._recycled[cpu] else self._new_storage()

    def _release(self, elem, cpu: int) -> None:
        """Give an unlinked element back: to the LRU, or onto `cpu`'s free list or allocator cache."""
        if self.lru:
            self._lru.push_free(elem)
        else:
            self._recycled[cpu].append(elem.value)

    # ---- the kernel's operations ----------------------------------------------------------------------

    @staticmethod
    def _check_flags(old, flags: int) -> int:
        flags &= ~BPF_F_LOCK
        if old is not None and flags == BPF_NOEXIST:
            return -errno.EEXIST
        if old is None and flags == BPF_EXIST:
            return -errno.ENOENT
        return 0

    def _do_update(self, key: bytes, value: bytes, flags: int, cpu: int, all_cpus: bool) -> int:
        if self.lru:
            if self.percpu:
                return self._lru_percpu_update(key, value, flags, cpu, all_cpus)
            return self._lru_update(key, value, flags, cpu)
        if self.percpu:
            return self._percpu_update(key, value, flags, cpu, all_cpus)
        # htab_map_update_elem
        if flags & ~BPF_F_LOCK > BPF_EXIST:
            return -errno.EINVAL
        if flags & BPF_F_LOCK:  # no bpf_spin_lock in the value
            return -errno.EINVAL
        old = self._elems.get(key)
        err = self._check_flags(old, flags)
        if err:
            return err
        err, storage = self._alloc(cpu, old)
        if err:
            return err
        storage[:] = value
        elem = _Elem()
        elem.value = storage
        self._link(elem, key)
        if old is not None and not self.prealloc:  # freed after the new one was allocated
            self._release(old, cpu)
        return 0

    def _percpu_update(self, key, value, flags, cpu, all_cpus) -> int:
        # __htab_percpu_map_update_elem: an existing element is updated in place.
        if flags > BPF_EXIST:
            return -errno.EINVAL
        old = self._elems.get(key)
        err = self._check_flags(old, flags)
        if err:
            return err
        if old is not None:
            self._copy_percpu(old.value, value, cpu, all_cpus)
            return 0
        err, storage = self._alloc(cpu, None)
        if err:
            return err
        self._init_percpu(storage, value, cpu, all_cpus)
        elem = _Elem()
        elem.value = storage
        self._link(elem, key)
        return 0

    def _lru_update(self, key, value, flags, cpu) -> int:
        # htab_lru_map_update_elem: a node is taken first, even to replace an existing key (and taking it
        # may evict other keys, or this very one).
        if flags > BPF_EXIST:
            return -errno.EINVAL
        node = self._lru.pop_free(cpu)
        if node is None:
            return -errno.ENOMEM
        node.key = None
        node.value[:] = value
        old = self._elems.get(key)
        err = self._check_flags(old, flags)
        if err:
            self._lru.push_free(node)
            return err
        self._link(node, key)
        if old is not None:
            self._lru.set_ref(node)
            self._lru.push_free(old)
        return 0

    def _lru_percpu_update(self, key, value, flags, cpu, all_cpus) -> int:
        # __htab_lru_percpu_map_update_elem: BPF_EXIST takes no node; an existing element is updated in
        # place and marked referenced.
        if flags > BPF_EXIST:
            return -errno.EINVAL
        node = None
        if flags != BPF_EXIST:
            node = self._lru.pop_free(cpu)
            if node is None:
                return -errno.ENOMEM
            node.key = None
        old = self._elems.get(key)
        err = self._check_flags(old, flags)
        if not err:
            if old is not None:
                self._lru.set_ref(old)
                self._copy_percpu(old.value, value, cpu, all_cpus)
            else:
                self._init_percpu(node.value, value, cpu, all_cpus)
                self._link(node, key)
                node = None
        if node is not None:
            self._lru.push_free(node)
        return err

    @staticmethod
    def _copy_percpu(storage: PerCpuValue, value: bytes, cpu: int, all_cpus: bool) -> None:
        if all_cpus:
            storage.set_all(value)
        else:
            storage.set_one(cpu, value)

    def _init_percpu(self, storage: PerCpuValue, value: bytes, cpu: int, all_cpus: bool) -> None:
        # pcpu_init_value: from a program, the other CPUs' values are zeroed (their padding left as it was)
        # and this CPU's gets the value; the kernel copies it rounded up to 8 from the program's buffer,
        # whose bytes past value_size we do not have: they become zeros.
        if all_cpus:
            storage.set_all(value)
            return
        for other, slot in enumerate(storage.values):
            slot[:] = value if other == cpu else bytes(self.value_size)
        storage.pads[cpu] = bytes(round8(self.value_size) - self.value_size)

    def _do_delete(self, key: bytes, cpu: int) -> int:
        elem = self._elems.get(key)
        if elem is None:
            return -errno.ENOENT
        self._unlink(key)
        self._release(elem, cpu)
        return 0

    # ---- syscall face -------------------------------------------------------------------------------------

    def _sys_lookup(self, key):
        # The syscall's lookup of an LRU map does not mark the element used (map_lookup_elem_sys_only).
        elem = self._elems.get(key)
        if elem is None:
            return -errno.ENOENT, None
        return 0, elem.value.syscall_bytes() if self.percpu else bytes(elem.value)

    def _sys_update(self, key, value, flags):
        return self._do_update(key, value, flags, self.syscall_cpu, True)

    def _sys_delete(self, key):
        return self._do_delete(key, self.syscall_cpu)

    def _keys(self):
        if self._order is None:
            elems = sorted(self._elems.values(), key=lambda e: (e.bucket, -e.seq))
            self._order = [e.key for e in elems]
        return list(self._order)

    def __len__(self):
        return len(self._elems)

    # ---- program face -------------------------------------------------------------------------------------

    def prog_lookup(self, key, cpu):
        elem = self._elems.get(key)
        if elem is None:
            return None
        if self.lru:
            self._lru.set_ref(elem)
        return elem.value.values[cpu] if self.percpu else elem.value

    def prog_update(self, key, value, flags, cpu):
        return self._do_update(bytes(key), bytes(value), flags, cpu, False)

    def prog_delete(self, key, cpu=0):
        return self._do_delete(bytes(key), cpu)

    def prog_elements(self, cpu: int):
        """(key, live storage) of each element in bucket order, as bpf_for_each_map_elem visits them (an
        element deleted meanwhile is skipped; LRU elements are not marked used)."""
        for key in self._keys():
            elem = self._elems.get(key)
            if elem is not None:
                yield key, elem.value.values[cpu] if self.percpu else elem.value
