"""Kernel maps created from MapDefs: every supported type, update flags and their errnos, full maps, array
semantics, iteration, per-CPU value layout, freezing. Skips where bpf() cannot be used."""

from __future__ import annotations

import errno
import struct

import pytest
from test_kernel_packets import no_leaked_fds  # noqa: F401  (an autouse fixture)

from bpforge.isa.maptypes import MapSpec
from bpforge.errors import BpforgeError
from bpforge.isa.maptypes import BPF_ANY, BPF_EXIST, BPF_NOEXIST, MAP_TYPE_IDS, MapError

u32 = struct.Struct("<I").pack
u64 = struct.Struct("<Q").pack


def mapdef(type_name: str, key: int = 4, value: int = 8, entries: int = 4, flags: int = 0, **kw) -> MapSpec:
    return MapSpec(f"t_{type_name}", MAP_TYPE_IDS[type_name], key, value, entries, flags, **kw)


@pytest.fixture
def make(kernel):
    """Create maps that are all closed after the test."""
    made = []

    def create(*args, **kw):
        kmap = kernel.KernelMap.create(mapdef(*args, **kw))
        made.append(kmap)
        return kmap

    yield create
    for kmap in made:
        kmap.close()


@pytest.mark.parametrize("type_name", ["array", "percpu_array", "hash", "percpu_hash", "lru_hash",
                                       "lru_percpu_hash", "lpm_trie", "prog_array", "ringbuf"])
def test_every_type_is_created_as_declared(kernel, type_name):
    key, value, entries = {"lpm_trie": (8, 4, 16), "ringbuf": (0, 0, 4096), "prog_array": (4, 4, 4)}.get(
        type_name, (4, 8, 4))
    if not kernel.map_type_supported(type_name):
        pytest.skip(f"this kernel has no {type_name} maps")
    with kernel.KernelMap.create(mapdef(type_name, key, value, entries)) as kmap:
        assert kmap.fd >= 0
        assert (kmap.type_name, kmap.key_size, kmap.value_size, kmap.max_entries) == (type_name, key, value, entries)
        assert kmap.name == f"t_{type_name}"
    assert kmap.closed


def test_kernel_dictated_sizes_and_flags(kernel):
    # A ringbuf has no key/value, a prog array holds 4-byte fds, an LPM trie needs BPF_F_NO_PREALLOC.
    with kernel.KernelMap.create(mapdef("ringbuf", 4, 8, 4096)) as rb:
        assert (rb.key_size, rb.value_size) == (0, 0)
    with kernel.KernelMap.create(mapdef("prog_array", 4, 8, 2)) as pa:
        assert pa.value_size == 4
    with kernel.KernelMap.create(mapdef("lpm_trie", 8, 4, 16, flags=0)) as trie:
        assert trie.flags & 1


def test_create_refused_is_a_map_error(kernel):
    with pytest.raises(MapError) as info:
        kernel.KernelMap.create(mapdef("ringbuf", 0, 0, 1000))  # not a power-of-two number of pages
    assert info.value.errno == errno.EINVAL
    assert "t_ringbuf" in str(info.value)
    with pytest.raises(MapError) as info:
        kernel.KernelMap.create(mapdef("hash", 0, 8, 4))  # a hash map needs a key
    assert info.value.errno == errno.EINVAL


def test_hash_update_flags_and_errnos(make):
    h = make("hash", 4, 8, 2)
    h.update(b"aaaa", u64(1))
    h.update(b"aaaa", u64(2), BPF_ANY)
    assert h.lookup(b"aaaa") == u64(2)
    with pytest.raises(MapError) as info:
        h.update(b"aaaa", u64(3), BPF_NOEXIST)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(MapError) as info:
        h.update(b"bbbb", u64(3), BPF_EXIST)
    assert info.value.errno == errno.ENOENT
    h.update(b"aaaa", u64(4), BPF_EXIST)
    h.update(b"bbbb", u64(5), BPF_NOEXIST)
    assert h.lookup(b"aaaa") == u64(4) and h.lookup(b"bbbb") == u64(5)
    assert h.lookup(b"cccc") is None
    with pytest.raises(MapError) as info:  # full
        h.update(b"cccc", u64(6))
    assert info.value.errno == errno.E2BIG
    h.update(b"aaaa", u64(7))  # replacing in a full map is fine
    h.delete(b"aaaa")
    with pytest.raises(MapError) as info:
        h.delete(b"aaaa")
    assert info.value.errno == errno.ENOENT
    h.update(b"cccc", u64(8))  # room again
    assert dict(h.items()) == {b"bbbb": u64(5), b"cccc": u64(8)}


def test_array_semantics(make):
    a = make("array", 4, 8, 3)
    assert list(a.keys()) == [u32(0), u32(1), u32(2)]  # every element exists, zeroed
    assert dict(a.items()) == {u32(i): bytes(8) for i in range(3)}
    a.update(u32(1), u64(42))
    a.update(u32(1), u64(43), BPF_EXIST)
    assert a.lookup(u32(1)) == u64(43)
    with pytest.raises(MapError) as info:
        a.update(u32(1), u64(1), BPF_NOEXIST)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(MapError) as info:
        a.update(u32(3), u64(1))  # index out of range
    assert info.value.errno == errno.E2BIG
    assert a.lookup(u32(3)) is None
    with pytest.raises(MapError) as info:
        a.delete(u32(1))  # array elements cannot be deleted
    assert info.value.errno == errno.EINVAL


def test_percpu_values_are_one_rounded_slot_per_possible_cpu(kernel, make):
    ncpus = kernel.possible_cpus()
    pa = make("percpu_array", 4, 12, 2)
    assert pa.ncpus == ncpus and pa.syscall_value_size == ncpus * 16
    value = b"".join(struct.pack("<IQ", cpu, 100 + cpu) + bytes(4) for cpu in range(ncpus))
    pa.update(u32(1), value)
    got = pa.lookup(u32(1))
    assert got == value
    assert pa.cpu_values(got) == [struct.pack("<IQ", cpu, 100 + cpu) for cpu in range(ncpus)]
    with pytest.raises(MapError) as info:  # one CPU's worth is not a per-CPU value
        pa.update(u32(0), bytes(12))
    assert info.value.errno == errno.EINVAL and f"{ncpus} CPUs" in str(info.value)
    for type_name in ("percpu_hash", "lru_percpu_hash"):
        m = make(type_name, 4, 8, 8)
        m.update(b"kkkk", bytes(range(8)) * ncpus)
        assert m.lookup(b"kkkk") == bytes(range(8)) * ncpus
        assert list(m.keys()) == [b"kkkk"]


def test_lru_hash_evicts_instead_of_refusing(make):
    lru = make("lru_hash", 4, 8, 64)
    for i in range(200):
        lru.update(u32(i), u64(i))
    keys = list(lru.keys())
    assert 0 < len(keys) <= 64
    assert lru.lookup(u32(199)) == u64(199)  # the newest survives


def test_lpm_trie_longest_prefix_match(make):
    trie = make("lpm_trie", 8, 4, 16)

    def key(prefix: int, ip: str) -> bytes:
        return struct.pack("<I", prefix) + bytes(int(p) for p in ip.split("."))

    trie.update(key(8, "10.0.0.0"), u32(8))
    trie.update(key(16, "10.1.0.0"), u32(16))
    assert trie.lookup(key(32, "10.1.2.3")) == u32(16)
    assert trie.lookup(key(32, "10.2.2.3")) == u32(8)
    assert trie.lookup(key(32, "11.0.0.1")) is None
    assert sorted(trie.keys()) == sorted([key(8, "10.0.0.0"), key(16, "10.1.0.0")])
    trie.delete(key(16, "10.1.0.0"))
    assert trie.lookup(key(32, "10.1.2.3")) == u32(8)


def test_prog_array_holds_programs(kernel, make):
    pa = make("prog_array", 4, 4, 2)
    with kernel.load_insns(_return(2), "xdp") as prog:
        pa.update(u32(0), u32(prog.fd))
        prog_id = pa.lookup(u32(0))  # user space reads back the program's id, not the fd
        assert prog_id is not None and struct.unpack("<I", prog_id)[0] > 0
        assert pa.lookup(u32(1)) is None
        assert [k for k, _ in pa.items()] == [u32(0)]
        pa.delete(u32(0))
    with pytest.raises(MapError) as info:
        pa.update(u32(1), u32(0xFFFF))  # not a program fd
    assert info.value.errno == errno.EBADF


def test_ringbuf_has_no_elements(make):
    rb = make("ringbuf", 0, 0, 4096)
    with pytest.raises(MapError) as info:
        rb.lookup(b"")
    assert info.value.errno == 524  # ENOTSUPP, as the kernel reports it
    with pytest.raises(MapError):
        list(rb.keys())


def test_iteration_visits_every_key_once(make):
    h = make("hash", 4, 8, 128)
    expected = {u32(i * 7): u64(i) for i in range(100)}
    for k, v in expected.items():
        h.update(k, v)
    keys = list(h.keys())
    assert len(keys) == len(set(keys)) == 100
    assert dict(h.items()) == expected


def test_next_key_steps_from_any_key(make):
    h = make("hash", 4, 8, 8)
    assert h.next_key(None) is None
    for i in range(3):
        h.update(u32(i), u64(i))
    first = h.next_key(None)
    second = h.next_key(first)
    third = h.next_key(second)
    assert {first, second, third} == {u32(0), u32(1), u32(2)} and h.next_key(third) is None
    assert h.next_key(u32(99)) == first  # a missing key restarts the walk (hash maps)
    a = make("array", 4, 8, 2)
    assert (a.next_key(None), a.next_key(u32(0)), a.next_key(u32(1))) == (u32(0), u32(1), None)


def test_freeze_stops_user_space_writes(make):
    a = make("array", 4, 8, 1)
    a.update(u32(0), u64(5))
    a.freeze()
    assert a.frozen
    with pytest.raises(MapError) as info:
        a.update(u32(0), u64(6))
    assert info.value.errno == errno.EPERM
    assert a.lookup(u32(0)) == u64(5)


def test_initial_contents_and_rodata_freeze(kernel):
    rodata = mapdef("array", 4, 8, 1, flags=0x480, source="data", section=".rodata", initial=b"knobs\0\0\0")
    with kernel.KernelMap.create(rodata) as ro:
        assert ro.lookup(u32(0)) == b"knobs\0\0\0"
        assert ro.frozen
        with pytest.raises(MapError):
            ro.update(u32(0), bytes(8))
    data = mapdef("array", 4, 8, 1, flags=0x400, source="data", section=".data", initial=b"mutable!")
    with kernel.KernelMap.create(data) as rw:
        assert rw.lookup(u32(0)) == b"mutable!" and not rw.frozen
        rw.update(u32(0), bytes(8))


def test_wrong_sizes_are_refused_before_the_kernel_reads_past_them(make):
    h = make("hash", 4, 8, 4)
    for call in (lambda: h.lookup(b"abc"), lambda: h.update(b"abcde", bytes(8)), lambda: h.update(b"abcd", b"x"),
                 lambda: h.delete(b"")):
        with pytest.raises(MapError) as info:
            call()
        assert info.value.errno == errno.EINVAL


def test_closed_map(kernel):
    kmap = kernel.KernelMap.create(mapdef("hash"))
    kmap.close()
    kmap.close()  # twice is fine
    with pytest.raises(BpforgeError, match="closed"):
        kmap.lookup(bytes(4))


def test_k2_map_specs_create_too(kernel):
    from bpforge.formats.k2 import parse_k2_maps

    (spec,) = parse_k2_maps("counts { type = 2, key_size = 4, value_size = 8, max_entries = 16, fd = 0 }\n")
    with kernel.KernelMap.create(spec) as kmap:
        assert (kmap.type_name, kmap.max_entries, kmap.name) == ("array", 16, "counts")


def test_max_entries_override(kernel):
    with kernel.KernelMap.create(mapdef("lru_hash", 40, 16, 262144), max_entries=128) as kmap:
        assert kmap.max_entries == 128


def _return(value: int):
    from bpforge.isa import Insn

    return [Insn.make("mov64_imm", dst=0, imm=value), Insn.make("exit")]
