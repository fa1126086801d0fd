"""The interpreter's maps: each kernel semantic as a unit test (the kernel differential tests are in
test_vm_maps_kernel.py)."""

from __future__ import annotations

import errno
import json

import pytest

from bpforge.isa.maptypes import MapSpec
from bpforge.errors import BpforgeError
from bpforge.isa.maptypes import BPF_ANY, BPF_EXIST, BPF_F_LOCK, BPF_NOEXIST, MAP_TYPE_IDS, MapError
from bpforge.vm.maps import (
    ENOTSUPP, ArrayOfMapsMap, HashOfMapsMap, ProgArrayMap, RingBufMap, create_map, create_maps, jhash, read_entries,
)

BPF_F_NO_PREALLOC, BPF_F_NO_COMMON_LRU, BPF_F_RDONLY, BPF_F_WRONLY = 0x1, 0x2, 0x8, 0x10
BPF_F_ZERO_SEED, BPF_F_RDONLY_PROG, BPF_F_INNER_MAP = 0x40, 0x80, 0x1000


def md(type_name, key_size=4, value_size=4, max_entries=4, flags=0, **kw) -> MapSpec:
    return MapSpec(name=kw.pop("name", "m"), type=MAP_TYPE_IDS[type_name], key_size=key_size,
                   value_size=value_size, max_entries=max_entries, flags=flags, **kw)


def u32(n: int) -> bytes:
    return n.to_bytes(4, "little")


def errno_of(fn, *args) -> int:
    with pytest.raises(MapError) as info:
        fn(*args)
    return info.value.errno


# ---- arrays -------------------------------------------------------------------------------------------------

def test_array_elements_exist_zeroed_and_update_in_place():
    m = create_map(md("array", value_size=6, max_entries=3))
    assert m.lookup(u32(2)) == bytes(6)
    m.update(u32(1), b"abcdef")
    assert m.lookup(u32(1)) == b"abcdef"
    m.update(u32(1), b"ghijkl", BPF_EXIST)
    assert m.lookup(u32(1)) == b"ghijkl"
    assert list(m.keys()) == [u32(0), u32(1), u32(2)]
    assert dict(m.items())[u32(1)] == b"ghijkl"
    assert len(m) == 3


def test_array_errnos():
    m = create_map(md("array", max_entries=2))
    assert m.lookup(u32(2)) is None  # ENOENT past the end
    assert errno_of(m.update, u32(2), b"1234") == errno.E2BIG
    assert errno_of(m.update, u32(0), b"1234", BPF_NOEXIST) == errno.EEXIST  # every element exists
    assert errno_of(m.update, u32(5), b"1234", BPF_NOEXIST) == errno.E2BIG  # the index is checked first
    assert errno_of(m.delete, u32(0)) == errno.EINVAL
    assert errno_of(m.delete, u32(9)) == errno.EINVAL
    for flags in (3, 8, BPF_F_LOCK, BPF_F_LOCK | BPF_EXIST):
        assert errno_of(m.update, u32(0), b"1234", flags) == errno.EINVAL
    assert errno_of(m.update, b"\0\0\0", b"1234") == errno.EINVAL  # key length
    assert errno_of(m.update, u32(0), b"12345") == errno.EINVAL  # value length
    assert errno_of(m.lookup, u32(0) + b"\0") == errno.EINVAL


def test_array_next_key():
    m = create_map(md("array", max_entries=3))
    assert m.next_key(None) == u32(0)
    assert m.next_key(u32(1)) == u32(2)
    assert m.next_key(u32(2)) is None
    assert m.next_key(u32(7)) == u32(0)  # past the end restarts


def test_array_program_side_is_live_storage():
    m = create_map(md("array", value_size=4, max_entries=2))
    p = m.prog_lookup(u32(1), 0)
    assert p is m.prog_lookup(u32(1), 0)
    p[0:4] = b"wxyz"  # a program's store through the pointer
    assert m.lookup(u32(1)) == b"wxyz"
    assert m.prog_update(u32(1), b"1234", BPF_ANY, 0) == 0
    assert bytes(p) == b"1234"  # arrays update in place: the pointer sees it
    assert m.prog_lookup(u32(2), 0) is None
    assert m.prog_update(u32(2), b"1234", BPF_ANY, 0) == -errno.E2BIG
    assert m.prog_update(u32(0), b"1234", BPF_NOEXIST, 0) == -errno.EEXIST
    assert m.prog_update(u32(0), b"1234", 3, 0) == -errno.EINVAL
    assert m.prog_update(u32(0), b"1234", BPF_F_LOCK, 0) == -errno.EINVAL
    assert m.prog_delete(u32(0)) == -errno.EINVAL


@pytest.mark.parametrize("kw", [{"key_size": 8}, {"value_size": 0}, {"max_entries": 0}, {"flags": 0x20000000},
                                {"flags": BPF_F_RDONLY_PROG | 0x100}, {"flags": BPF_F_RDONLY | BPF_F_WRONLY}])
def test_array_creation_refused(kw):
    assert errno_of(create_map, md("array", **kw)) == errno.EINVAL


def test_percpu_array_values_per_cpu():
    m = create_map(md("percpu_array", value_size=3, max_entries=2), num_cpus=3)
    assert m.syscall_value_size == 24
    assert m.lookup(u32(0)) == bytes(24)
    value = bytes(range(1, 25))
    m.update(u32(0), value)
    assert m.lookup(u32(0)) == value  # the padding bytes travel too (bpf_long_memcpy of 8-byte slots)
    assert m.cpu_values(value) == [b"\x01\x02\x03", b"\x09\x0a\x0b", b"\x11\x12\x13"]
    p1 = m.prog_lookup(u32(0), 1)
    assert bytes(p1) == b"\x09\x0a\x0b" and p1 is not m.prog_lookup(u32(0), 0)
    assert m.prog_update(u32(0), b"xyz", BPF_ANY, 2) == 0
    assert m.cpu_values(m.lookup(u32(0))) == [b"\x01\x02\x03", b"\x09\x0a\x0b", b"xyz"]
    assert m.lookup(u32(0))[19:24] == value[19:24]  # a program's update leaves the padding alone
    assert m.dump()["entries"][0] == {"key": "00000000", "values": ["010203", "090a0b", "78797a"]}
    assert errno_of(m.update, u32(0), value, BPF_F_LOCK) == errno.EINVAL


# ---- hash maps ----------------------------------------------------------------------------------------------

def test_hash_errnos():
    m = create_map(md("hash", max_entries=2))
    assert m.lookup(u32(1)) is None
    m.update(u32(1), b"aaaa", BPF_NOEXIST)
    assert errno_of(m.update, u32(1), b"bbbb", BPF_NOEXIST) == errno.EEXIST
    assert errno_of(m.update, u32(2), b"bbbb", BPF_EXIST) == errno.ENOENT
    m.update(u32(2), b"bbbb")
    assert errno_of(m.update, u32(3), b"cccc") == errno.E2BIG  # full
    m.update(u32(2), b"dddd")  # replacing in a full map is fine
    m.update(u32(2), b"eeee", BPF_EXIST)
    assert m.lookup(u32(2)) == b"eeee"
    assert errno_of(m.delete, u32(3)) == errno.ENOENT
    for flags in (3, 8, BPF_F_LOCK):
        assert errno_of(m.update, u32(1), b"1234", flags) == errno.EINVAL
    m.delete(u32(1))
    m.update(u32(3), b"cccc")
    assert sorted(m.keys()) == [u32(2), u32(3)] and len(m) == 2


def test_hash_no_prealloc_full():
    m = create_map(md("hash", max_entries=1, flags=BPF_F_NO_PREALLOC))
    m.update(u32(1), b"aaaa")
    assert errno_of(m.update, u32(2), b"bbbb") == errno.E2BIG
    m.update(u32(1), b"cccc")
    assert m.lookup(u32(1)) == b"cccc"


def test_hash_iteration_is_the_kernel_bucket_order():
    m = create_map(md("hash", key_size=4, max_entries=5, flags=BPF_F_ZERO_SEED))
    keys = [u32(n) for n in (7, 1, 300, 42, 9)]
    for k in keys:
        m.update(k, b"vvvv")
    n_buckets = 8  # roundup_pow_of_two(5)
    # A bucket lists its newest element first.
    expected = sorted(keys, key=lambda k: (jhash(k) & (n_buckets - 1), -keys.index(k)))
    assert list(m.keys()) == expected
    assert m.next_key(None) == expected[0]
    assert m.next_key(expected[1]) == expected[2]
    assert m.next_key(expected[-1]) is None
    assert m.next_key(u32(12345)) == expected[0]  # a missing key restarts
    m.update(expected[0], b"wwww")  # a replaced element is relinked at its bucket's head
    assert set(m.keys()) == set(keys)


def test_jhash_known_values():
    # include/linux/jhash.h: the empty key hashes to the initial value; jhash2 over words agrees with jhash.
    assert jhash(b"") == 0xDEADBEEF
    assert jhash(b"", 5) == (0xDEADBEEF + 5) & 0xFFFFFFFF
    assert jhash(bytes(4)) != jhash(bytes(8))


def test_hash_replaced_element_keeps_old_value_for_old_pointer():
    m = create_map(md("hash", max_entries=4), num_cpus=2)
    m.update(u32(1), b"AAAA")
    p = m.prog_lookup(u32(1), 0)
    assert m.prog_update(u32(1), b"BBBB", BPF_ANY, 0) == 0
    assert bytes(p) == b"AAAA"  # the element was replaced; p is the old one
    q = m.prog_lookup(u32(1), 0)
    assert q is not p and bytes(q) == b"BBBB"
    # The replaced element became CPU 0's spare: the next replacing update on CPU 0 reuses it.
    assert m.prog_update(u32(1), b"CCCC", BPF_ANY, 0) == 0
    assert p is m.prog_lookup(u32(1), 0) and bytes(p) == b"CCCC"
    assert m.prog_update(u32(1), b"DDDD", BPF_ANY, 1) == 0  # CPU 1 has its own spare
    assert bytes(p) == b"CCCC" and bytes(q) == b"BBBB"  # p is now CPU 1's spare, q CPU 0's
    assert bytes(m.prog_lookup(u32(1), 0)) == b"DDDD"


def test_hash_no_prealloc_reuses_freed_elements_per_cpu():
    # bpf_mem_alloc hands a CPU's last freed element to that CPU's next allocation, RCU or not.
    m = create_map(md("hash", max_entries=4, flags=BPF_F_NO_PREALLOC), num_cpus=2)
    m.update(u32(1), b"AAAA")
    p = m.prog_lookup(u32(1), 0)
    m.prog_update(u32(1), b"BBBB", BPF_ANY, 0)
    assert bytes(p) == b"AAAA"  # replaced: p is the freed old element
    m.prog_update(u32(1), b"CCCC", BPF_ANY, 0)
    assert bytes(p) == b"CCCC" and m.prog_lookup(u32(1), 0) is p  # ... which the next allocation took
    m.prog_delete(u32(1), 1)  # freed on CPU 1
    m.prog_update(u32(2), b"DDDD", BPF_ANY, 0)
    assert bytes(p) == b"CCCC"  # CPU 0 does not take from CPU 1's cache
    m.prog_update(u32(3), b"EEEE", BPF_ANY, 1)
    assert bytes(p) == b"EEEE"


def test_hash_deleted_element_storage_comes_back_on_insert():
    m = create_map(md("hash", max_entries=4))
    m.update(u32(1), b"AAAA")
    p = m.prog_lookup(u32(1), 0)
    assert m.prog_delete(u32(1)) == 0
    assert m.prog_delete(u32(1)) == -errno.ENOENT
    assert bytes(p) == b"AAAA" and m.prog_lookup(u32(1), 0) is None
    m.prog_update(u32(2), b"BBBB", BPF_ANY, 0)
    assert m.prog_lookup(u32(2), 0) is p  # preallocated elements are recycled


def test_hash_program_errnos():
    m = create_map(md("hash", max_entries=1))
    assert m.prog_update(u32(1), b"AAAA", BPF_EXIST, 0) == -errno.ENOENT
    assert m.prog_update(u32(1), b"AAAA", BPF_NOEXIST, 0) == 0
    assert m.prog_update(u32(1), b"AAAA", BPF_NOEXIST, 0) == -errno.EEXIST
    assert m.prog_update(u32(2), b"AAAA", BPF_ANY, 0) == -errno.E2BIG
    assert m.prog_update(u32(2), b"AAAA", 4, 0) == -errno.EINVAL


def test_percpu_hash():
    m = create_map(md("percpu_hash", value_size=4, max_entries=2), num_cpus=2)
    assert m.syscall_value_size == 16
    m.update(u32(1), b"a" * 8 + b"b" * 8)
    assert m.lookup(u32(1)) == b"a" * 8 + b"b" * 8  # padding kept
    p = m.prog_lookup(u32(1), 1)
    assert bytes(p) == b"bbbb"
    assert m.prog_update(u32(1), b"cccc", BPF_ANY, 1) == 0
    assert bytes(p) == b"cccc"  # per-CPU hash maps update in place
    assert m.lookup(u32(1)) == b"a" * 8 + b"cccc" + b"b" * 4
    # A program's insert sets its CPU's value and zeroes the others'.
    assert m.prog_update(u32(2), b"dddd", BPF_ANY, 1) == 0
    assert m.cpu_values(m.lookup(u32(2))) == [bytes(4), b"dddd"]
    assert errno_of(m.update, u32(3), bytes(16)) == errno.E2BIG
    assert errno_of(m.update, u32(1), bytes(8)) == errno.EINVAL  # the value is every CPU's


@pytest.mark.parametrize("kw,err", [
    ({"flags": BPF_F_NO_COMMON_LRU}, errno.EINVAL), ({"key_size": 0}, errno.EINVAL),
    ({"value_size": 0}, errno.EINVAL), ({"max_entries": 0}, errno.EINVAL), ({"flags": 0x400}, errno.EINVAL),
])
def test_hash_creation_refused(kw, err):
    assert errno_of(create_map, md("hash", **kw)) == err


def test_lru_needs_prealloc():
    assert errno_of(create_map, md("lru_hash", flags=BPF_F_NO_PREALLOC)) == ENOTSUPP


# ---- LRU --------------------------------------------------------------------------------------------------

def test_lru_never_full():
    m = create_map(md("lru_hash", max_entries=8), num_cpus=2)
    for n in range(100):
        m.update(u32(n), u32(n), BPF_NOEXIST)
        assert m.lookup(u32(n)) == u32(n)  # the newest is always there
        assert len(m) <= 8
    assert len(m) > 0


def test_lru_program_lookup_protects_an_element():
    # With 8 nodes on 2 CPUs the common LRU hands out 2 nodes per refill; when CPU 0 runs out it
    # shrinks the inactive list from its tail, passing over referenced nodes.
    def survivors(touch: bool) -> set[int]:
        m = create_map(md("lru_hash", max_entries=8), num_cpus=2)
        for n in range(8):
            m.update(u32(n), b"vvvv")
        for n in range(8, 12):
            if touch:
                m.prog_lookup(u32(0), 0)  # the program marks key 0 used
                m.prog_lookup(u32(1), 0)
            m.update(u32(n), b"vvvv")
        return {int.from_bytes(k, "little") for k in m.keys()}

    assert {0, 1} <= survivors(True)
    assert not {0, 1} & survivors(False)


def test_lru_syscall_lookup_does_not_mark():
    def evicted(lookup) -> set[int]:
        m = create_map(md("lru_hash", max_entries=8), num_cpus=2)
        for n in range(8):
            m.update(u32(n), b"vvvv")
        for n in range(8, 12):
            lookup(m, u32(0))
            m.update(u32(n), b"vvvv")
        return set(range(12)) - {int.from_bytes(k, "little") for k in m.keys()}

    assert evicted(lambda m, k: m.lookup(k)) == evicted(lambda m, k: None)


def test_lru_replacement_makes_a_new_element():
    m = create_map(md("lru_hash", max_entries=8), num_cpus=1)
    m.update(u32(1), b"AAAA")
    p = m.prog_lookup(u32(1), 0)
    assert m.prog_update(u32(1), b"BBBB", BPF_ANY, 0) == 0
    assert bytes(p) == b"AAAA" and bytes(m.prog_lookup(u32(1), 0)) == b"BBBB"
    assert m.prog_update(u32(9), b"CCCC", BPF_EXIST, 0) == -errno.ENOENT
    assert m.prog_update(u32(1), b"CCCC", 5, 0) == -errno.EINVAL


def test_lru_percpu_updates_in_place():
    m = create_map(md("lru_percpu_hash", max_entries=4), num_cpus=2)
    m.update(u32(1), b"A" * 16)
    p = m.prog_lookup(u32(1), 0)
    assert m.prog_update(u32(1), b"BBBB", BPF_EXIST, 0) == 0
    assert bytes(p) == b"BBBB"
    assert m.lookup(u32(1)) == b"BBBB" + b"A" * 12


def test_lru_no_common_lru_rounds_max_entries():
    m = create_map(md("lru_hash", max_entries=5, flags=BPF_F_NO_COMMON_LRU), num_cpus=2)
    assert m.max_entries == 6
    for n in range(50):
        m.update(u32(n), b"vvvv")
        assert len(m) <= 6


# ---- LPM tries ------------------------------------------------------------------------------------------------

def lpm_key(plen: int, *data: int) -> bytes:
    return u32(plen) + bytes(data)


def test_lpm_longest_prefix_match():
    m = create_map(md("lpm_trie", key_size=8, value_size=1, max_entries=8, flags=BPF_F_NO_PREALLOC))
    m.update(lpm_key(8, 10, 0, 0, 0), b"a")
    m.update(lpm_key(16, 10, 1, 0, 0), b"b")
    m.update(lpm_key(24, 10, 1, 2, 0), b"c")
    assert m.lookup(lpm_key(32, 10, 1, 2, 3)) == b"c"
    assert m.lookup(lpm_key(32, 10, 1, 3, 3)) == b"b"
    assert m.lookup(lpm_key(32, 10, 9, 9, 9)) == b"a"
    assert m.lookup(lpm_key(32, 11, 0, 0, 0)) is None
    assert m.lookup(lpm_key(20, 10, 1, 2, 3)) == b"b"  # only entries no longer than the key's prefix
    assert m.lookup(lpm_key(33, 10, 1, 2, 3)) is None  # longer than the trie: nothing
    m.update(lpm_key(0, 0, 0, 0, 0), b"d")
    assert m.lookup(lpm_key(32, 11, 0, 0, 0)) == b"d"
    assert bytes(m.prog_lookup(lpm_key(32, 10, 1, 2, 9), 0)) == b"c"


def test_lpm_entries_and_errnos():
    m = create_map(md("lpm_trie", key_size=8, value_size=1, max_entries=2, flags=BPF_F_NO_PREALLOC))
    m.update(lpm_key(8, 10, 1, 2, 3), b"a")
    m.update(lpm_key(8, 10, 9, 9, 9), b"b")  # the same /8 entry: the stored key becomes this one
    assert list(m.keys()) == [lpm_key(8, 10, 9, 9, 9)]
    assert errno_of(m.update, lpm_key(8, 10, 7, 7, 7), b"c", BPF_NOEXIST) == errno.EEXIST
    assert errno_of(m.update, lpm_key(9, 10, 7, 7, 7), b"c", BPF_EXIST) == errno.ENOENT
    assert errno_of(m.update, lpm_key(33, 10, 7, 7, 7), b"c") == errno.EINVAL
    assert errno_of(m.update, lpm_key(8, 10, 7, 7, 7), b"c", 3) == errno.EINVAL
    m.update(lpm_key(16, 10, 1, 0, 0), b"c")
    assert errno_of(m.update, lpm_key(24, 10, 1, 2, 0), b"d") == errno.ENOSPC  # full
    m.update(lpm_key(16, 10, 1, 7, 7), b"e")  # replacing in a full trie works
    assert errno_of(m.update, lpm_key(24, 10, 1, 2, 0), b"d", BPF_EXIST) == errno.ENOENT  # before ENOSPC
    assert errno_of(m.delete, lpm_key(24, 10, 1, 2, 0)) == errno.ENOENT
    assert errno_of(m.delete, lpm_key(40, 10, 1, 2, 0)) == errno.EINVAL
    m.delete(lpm_key(16, 10, 1, 99, 99))  # bits past the prefix do not matter
    assert len(m) == 1


def test_lpm_postorder_iteration():
    m = create_map(md("lpm_trie", key_size=8, value_size=1, max_entries=8, flags=BPF_F_NO_PREALLOC))
    # lpm_trie.c's example: 192.168.0.0/16 with /24s below it; more specific first, 0 bits before 1 bits.
    for key in (lpm_key(16, 192, 168, 0, 0), lpm_key(24, 192, 168, 1, 0), lpm_key(24, 192, 168, 0, 0),
                lpm_key(24, 192, 168, 128, 0)):
        m.update(key, b"x")
    assert list(m.keys()) == [lpm_key(24, 192, 168, 0, 0), lpm_key(24, 192, 168, 1, 0),
                              lpm_key(24, 192, 168, 128, 0), lpm_key(16, 192, 168, 0, 0)]
    assert m.next_key(lpm_key(24, 192, 168, 1, 0)) == lpm_key(24, 192, 168, 128, 0)
    assert m.next_key(lpm_key(16, 192, 168, 0, 0)) is None
    assert m.next_key(lpm_key(20, 1, 2, 3, 4)) == lpm_key(24, 192, 168, 0, 0)  # not an entry: the first


def test_lpm_replaced_value_keeps_old_pointer_and_program_errnos():
    m = create_map(md("lpm_trie", key_size=5, value_size=2, max_entries=1, flags=BPF_F_NO_PREALLOC))
    assert m.prog_update(lpm_key(4, 0xA0), b"AA", BPF_ANY, 0) == 0
    p = m.prog_lookup(lpm_key(8, 0xAB), 0)
    assert m.prog_update(lpm_key(4, 0xAF), b"BB", BPF_ANY, 0) == 0
    assert bytes(p) == b"AA" and bytes(m.prog_lookup(lpm_key(8, 0xAB), 0)) == b"BB"
    assert m.prog_update(lpm_key(5, 0xA0), b"CC", BPF_ANY, 0) == -errno.ENOSPC
    assert m.prog_delete(lpm_key(9, 0)) == -errno.EINVAL
    assert m.prog_delete(lpm_key(4, 0xA5)) == 0


def test_lpm_creation():
    m = create_map(md("lpm_trie", key_size=8, value_size=1))  # BPF_F_NO_PREALLOC implied, as KernelMap does
    assert m.flags & BPF_F_NO_PREALLOC
    assert errno_of(create_map, md("lpm_trie", key_size=4, flags=BPF_F_NO_PREALLOC)) == errno.EINVAL
    assert errno_of(create_map, md("lpm_trie", key_size=261, flags=BPF_F_NO_PREALLOC)) == errno.EINVAL
    assert errno_of(create_map, md("lpm_trie", key_size=8, flags=BPF_F_NO_PREALLOC | BPF_F_ZERO_SEED)) == errno.EINVAL


# ---- maps of objects ------------------------------------------------------------------------------------------

def test_prog_array():
    m = create_map(md("prog_array", max_entries=3))
    assert isinstance(m, ProgArrayMap)
    prog = object()
    handle = m.register(prog)
    assert m.register(prog) == handle
    m.update(u32(1), u32(handle))
    assert m.lookup(u32(1)) == u32(handle)
    assert m.prog_at(1) is prog and m.prog_at(0) is None and m.prog_at(7) is None
    assert m.lookup(u32(0)) is None
    assert list(m.keys()) == [u32(0), u32(1), u32(2)]  # every index, as array_map_get_next_key walks
    assert list(m.items()) == [(u32(1), u32(handle))]
    assert errno_of(m.update, u32(0), u32(handle + 1)) == errno.EBADF
    assert errno_of(m.update, u32(0), u32(handle), BPF_NOEXIST) == errno.EINVAL
    assert errno_of(m.update, u32(3), u32(handle)) == errno.E2BIG
    assert errno_of(m.delete, u32(0)) == errno.ENOENT
    assert errno_of(m.delete, u32(3)) == errno.E2BIG
    m.delete(u32(1))
    assert m.prog_at(1) is None
    m.set(2, prog)
    assert m.prog_at(2) is prog
    with pytest.raises(MapError):
        m.prog_lookup(u32(2), 0)
    assert m.dump()["entries"] == [{"key": "02000000", "value": u32(handle).hex(), "target": repr(prog)}]


def test_prog_array_sizes_are_the_kernels():
    m = create_map(md("prog_array", key_size=4, value_size=0, max_entries=2))
    assert (m.key_size, m.value_size) == (4, 4)


def test_array_of_maps():
    inner = md("array", value_size=8, max_entries=2, name="inner")
    outer = create_map(md("array_of_maps", max_entries=2, inner=inner))
    assert isinstance(outer, ArrayOfMapsMap)
    good = create_map(inner)
    outer.set(0, good)
    assert outer.prog_lookup(u32(0), 0) is good
    assert outer.prog_lookup(u32(1), 0) is None and outer.prog_lookup(u32(5), 0) is None
    assert outer.dump()["entries"][0]["target"] == "inner"
    for other in (md("array", value_size=4, max_entries=2), md("array", value_size=8, max_entries=3),
                  md("hash", value_size=8, max_entries=2)):
        assert errno_of(outer.set, 1, create_map(other)) == errno.EINVAL
    loose = create_map(md("array_of_maps", max_entries=1, inner=md("array", value_size=8, flags=BPF_F_INNER_MAP)))
    loose.set(0, create_map(md("array", value_size=8, max_entries=9, flags=BPF_F_INNER_MAP)))
    with pytest.raises(MapError):
        create_map(md("array_of_maps"))  # no inner template


def test_hash_of_maps():
    inner = md("hash", value_size=8, max_entries=10)
    outer = create_map(md("hash_of_maps", key_size=2, value_size=0, max_entries=1, inner=inner))
    assert isinstance(outer, HashOfMapsMap) and outer.value_size == 4
    a, b = create_map(inner), create_map(md("hash", value_size=8, max_entries=99))  # hash: size may differ
    outer.set(b"k1", a)
    assert outer.prog_lookup(b"k1", 0) is a and outer.prog_lookup(b"k2", 0) is None
    handle_b = outer.register(b)
    assert errno_of(outer.update, b"k2", u32(handle_b)) == errno.E2BIG
    assert errno_of(outer.update, b"k2", u32(99), 3) == errno.EBADF  # the fd is resolved before the flags
    outer.update(b"k1", u32(handle_b), BPF_EXIST)
    assert outer.prog_lookup(b"k1", 0) is b and outer.lookup(b"k1") == u32(handle_b)


def test_create_maps_fills_slots():
    inner = md("array", value_size=4, max_entries=1, name="inner")
    defs = [inner, md("array_of_maps", max_entries=2, inner=inner, values={1: "inner"}, name="outer"),
            md("prog_array", max_entries=4, values={3: "handler"}, name="jumps")]
    maps = create_maps(defs, programs={"handler": "PROG"})
    assert maps["outer"].prog_lookup(u32(1), 0) is maps["inner"]
    assert maps["jumps"].prog_at(3) == "PROG"
    assert create_maps(defs)["jumps"].prog_at(3) is None
    with pytest.raises(BpforgeError, match="handler"):
        create_maps(defs, programs={})


# ---- ring buffers -------------------------------------------------------------------------------------------

def ringbuf(size=4096) -> RingBufMap:
    return create_map(md("ringbuf", key_size=0, value_size=0, max_entries=size))


def test_ringbuf_records_in_order():
    rb = ringbuf()
    a = rb.reserve(5, 0)
    b = rb.reserve(3, 0)
    a[:] = b"hello"
    b[:] = b"bye"
    assert rb.owns(a) and not rb.owns(bytearray(5))
    rb.submit(b)
    assert rb.records() == []  # the consumer stops at the first record still reserved
    rb.submit(a)
    assert rb.records() == [b"hello", b"bye"]
    c = rb.reserve(1, 0)
    rb.discard(c)
    assert rb.output(b"xyz", 0) == 0
    assert rb.records() == [b"hello", b"bye", b"xyz"]
    assert rb.query(1) == 4096 and rb.query(0) == rb.query(3) == 16 + 16 + 16 + 16  # each 8-byte header + data, 8-aligned
    assert rb.consume() == [b"hello", b"bye", b"xyz"] and rb.records() == [] and rb.query(0) == 0
    with pytest.raises(MapError):
        rb.submit(a)  # already committed


def test_ringbuf_capacity():
    rb = ringbuf(4096)
    # Each 8-byte record takes 16 bytes; the producer may be at most 4095 bytes ahead of the consumer.
    assert all(rb.output(bytes(8), 0) == 0 for _ in range(255))
    assert rb.output(bytes(8), 0) == -errno.EAGAIN
    assert rb.reserve(8, 0) is None
    rb.consume()
    assert rb.reserve(4096 - 16, 0) is not None  # 4088 bytes: 4096 with its header would be too much
    rb2 = ringbuf(4096)
    assert rb2.reserve(4096 - 8, 0) is None
    assert rb2.reserve(4096 - 16, 0) is not None


def test_ringbuf_reserved_record_blocks_space_even_after_consuming():
    rb = ringbuf(4096)
    held = rb.reserve(8, 0)  # never submitted during this test
    for _ in range(200):
        assert rb.output(bytes(8), 0) == 0
    rb.consume()  # nothing to consume: the first record is still reserved
    assert rb.query(2) == 0
    while rb.output(bytes(8), 0) == 0:
        pass
    assert rb.query(3) == 255 * 16
    rb.submit(held)
    assert len(rb.consume()) == 255 and rb.output(bytes(8), 0) == 0


def test_ringbuf_flags_and_syscall_side():
    rb = ringbuf()
    assert rb.reserve(8, 1) is None
    assert rb.output(b"x", 4) == -errno.EINVAL
    assert rb.output(b"x", 3) == 0  # wakeup flags are accepted
    assert errno_of(rb.lookup, b"") == ENOTSUPP
    assert errno_of(rb.update, b"", b"") == ENOTSUPP
    assert errno_of(rb.delete, b"") == ENOTSUPP
    assert errno_of(rb.keys) == ENOTSUPP
    assert rb.dump()["records"] == ["78"]


@pytest.mark.parametrize("size", [0, 4095, 3 * 4096, 8])
def test_ringbuf_size_must_be_pages_power_of_2(size):
    assert errno_of(create_map, md("ringbuf", key_size=0, value_size=0, max_entries=size)) == errno.EINVAL


# ---- global data, permissions, unsupported types -------------------------------------------------------------

def test_data_maps_are_preloaded_and_rodata_frozen():
    data = create_map(md("array", value_size=4, max_entries=1, flags=0x400, initial=b"\1\2\3\4", name=".data"))
    assert data.lookup(u32(0)) == b"\1\2\3\4" and not data.frozen and not data.readonly_prog
    ro = create_map(md("array", value_size=2, max_entries=1, flags=0x400 | BPF_F_RDONLY_PROG, initial=b"hi",
                       name=".rodata"))
    assert ro.frozen and ro.readonly_prog
    assert errno_of(ro.update, u32(0), b"no") == errno.EPERM
    assert errno_of(ro.freeze) == errno.EPERM  # frozen: no write permission left to freeze with
    assert bytes(ro.prog_lookup(u32(0), 0)) == b"hi"
    ro.load_entries([{"key": "00000000", "value": "6f6b"}])  # preloading is setup, not a syscall write
    assert ro.lookup(u32(0)) == b"ok"
    with pytest.raises(MapError):
        create_map(md("array", value_size=4, max_entries=1, initial=b"\1\2"))


def test_syscall_access_flags():
    ro = create_map(md("hash", flags=BPF_F_RDONLY))
    assert errno_of(ro.update, u32(1), b"aaaa") == errno.EPERM
    assert errno_of(ro.delete, u32(1)) == errno.EPERM
    assert ro.lookup(u32(1)) is None
    assert ro.prog_update(u32(1), b"aaaa", BPF_ANY, 0) == 0  # programs are not limited by BPF_F_RDONLY
    wo = create_map(md("hash", flags=BPF_F_WRONLY))
    wo.update(u32(1), b"aaaa")
    assert errno_of(wo.lookup, u32(1)) == errno.EPERM
    assert errno_of(wo.keys) == errno.EPERM
    m = create_map(md("hash"))
    m.freeze()
    assert errno_of(m.update, u32(1), b"aaaa") == errno.EPERM
    assert errno_of(m.delete, u32(1)) == errno.EPERM


@pytest.mark.parametrize("type_name", ["sockmap", "sockhash", "stack_trace", "cgroup_array", "user_ringbuf"])
def test_unsupported_types_are_named(type_name):
    with pytest.raises(BpforgeError, match=type_name):
        create_map(md(type_name))


# ---- dump and preload ---------------------------------------------------------------------------------------

def test_dump_and_load_round_trip(tmp_path):
    m = create_map(md("hash", key_size=2, value_size=3, max_entries=4, name="flows"))
    m.update(b"ab", b"xyz")
    m.update(b"cd", b"uvw")
    dump = m.dump()
    assert dump["name"] == "flows" and dump["type"] == "hash" and json.loads(json.dumps(dump)) == dump
    path = tmp_path / "flows.json"
    path.write_text(json.dumps(dump))
    copy = create_map(md("hash", key_size=2, value_size=3, max_entries=4))
    copy.load_entries(read_entries(str(path)))
    assert dict(copy.items()) == dict(m.items())
    path.write_text(json.dumps(dump["entries"]))
    assert read_entries(str(path)) == dump["entries"]


def test_load_percpu_entries():
    m = create_map(md("percpu_hash", value_size=4, max_entries=4), num_cpus=2)
    m.load_entries([{"key": "01000000", "values": ["aabbccdd", "11223344"]},
                    {"key": "02000000", "value": "00" * 16}])
    assert m.cpu_values(m.lookup(u32(1))) == [bytes.fromhex("aabbccdd"), bytes.fromhex("11223344")]
    with pytest.raises(BpforgeError, match="entry 0"):
        m.load_entries([{"key": "03000000", "values": ["aabbccdd"]}])


@pytest.mark.parametrize("entries,match", [
    ([{"key": "zz", "value": "00"}], "not hex"), ([{"value": "00"}], "key"),
    ([{"key": "0100", "value": "00000000"}], "key must be 4 bytes"), ([{"key": "01000000"}], "value"),
])
def test_load_entry_errors(entries, match):
    m = create_map(md("hash"))
    with pytest.raises(BpforgeError, match=match):
        m.load_entries(entries)


def test_load_entry_errno_is_kept():
    m = create_map(md("hash", max_entries=1))
    with pytest.raises(MapError, match="entry 1") as info:
        m.load_entries([{"key": "01000000", "value": "00000000"}, {"key": "02000000", "value": "00000000"}])
    assert info.value.errno == errno.E2BIG


def test_read_entries_errors(tmp_path):
    with pytest.raises(BpforgeError, match="cannot read"):
        read_entries(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(BpforgeError) as info:
        read_entries(str(bad))
    assert info.value.where.file == str(bad) and info.value.where.line == 1
    bad.write_text('{"key": "00"}')
    with pytest.raises(BpforgeError, match="JSON list"):
        read_entries(str(bad))
