"""Local storage maps against the kernel: cgroup_storage and percpu_cgroup_storage (the storage test_run
allocates for the program, shared by the `repeat` runs of one test run, invisible through bpf()) and
sk_storage (on the dummy socket of a test run's skb: get with and without create, delete), creation checks
and the syscall side."""

from __future__ import annotations

import pytest
from vmdiff import outcome, md, run_asm, same

from bpforge.vm.maps import create_map

kernel_maps = pytest.importorskip("bpforge.kernel.maps")
KernelMap = kernel_maps.KernelMap
FRAME = bytes.fromhex("020000000002020000000001") + b"\x08\x00" + bytes.fromhex(
    "4500001c0001000040110000" "0a0000010a000002") + bytes(8)



CREATIONS = [
    md("cgroup_storage", 16, 8, 0), md("cgroup_storage", 8, 8, 0), md("cgroup_storage", 12, 8, 0),
    md("cgroup_storage", 16, 0, 0), md("cgroup_storage", 16, 8, 1), md("cgroup_storage", 16, 65407, 0),
    md("cgroup_storage", 16, 65408, 0), md("cgroup_storage", 16, 8, 0, 0x1), md("cgroup_storage", 16, 8, 0, 0x80),
    md("percpu_cgroup_storage", 16, 32768, 0), md("percpu_cgroup_storage", 16, 32769, 0),
    md("sk_storage", 4, 8, 0, 1), md("sk_storage", 4, 8, 0, 0), md("sk_storage", 8, 8, 0, 1),
    md("sk_storage", 4, 8, 1, 1), md("sk_storage", 4, 0, 0, 1), md("sk_storage", 4, 65407, 0, 1),
    md("sk_storage", 4, 65408, 0, 1), md("sk_storage", 4, 8, 0, 1 | 0x200), md("sk_storage", 4, 8, 0, 1 | 0x8),
]


@pytest.mark.parametrize("mapdef", CREATIONS, ids=lambda d: f"{d.type_name}-k{d.key_size}-v{d.value_size}-"
                                                         f"n{d.max_entries}-f{d.flags:#x}")
def test_creation_matches_kernel(mapdef, kernel):
    mine = outcome(lambda: create_map(mapdef, num_cpus=kernel_maps.possible_cpus()))
    theirs = outcome(KernelMap.create, mapdef)
    assert mine[0] == theirs[0] and (mine[0] == "ok" or mine == theirs)
    if theirs[0] == "ok":
        theirs[1].close()


@pytest.mark.parametrize("mapdef,ops", [
    (md("cgroup_storage", 16, 8, 0), [("lookup", bytes(16)), ("update", bytes(16), bytes(8)),
                                      ("update", bytes(16), bytes(8), 1), ("update", bytes(16), bytes(8), 2),
                                      ("update", bytes(16), bytes(8), 4), ("delete", bytes(16)), ("keys",)]),
    (md("sk_storage", 4, 8, 0, 1), [("lookup", b"\xf0\xff\xff\x7f"), ("update", b"\xf0\xff\xff\x7f", bytes(8)),
                                    ("delete", b"\xf0\xff\xff\x7f"), ("keys",), ("next_key", None)]),
], ids=["cgroup_storage", "sk_storage"])
def test_syscall_side_matches_kernel(mapdef, ops, kernel):
    vm = create_map(mapdef, num_cpus=kernel_maps.possible_cpus())
    with KernelMap.create(mapdef) as kmap:
        for op, *args in ops:
            assert outcome(getattr(vm, op), *args) == outcome(getattr(kmap, op), *args), op


COUNT_IN_LOCAL_STORAGE = """
    r6 = r1
    r1 = map_fd(0) ll
    r2 = 0
    call 81
    r1 = *(u64 *)(r0 + 0)
    r1 += 1
    *(u64 *)(r0 + 0) = r1
    *(u32 *)(r6 + 8) = r1
    r0 = 1
    exit
"""


@pytest.mark.parametrize("type_name", ["cgroup_storage", "percpu_cgroup_storage"])
@pytest.mark.parametrize("repeat", [1, 3])
def test_local_storage_lives_for_one_test_run(type_name, repeat, kernel):
    # the counter reaches `repeat` (skb->mark, in ctx_out), and starts again at the next test run
    mapdef = md(type_name, 16, 8, 0)
    outcome_ = same(run_asm(COUNT_IN_LOCAL_STORAGE, "cgroup_skb", FRAME, maps=[mapdef], repeat=repeat))
    assert int.from_bytes(outcome_.ctx_out[8:12], "little") == repeat


SK_STORAGE = """
    r6 = r1
    r9 = 0
    r1 = *(u64 *)(r6 + 168)
    if r1 == 0 goto out
    call 95
    if r0 == 0 goto out
    r7 = r0
    *(u64 *)(r10 - 8) = 0x41
    r1 = map_fd(0) ll
    r2 = r7
    r3 = 0
    r4 = 0
    call 107
    if r0 != 0 goto out
    r9 |= 1
    r1 = map_fd(0) ll
    r2 = r7
    r3 = r10
    r3 += -8
    r4 = 1
    call 107
    if r0 == 0 goto out
    r1 = *(u64 *)(r0 + 0)
    r1 += 1
    *(u64 *)(r0 + 0) = r1
    r9 |= 2
    r1 = map_fd(0) ll
    r2 = r7
    r3 = 0
    r4 = 0
    call 107
    if r0 == 0 goto out
    r1 = *(u64 *)(r0 + 0)
    r9 |= r1
    r9 <<= 8
    r1 = map_fd(0) ll
    r2 = r7
    call 108
    r0 &= 0xf
    r9 |= r0
    r9 <<= 4
    r1 = map_fd(0) ll
    r2 = r7
    call 108
    r0 &= 0xf
    r9 |= r0
    r1 = map_fd(0) ll
    r2 = r7
    r3 = 0
    r4 = 2
    call 107
    if r0 != 0 goto out
    r9 |= 0x10000000
out:
    r0 = r9
    exit
"""


@pytest.mark.parametrize("prog_type", ["sched_cls", "cgroup_skb"])
def test_sk_storage_on_the_test_runs_socket(prog_type, kernel):
    text = SK_STORAGE if prog_type == "sched_cls" else SK_STORAGE.replace(
        "out:\n    r0 = r9\n    exit", "out:\n    *(u32 *)(r6 + 8) = r9\n    r0 = 1\n    exit")
    result = same(run_asm(text, prog_type, FRAME, maps=[md("sk_storage", 4, 8, 0, 1)]))
    assert result.retval != 0 or result.ctx_out is not None
