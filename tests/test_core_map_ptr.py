"""`struct bpf_map` fields read through a map pointer (the selftests' map_ptr_kern.c style): CO-RE gives the
running kernel's offsets, the kernel verifier lets the reads through, and the VM's map handles hold the same
bytes for the fields it knows; reads outside the struct and writes fault."""

from __future__ import annotations

import pytest

from bpforge.vm import VmFault

from test_core_helpers import build, run_everywhere, run_vm, vmlinux

SOURCE = r"""
struct bpf_map {
    enum bpf_map_type map_type; __u32 key_size; __u32 value_size; __u32 max_entries; __u32 map_flags;
} __attribute__((preserve_access_index));
struct value { __u64 a, b, c; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 77); __type(key, __u32); __type(value, __u64);
         __uint(map_flags, BPF_F_NO_PREALLOC); } hmap SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 5); __type(key, __u32);
         __type(value, struct value); } amap SEC(".maps");
__u64 out[10];

static __always_inline void fields(struct bpf_map *m, int slot)
{
    out[slot] = m->map_type;
    out[slot + 1] = m->key_size;
    out[slot + 2] = m->value_size;
    out[slot + 3] = m->max_entries;
    out[slot + 4] = m->map_flags;
}

SEC("xdp")
int map_fields(struct xdp_md *ctx)
{
    fields((struct bpf_map *)&hmap, 0);
    fields((struct bpf_map *)&amap, 5);
    return XDP_PASS;
}

SEC("xdp")
int map_write(struct xdp_md *ctx)
{
    ((struct bpf_map *)&amap)->max_entries = 1;
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_map_fields_read_through_a_map_pointer(tmp_path, kernel):
    vmlinux()
    obj = build(tmp_path, SOURCE)
    _, out = run_everywhere(obj, bytes(64), kernel, "map_fields")
    assert out == (1, 4, 8, 77, 1, 2, 4, 24, 5, 0)  # BPF_MAP_TYPE_HASH = 1, BPF_F_NO_PREALLOC = 1, ARRAY = 2


def test_map_struct_is_read_only_in_the_vm(tmp_path):
    vmlinux()
    obj = build(tmp_path, SOURCE)
    for tier in ("interp", "fast"):
        with pytest.raises(VmFault, match="write of 4 bytes to read-only struct bpf_map"):
            run_vm(obj, bytes(64), tier, section="map_write")
