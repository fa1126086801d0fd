"""LPM trie maps (kernel/bpf/lpm_trie.c).

A key is a u32 prefix length in host byte order followed by `key_size - 4` data bytes, most significant
bit first. Two keys name the same entry when their prefix lengths and their first prefixlen bits agree;
the entry keeps the data bytes of the update that made it, bits past the prefix included (they come back
from iteration). Lookup, from programs and from the syscall alike, is a longest-prefix match over the
entries whose prefix length is at most the key's (trie_lookup_elem; a key longer than the trie matches
nothing). The kernel walks a binary trie; this keeps the entries in a dict by (prefixlen, prefix) and
tries the prefix lengths present, longest first, which finds the same entry.

Iteration is the trie's postorder (trie_get_next_key): more specific prefixes before the ones containing
them, a 0 bit before a 1 bit: that is the order of the prefix bit strings with an end mark that sorts
after both digits.

Every update makes a new node (the old one is freed after RCU), so a program's pointer to a replaced value
keeps the old one.
"""

from __future__ import annotations

import errno

from ...isa.maptypes import BPF_EXIST, BPF_F_ACCESS_MASK, BPF_F_NO_PREALLOC, BPF_F_NUMA_NODE, BPF_NOEXIST, MapSpec
from .base import VmMap, check_access_flags, check_create
from .limits import KMALLOC_MAX_SIZE, LPM_DATA_SIZE_MAX, LPM_NODE_SIZE

_FLAGS = BPF_F_NO_PREALLOC | BPF_F_NUMA_NODE | BPF_F_ACCESS_MASK
_DATA_MAX = LPM_DATA_SIZE_MAX
_VALUE_MAX = KMALLOC_MAX_SIZE - LPM_DATA_SIZE_MAX - LPM_NODE_SIZE  # LPM_VAL_SIZE_MAX


class _Entry:
    __slots__ = ("key", "value")

    def __init__(self, key: bytes, value: bytearray):
        self.key, self.value = key, value


class LpmTrieMap(VmMap):
    def __init__(self, mapdef: MapSpec, num_cpus: int):
        name, type_name = mapdef.name, mapdef.type_name
        # The kernel refuses a preallocated trie; like KernelMap.create (and every libbpf program, which
        # declares it) we create it with BPF_F_NO_PREALLOC whatever the definition says.
        flags = mapdef.flags | BPF_F_NO_PREALLOC
        check_create(name, type_name, mapdef.max_entries > 0, "max_entries is 0")
        check_access_flags(name, type_name, flags, _FLAGS)
        check_create(name, type_name, 5 <= mapdef.key_size <= 4 + _DATA_MAX,
                     f"key_size must be 4 (prefix length) + 1..{_DATA_MAX} data bytes, not {mapdef.key_size}")
        check_create(name, type_name, 1 <= mapdef.value_size <= _VALUE_MAX,
                     f"value_size must be 1..{_VALUE_MAX}, not {mapdef.value_size}")
        super().__init__(name, mapdef.type, mapdef.key_size, mapdef.value_size, mapdef.max_entries, flags,
                         num_cpus)
        self.data_size = mapdef.key_size - 4
        self.max_prefixlen = 8 * self.data_size
        self._entries: dict[tuple[int, int], _Entry] = {}
        self._lengths: dict[int, int] = {}  # prefix length -> how many entries have it
        self._order: list[tuple[int, int]] | None = []

    def _split(self, key: bytes) -> tuple[int, int]:
        """(prefixlen, data as a big integer): prefixlen may exceed max_prefixlen (callers check)."""
        return int.from_bytes(key[:4], "little"), int.from_bytes(key[4:], "big")

    def _id(self, plen: int, data: int) -> tuple[int, int]:
        return plen, data >> (self.max_prefixlen - plen)

    def _match(self, key: bytes) -> _Entry | None:
        plen, data = self._split(key)
        if plen > self.max_prefixlen:
            return None
        for length in sorted(self._lengths, reverse=True):
            if length <= plen:
                entry = self._entries.get(self._id(length, data))
                if entry is not None:
                    return entry
        return None

    def _do_update(self, key: bytes, value: bytes, flags: int) -> int:
        # trie_update_elem's checks, in its order.
        if flags > BPF_EXIST:
            return -errno.EINVAL
        plen, data = self._split(key)
        if plen > self.max_prefixlen:
            return -errno.EINVAL
        ident = self._id(plen, data)
        if ident in self._entries:
            if flags == BPF_NOEXIST:
                return -errno.EEXIST
        else:
            if flags == BPF_EXIST:
                return -errno.ENOENT
            if len(self._entries) >= self.max_entries:
                return -errno.ENOSPC
            self._lengths[plen] = self._lengths.get(plen, 0) + 1
            self._order = None
        self._entries[ident] = _Entry(bytes(key), bytearray(value))
        return 0

    def _do_delete(self, key: bytes) -> int:
        plen, data = self._split(key)
        if plen > self.max_prefixlen:
            return -errno.EINVAL
        ident = self._id(plen, data)
        if self._entries.pop(ident, None) is None:
            return -errno.ENOENT
        self._lengths[plen] -= 1
        if not self._lengths[plen]:
            del self._lengths[plen]
        self._order = None
        return 0

    def _postorder(self) -> list[tuple[int, int]]:
        if self._order is None:
            self._order = sorted(self._entries, key=lambda i: (format(i[1], f"0{i[0]}b") if i[0] else "") + "2")
        return self._order

    # syscall face
    def _sys_lookup(self, key):
        entry = self._match(key)
        return (-errno.ENOENT, None) if entry is None else (0, bytes(entry.value))

    def _sys_update(self, key, value, flags):
        return self._do_update(key, value, flags)

    def _sys_delete(self, key):
        return self._do_delete(key)

    def _keys(self):
        return [self._entries[i].key for i in self._postorder()]

    def _next_key(self, key):
        order = self._postorder()
        if not order:
            return None
        at = 0
        if key is not None:
            plen, data = self._split(key)
            ident = self._id(plen, data) if plen <= self.max_prefixlen else None
            if ident in self._entries:  # an entry: the one after it; anything else: the first
                at = order.index(ident) + 1
        return self._entries[order[at]].key if at < len(order) else None

    def __len__(self):
        return len(self._entries)

    # program face
    def prog_lookup(self, key, cpu):
        entry = self._match(bytes(key))
        return None if entry is None else entry.value

    def prog_update(self, key, value, flags, cpu):
        return self._do_update(bytes(key), bytes(value), flags)

    def prog_delete(self, key, cpu=0):
        return self._do_delete(bytes(key))
