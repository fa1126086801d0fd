"""cpumap, devmap, devmap_hash and xskmap against the kernel: creation checks, the syscall side (what an
update needs to exist, what a lookup gives back, iteration order) and bpf_redirect_map's verdict in an
XDP test run for each map, key and flag combination."""

from __future__ import annotations

import errno
import struct

import pytest
from vmdiff import outcome, md, run_asm, same

from bpforge.vm.maps import create_map
from bpforge.vm.maps.redirect import config_nr_cpus

kernel_maps = pytest.importorskip("bpforge.kernel.maps")
KernelMap = kernel_maps.KernelMap



def k(n: int) -> bytes:
    return struct.pack("<I", n)


CREATIONS = [
    md("cpumap", value_size=4), md("cpumap", value_size=8), md("cpumap", value_size=12), md("cpumap", key_size=8),
    md("cpumap", max_entries=0), md("cpumap", max_entries=config_nr_cpus()),
    md("cpumap", max_entries=config_nr_cpus() + 1), md("cpumap", flags=0x8), md("cpumap", flags=0x80),
    md("devmap"), md("devmap", value_size=8), md("devmap", value_size=12), md("devmap", flags=0x8),
    md("devmap", flags=0x80), md("devmap", flags=0x100), md("devmap", max_entries=0), md("devmap_hash"),
    md("devmap_hash", max_entries=0x80000001), md("devmap_hash", key_size=2), md("xskmap"), md("xskmap", value_size=8),
    md("xskmap", flags=0x80), md("xskmap", flags=0x10),
]


@pytest.mark.parametrize("mapdef", CREATIONS, ids=lambda d: f"{d.type_name}-k{d.key_size}-v{d.value_size}-"
                                                         f"n{d.max_entries}-f{d.flags:#x}")
def test_creation_matches_kernel(mapdef, kernel):
    mine = outcome(lambda: create_map(mapdef, num_cpus=kernel_maps.possible_cpus()))
    theirs = outcome(KernelMap.create, mapdef)
    assert mine[0] == theirs[0]
    if theirs[0] == "errno":
        assert mine == theirs
    else:
        theirs[1].close()
        assert mine[1].flags == theirs[1].flags or mapdef.type_name.startswith("devmap")


def cpu_val(qsize: int, fd: int = 0) -> bytes:
    return struct.pack("<Ii", qsize, fd)


def dev_val(ifindex: int, fd: int = 0, size: int = 8) -> bytes:
    return struct.pack("<Ii", ifindex, fd)[:size]


SEQUENCES = {
    "cpumap": (md("cpumap", value_size=8, max_entries=4), [
        ("update", k(0), cpu_val(0)), ("lookup", k(0)), ("update", k(0), cpu_val(16)), ("lookup", k(0)),
        ("update", k(1), cpu_val(16385)), ("update", k(3), cpu_val(16)), ("update", k(4), cpu_val(16)),
        ("update", k(1), cpu_val(16), 1), ("update", k(1), cpu_val(16), 2), ("update", k(1), cpu_val(16), 3),
        ("update", k(1), cpu_val(16, 1000)), ("update", k(1), cpu_val(16, -5)), ("update", k(3), cpu_val(0)),
        ("update", k(3), cpu_val(16385)), ("update", k(9), cpu_val(0), 1), ("delete", k(0)), ("delete", k(0)),
        ("delete", k(4)), ("lookup", k(5)), ("keys",), ("next_key", k(3)), ("next_key", k(7)), ("lookup", k(1)),
        ("update", k(1), cpu_val(0)), ("lookup", k(1))]),
    "cpumap4": (md("cpumap", value_size=4, max_entries=2), [
        ("update", k(1), k(64)), ("lookup", k(1)), ("update", k(0), k(16384)), ("lookup", k(0)), ("keys",)]),
    "devmap": (md("devmap", value_size=8, max_entries=4), [
        ("update", k(0), dev_val(1)), ("lookup", k(0)), ("update", k(1), dev_val(0)), ("update", k(1), dev_val(0, 3)),
        ("update", k(1), dev_val(0x7FFFFFFF)), ("update", k(1), dev_val(1, 999)), ("update", k(1), dev_val(1, -1)),
        ("update", k(4), dev_val(1)), ("update", k(1), dev_val(1), 1), ("update", k(1), dev_val(1), 2),
        ("update", k(1), dev_val(1), 4), ("lookup", k(1)), ("lookup", k(2)), ("delete", k(2)), ("delete", k(9)),
        ("keys",), ("next_key", k(9)), ("update", k(0), dev_val(0)), ("lookup", k(0))]),
    "devmap4": (md("devmap", value_size=4, max_entries=2), [
        ("update", k(1), dev_val(1, size=4)), ("lookup", k(1)), ("update", k(1), dev_val(0, size=4)), ("lookup", k(1))]),
    "devmap_hash": (md("devmap_hash", value_size=4, max_entries=3), [
        ("update", k(7), dev_val(1, size=4)), ("lookup", k(7)), ("update", k(9), dev_val(0, size=4)),
        ("update", k(9), dev_val(1, size=4), 2), ("update", k(3), dev_val(1, size=4)), ("keys",),
        ("update", k(11), dev_val(1, size=4)), ("update", k(11), dev_val(0x7FFFFFFF, size=4)),
        ("update", k(7), dev_val(1, size=4), 1), ("update", k(7), dev_val(1, size=4), 2), ("delete", k(11)),
        ("delete", k(9)), ("keys",), ("next_key", k(100)), ("next_key", k(3)), ("update", k(9), dev_val(1, size=4), 3),
        ("update", k(15), dev_val(1, size=4)), ("update", k(19), dev_val(1, size=4)), ("keys",)]),
    "xskmap": (md("xskmap", max_entries=4), [
        ("update", k(0), k(0x7FFFFFF0)), ("update", k(5), k(0x7FFFFFF0)), ("update", k(0), k(0x7FFFFFF0), 3),
        ("lookup", k(0)), ("lookup", k(9)), ("delete", k(0)), ("delete", k(9)), ("keys",)]),
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_syscall_side_matches_kernel(name, kernel):
    mapdef, ops = SEQUENCES[name]
    vm = create_map(mapdef, num_cpus=kernel_maps.possible_cpus())
    with KernelMap.create(mapdef) as kmap:
        for step, (op, *args) in enumerate(ops):
            assert outcome(getattr(vm, op), *args) == outcome(getattr(kmap, op), *args), (step, op, args)


def redirect_program(key: int, flags: int) -> str:
    return f"r1 = map_fd(0) ll\nr2 = {key:#x} ll\nr3 = {flags:#x} ll\ncall 51\nexit"


MAPS = {
    "cpumap": (md("cpumap", value_size=4, max_entries=4), [(1, k(32))]),
    "devmap": (md("devmap", value_size=8, max_entries=4), [(2, dev_val(1))]),
    "devmap_hash": (md("devmap_hash", value_size=4, max_entries=4), [(0x1234, dev_val(1, size=4))]),
    "xskmap": (md("xskmap", max_entries=4), []),
}
KEYS = [0, 1, 2, 3, 4, 0x1234, (1 << 32) | 1, (1 << 32) | 2, (1 << 32) | 0x1234]
FLAGS = [0, 1, 2, 3, 4, 8, 16, 8 | 16, 8 | 2, 16 | 1, 32]


@pytest.mark.parametrize("name", list(MAPS))
def test_redirect_map_verdicts_match_kernel(name, kernel):
    mapdef, entries = MAPS[name]
    setup = [(0, k(key), value) for key, value in entries]
    for key in KEYS:
        for flags in FLAGS:
            same(run_asm(redirect_program(key, flags), "xdp", bytes(64), maps=[mapdef], setup=setup))


def test_devmap_lookup_from_a_program_reads_the_entry(kernel):
    text = """
    *(u32 *)(r10 - 4) = 2
    r1 = map_fd(0) ll
    r2 = r10
    r2 += -4
    call 1
    if r0 == 0 goto miss
    r1 = *(u32 *)(r0 + 0)
    r0 = *(u32 *)(r0 + 4)
    r0 <<= 16
    r0 |= r1
    exit
    miss:
    r0 = 0xdead
    exit
    """
    mapdef, entries = MAPS["devmap"]
    same(run_asm(text, "xdp", bytes(64), maps=[mapdef], setup=[(0, k(key), v) for key, v in entries]))
    same(run_asm(text, "xdp", bytes(64), maps=[mapdef]))


def test_devmap_refuses_an_interface_that_does_not_exist():
    devmap = create_map(md("devmap"), num_cpus=1)
    assert outcome(devmap.update, k(0), k(0x7FFFFFFF)) == ("errno", errno.EINVAL)
    assert outcome(devmap.update, k(0), k(1)) == ("ok", None)  # loopback
    assert devmap.lookup(k(0)) == k(1)
