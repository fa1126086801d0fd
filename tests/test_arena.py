"""Arena maps: pages allocated and freed by bpf_arena_alloc_pages / bpf_arena_free_pages, arena pointers
cast between address spaces, missing pages reading 0 — the VM against BPF_PROG_TEST_RUN of a syscall
program, and the kernel's creation checks."""

from __future__ import annotations

import errno

import pytest

from bpforge.isa.maptypes import MapSpec
from bpforge.isa.maptypes import MapError
from bpforge.vm.maps.arena import PAGE_SIZE, ArenaMap

from test_core_helpers import build, run_everywhere, vmlinux

USER_VM_START = 0x10000

SOURCE = r"""
#define __arena __attribute__((address_space(1)))
#define BPF_MAP_TYPE_ARENA 33
struct { __uint(type, BPF_MAP_TYPE_ARENA); __uint(map_flags, BPF_F_MMAPABLE); __uint(max_entries, 4);
         __uint(map_extra, %d); } arena SEC(".maps");
extern void __arena *bpf_arena_alloc_pages(void *map, void __arena *addr, __u32 page_cnt, int node_id,
                                           __u64 flags) __ksym;
extern void bpf_arena_free_pages(void *map, void __arena *ptr, __u32 page_cnt) __ksym;
__u64 out[12];
/* kept out of .bss: the one value the VM holds differently (the region address + the low 32 bits) */
char *kernel_side SEC(".data.kside");

SEC("syscall")
int arena_pages(void *ctx)
{
    char __arena *p = bpf_arena_alloc_pages(&arena, NULL, 2, -1, 0);
    char __arena *q, *again;
    out[0] = (__u64)p;
    if (!p)
        return 1;
    p[0] = 7;
    p[4096] = 9;
    p[100] += 5;
    out[1] = p[0] + p[4096] + p[100];
    q = bpf_arena_alloc_pages(&arena, NULL, 1, -1, 0);
    out[2] = (__u64)q;
    again = bpf_arena_alloc_pages(&arena, p, 1, -1, 0);       /* taken */
    out[3] = (__u64)again;
    bpf_arena_free_pages(&arena, p, 1);
    out[4] = p[0];                                            /* freed: reads 0 */
    p[0] = 3;                                                 /* and a store there is dropped */
    asm volatile("" ::: "memory");                            /* (read it again) */
    out[5] = p[0] + p[4096];
    out[6] = (__u64)bpf_arena_alloc_pages(&arena, NULL, 5, -1, 0);  /* more than the arena */
    out[7] = (__u64)bpf_arena_alloc_pages(&arena, NULL, 1, -1, 1);  /* flags must be 0 */
    out[8] = (__u64)bpf_arena_alloc_pages(&arena, p, 1, -1, 0);     /* the freed page, by address */
    out[9] = p[0];                                                  /* a new page: zeroed */
    kernel_side = (char *)(p + 8);                  /* addr_space_cast(r, 0, 1) */
    asm volatile("" ::: "memory");
    out[10] = (__u64)(char __arena *)kernel_side;   /* addr_space_cast(r, 1, 0): the user address again */
    out[11] = (__u64)(char __arena *)(kernel_side - (__u64)kernel_side);  /* low 32 bits 0: NULL */
    return 0;
}
char LICENSE[] SEC("license") = "GPL";
""" % USER_VM_START


def test_arena_pages_match_the_kernel(tmp_path, arenas):
    vmlinux()
    obj = build(tmp_path, SOURCE)
    retval, out = run_everywhere(obj, b"", arenas, prog_type="syscall")
    assert retval == 0
    first = USER_VM_START
    assert out == (first, 21, first + 2 * PAGE_SIZE, 0, 0, 9, 0, 0, first, 0, first + 8, 0)


def _arena(**fields) -> MapSpec:
    values = dict(name="a", type=33, key_size=0, value_size=0, max_entries=4, flags=0x400,
                  map_extra=USER_VM_START)
    values.update(fields)
    return MapSpec(**values)


@pytest.mark.parametrize("fields, err", [
    (dict(flags=0), errno.EINVAL),  # BPF_F_MMAPABLE is required
    (dict(key_size=4), errno.EINVAL),
    (dict(max_entries=0), errno.EINVAL),
    (dict(map_extra=USER_VM_START + 1), errno.EINVAL),  # not page aligned
    (dict(max_entries=(1 << 20) + 1), errno.E2BIG),  # more than 4 GiB
    (dict(map_extra=(1 << 32) - PAGE_SIZE), errno.ERANGE),  # the user range crosses 4 GiB
])
def test_arena_creation_is_checked_like_the_kernel(fields, err, arenas):
    with pytest.raises(MapError) as refused:
        ArenaMap(_arena(**fields))
    assert refused.value.errno == err
    from bpforge.kernel.maps import KernelMap

    with pytest.raises(MapError) as kernel_refused:
        KernelMap.create(_arena(**fields)).close()
    assert kernel_refused.value.errno == err
