"""queue, stack and bloom_filter against the kernel: creation checks, push/peek/pop through bpf() in random
sequences, the program side (bpf_map_push_elem / pop_elem / peek_elem, BPF_EXIST overwriting the oldest),
and bloom filter membership, false positives included, for BPF_F_ZERO_SEED filters."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vmdiff import outcome, md, run_asm, same

from bpforge.vm.maps import create_map

kernel_maps = pytest.importorskip("bpforge.kernel.maps")
KernelMap = kernel_maps.KernelMap
BPF_F_ZERO_SEED = 0x40



CREATIONS = [
    md("queue", 0, 4, 4), md("queue", 4, 4, 4), md("queue", 0, 0, 4), md("queue", 0, 4, 0), md("queue", 0, 4, 4, 1),
    md("queue", 0, 0x400000, 1), md("queue", 0, 0x400001, 1), md("stack", 0, 8, 2, 0x80), md("stack", 0, 8, 2, 0x8),
    md("bloom_filter", 0, 4, 4), md("bloom_filter", 4, 4, 4), md("bloom_filter", 0, 0, 4), md("bloom_filter", 0, 4, 0),
    md("bloom_filter", 0, 4, 4, BPF_F_ZERO_SEED), md("bloom_filter", 0, 4, 4, 1),
    md("bloom_filter", 0, 4, 4, map_extra=15), md("bloom_filter", 0, 4, 4, map_extra=16),
    md("bloom_filter", 0, 0x400001, 4),
]


@pytest.mark.parametrize("mapdef", CREATIONS, ids=lambda d: f"{d.type_name}-k{d.key_size}-v{d.value_size}-"
                                                         f"n{d.max_entries}-f{d.flags:#x}-x{d.map_extra}")
def test_creation_matches_kernel(mapdef, kernel):
    mine, theirs = outcome(create_map, mapdef), outcome(KernelMap.create, mapdef)
    assert mine[0] == theirs[0] and (mine[0] == "ok" or mine == theirs)
    if theirs[0] == "ok":
        theirs[1].close()


VALUE = st.integers(0, 7).map(lambda n: struct.pack("<I", n))
OPS = st.lists(st.one_of(st.tuples(st.just("push"), VALUE, st.sampled_from([0, 0, 2, 1, 3, 4])),
                         st.tuples(st.just("pop")), st.tuples(st.just("peek")), st.tuples(st.just("delete"), st.just(b"")),
                         st.tuples(st.just("keys"))), min_size=1, max_size=25)


@pytest.mark.parametrize("type_name", ["queue", "stack"])
def test_syscall_sequences_match_kernel(type_name, kernel):
    @settings(max_examples=30, deadline=None)
    @given(st.sampled_from([1, 2, 3]), OPS)
    def check(max_entries, ops):
        mapdef = md(type_name, 0, 4, max_entries)
        vm = create_map(mapdef)
        with KernelMap.create(mapdef) as kmap:
            for step, (op, *args) in enumerate(ops):
                assert outcome(getattr(vm, op), *args) == outcome(getattr(kmap, op), *args), (step, op, args)

    check()


def test_bloom_filter_membership_matches_kernel(kernel):
    for hashes in (0, 1, 3):
        mapdef = md("bloom_filter", 0, 4, 16, BPF_F_ZERO_SEED, map_extra=hashes)
        vm = create_map(mapdef)
        with KernelMap.create(mapdef) as kmap:
            for n in range(0, 40, 3):
                value = struct.pack("<I", n * 2654435761 & 0xFFFFFFFF)
                vm.push(value)
                kmap.push(value)
            for n in range(300):  # members and many non-members: the false positives must be the kernel's
                value = struct.pack("<I", n * 2654435761 & 0xFFFFFFFF)
                assert vm.contains(value) == kmap.contains(value), (hashes, n)
            for op, *args in [("push", b"\0" * 4, 1), ("lookup", b""), ("pop",), ("delete", b""), ("keys",)]:
                assert outcome(getattr(vm, op), *args) == outcome(getattr(kmap, op), *args), op


def program(*ops: tuple) -> str:
    """Pushes (value, flags), pops and peeks from a program, each result folded into r0 (4 bits), the
    popped or peeked values summed into r8: r0 = r8 << 32 | results."""
    text = "r9 = 0\nr8 = 0\n"
    for op in ops:
        if op[0] == "push":
            text += f"*(u32 *)(r10 - 4) = {op[1]}\nr1 = map_fd(0) ll\nr2 = r10\nr2 += -4\nr3 = {op[2]}\ncall 87\n"
        else:
            text += f"*(u32 *)(r10 - 4) = 99\nr1 = map_fd(0) ll\nr2 = r10\nr2 += -4\ncall {88 if op[0] == 'pop' else 89}\n"
            text += "r1 = *(u32 *)(r10 - 4)\nr8 += r1\n"
        text += "r0 &= 0xf\nr9 <<= 4\nr9 |= r0\n"
    return text + "r8 <<= 32\nr0 = r9\nr0 |= r8\nexit\n"


PROGRAMS = [
    [("push", 1, 0), ("push", 2, 0), ("push", 3, 0), ("peek",), ("pop",), ("pop",), ("pop",)],
    [("push", 1, 0), ("push", 2, 0), ("push", 3, 2), ("push", 4, 1), ("push", 5, 4), ("pop",), ("peek",)],
    [("pop",), ("peek",), ("push", 7, 2), ("push", 8, 2), ("push", 9, 2), ("pop",)],
]


@pytest.mark.parametrize("type_name", ["queue", "stack"])
@pytest.mark.parametrize("ops", PROGRAMS)
def test_program_side_matches_kernel(type_name, ops, kernel):
    same(run_asm(program(*ops), "xdp", bytes(64), maps=[md(type_name, 0, 4, 2)]))


def test_bloom_filter_from_a_program_matches_kernel(kernel):
    text = "r9 = 0\n"
    for op, value in [("add", 5), ("add", 6), ("check", 5), ("check", 7), ("check", 6), ("check", 0)]:
        text += f"*(u32 *)(r10 - 4) = {value}\nr1 = map_fd(0) ll\nr2 = r10\nr2 += -4\n"
        text += ("r3 = 0\ncall 87\n" if op == "add" else "call 89\n") + "r0 &= 0xf\nr9 <<= 4\nr9 |= r0\n"
    same(run_asm(text + "r0 = r9\nexit\n", "xdp", bytes(64), maps=[md("bloom_filter", 0, 4, 8, BPF_F_ZERO_SEED)]))
