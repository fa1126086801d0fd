"""Helpers about the program rather than its packet, interpreter = fast tier = kernel: bpf_strtol /
bpf_strtoul (bases, signs, spaces, overflow, the 63-character copy), bpf_strncmp, bpf_probe_read_* on VM
memory and on addresses with nothing behind them, bpf_loop and bpf_for_each_map_elem calling back into
the program (C, so that the callbacks carry BTF as the kernel requires), the current task; and the VM's
own clocks and spin locks."""

from __future__ import annotations

import pytest
from conftest import tool
from vmdiff import compile_c, md, run_asm, run_object, same

STORE = 190  # bpf_xdp_store_bytes: results go into data_out
STRINGS = [b"123", b" -45", b"\t\n\v\f\r 7", b"+7", b"0x1f", b"0X1F", b"0x", b"0xg", b"017", b"08", b"-0",
           b"18446744073709551615", b"18446744073709551616", b"9223372036854775807", b"9223372036854775808",
           b"-9223372036854775808", b"-9223372036854775809", b"\xa05", b"   ", b"-", b"12ab", b"ffff", b"\0",
           b"1" * 70, b"0" * 62 + b"12", b" " * 60 + b"1234", b"99999999999999999999", b"-x1", b"0x8000000000000000"]


def string_program(helper: int, text: bytes, length: int, flags: int) -> str:
    data = text.ljust(72, b"\0")
    out = "r6 = r1\n"
    for i in range(0, 72, 8):
        out += f"r1 = {int.from_bytes(data[i:i + 8], 'little'):#x} ll\n*(u64 *)(r10 - {80 - i}) = r1\n"
    out += f"*(u64 *)(r10 - 8) = -1\nr1 = r10\nr1 += -80\nr2 = {length}\nr3 = {flags}\nr4 = r10\nr4 += -8\n" \
           f"call {helper}\nr7 = r0\n"
    out += f"r1 = r6\nr2 = 0\nr3 = r10\nr3 += -8\nr4 = 8\ncall {STORE}\nr0 = r7\nexit\n"
    return out


@pytest.mark.parametrize("helper", [105, 106], ids=["strtol", "strtoul"])
@pytest.mark.parametrize("text", STRINGS)
@pytest.mark.parametrize("flags", [0, 10, 16])
def test_strtol_strtoul(helper, text, flags, kernel):
    same(run_asm(string_program(helper, text, max(len(text), 1), flags), "xdp", bytes(64)))


@pytest.mark.parametrize("text,length,flags", [(b"12", 1, 0), (b"777", 3, 8), (b"789", 3, 8), (b"10", 2, 2),
                                               (b"10", 2, 32 | 10), (b"0x10", 4, 10), (b"0x10", 4, 8),
                                               (b"  ", 2, 0), (b"1 ", 2, 0)])
def test_strtol_lengths_and_bases(text, length, flags, kernel):
    same(run_asm(string_program(105, text, length, flags), "xdp", bytes(64)))


@pytest.mark.parametrize("s1,size", [(b"abc", 3), (b"abd", 3), (b"ab", 3), (b"abcd", 4), (b"abc", 2), (b"\xff", 1),
                                     (b"", 1), (b"abc\0x", 6)])
def test_strncmp(s1, size, kernel):
    # s2 is a constant string: .rodata-like read-only map value "abc"
    data = s1.ljust(8, b"\0")
    text = f"""
    r1 = {int.from_bytes(data, 'little'):#x} ll
    *(u64 *)(r10 - 8) = r1
    r1 = r10
    r1 += -8
    r2 = {size}
    r3 = map_value(0, 0) ll
    call 182
    exit
    """
    rodata = md("array", 4, 8, 1, 0x80, name=".rodata", initial=b"abc\0\0\0\0\0")
    same(run_asm(text, "xdp", bytes(64), maps=[rodata]))


@pytest.mark.parametrize("helper", [113, 115, 112, 114], ids=["kernel", "kernel_str", "user", "user_str"])
@pytest.mark.parametrize("source", ["stack", "null", "wild"])
@pytest.mark.parametrize("size", [8, 5, 16])
def test_probe_read(helper, source, size, kernel):
    src = {"stack": "r3 = r10\nr3 += -32", "null": "r3 = 0", "wild": "r3 = 0x1000"}[source]
    text = f"""
    r6 = r1
    r1 = 0x0068676665646362 ll
    *(u64 *)(r10 - 32) = r1
    *(u64 *)(r10 - 24) = r1
    r1 = -1
    *(u64 *)(r10 - 16) = r1
    *(u64 *)(r10 - 8) = r1
    r1 = r10
    r1 += -16
    r2 = {size}
    {src}
    call {helper}
    r7 = r0
    r1 = r6
    r2 = 0
    r3 = r10
    r3 += -16
    r4 = 16
    call {STORE}
    r0 = r7
    exit
    """
    same(run_asm(text, "xdp", bytes(64)))


def test_the_current_task_is_this_process(kernel):
    text = f"""
    r6 = r1
    call 14
    *(u64 *)(r10 - 8) = r0
    call 15
    *(u64 *)(r10 - 16) = r0
    r1 = r10
    r1 += -40
    r2 = 24
    call 16
    r1 = r6
    r2 = 0
    r3 = r10
    r3 += -40
    r4 = 40
    call {STORE}
    r0 = 0
    exit
    """
    same(run_asm(text, "xdp", bytes(64)))


CALLBACKS = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 8); __type(key, __u32); __type(value, __u64); } arr SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16); __uint(map_flags, BPF_F_ZERO_SEED); __type(key, __u32); __type(value, __u64); } tab SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 3); __type(key, __u32); __type(value, __u64); } pcpu SEC(".maps");

struct ctx { __u64 sum; __u64 stop_at; __u64 seen; };

static long step(__u32 i, void *data)
{
    struct ctx *c = data;
    c->sum = c->sum * 31 + i;
    return i >= c->stop_at;
}

static long visit(void *map, __u32 *key, __u64 *value, void *data)
{
    struct ctx *c = data;
    c->sum = c->sum * 131 + *key * 7 + *value;
    *value += 1;
    c->seen++;
    return c->seen >= c->stop_at;
}

SEC("xdp")
int callbacks(struct xdp_md *xdp)
{
    void *data = (void *)(long)xdp->data, *end = (void *)(long)xdp->data_end;
    struct ctx c = {0, 5, 0};
    __u32 k;
    __u64 v;
    long r = 0;

    if (data + 4 > end)
        return 0;
    c.stop_at = *(__u8 *)data;
    r = bpf_loop(*(__u8 *)(data + 1), step, &c, 0);
    r = r * 1000 + bpf_loop(1 << 24, step, &c, 0);
    r = r * 1000 + bpf_loop(3, step, &c, 1);
#define SET(n) k = n; v = n * 100 + 1; bpf_map_update_elem(&tab, &k, &v, 0); bpf_map_update_elem(&arr, &k, &v, 0);
    SET(0) SET(1) SET(2) SET(3) SET(4) SET(5)
    c.seen = 0;
    r = r * 100 + bpf_for_each_map_elem(&arr, visit, &c, 0);
    c.seen = 0;
    c.stop_at = *(__u8 *)(data + 2);
    r = r * 100 + bpf_for_each_map_elem(&tab, visit, &c, 0);
    c.seen = 0;
    r = r * 100 + bpf_for_each_map_elem(&pcpu, visit, &c, 0);
    r = r * 100 + bpf_for_each_map_elem(&arr, visit, &c, 1);
    return (r ^ c.sum) & 0x7fffffff;
}

char _license[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def callbacks_object(tmp_path_factory):
    return compile_c(CALLBACKS, tmp_path_factory.mktemp("cb"), tool("clang-19"))


@pytest.mark.parametrize("packet", [bytes([5, 10, 3, 0]), bytes([100, 7, 100, 0]), bytes([0, 0, 1, 0]),
                                    bytes([2, 255, 16, 0])])
def test_loop_and_for_each_map_elem_match_kernel(callbacks_object, packet, kernel):
    same(run_object(callbacks_object, packet + bytes(60)))


def test_clocks_move_forward_and_are_the_machines():
    text = "call 5\nr6 = r0\ncall 160\nr7 = r0\ncall 118\nr8 = r0\ncall 5\nr0 -= r6\nr7 -= r6\nr0 <<= 8\nr0 |= r7\nexit"
    result = same(run_asm(text, "xdp", bytes(64), engines=("interp", "fast")))
    assert result.retval == (2 << 8) | 1  # each reading of a clock advances it by one nanosecond


SPIN = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct val { struct bpf_spin_lock lock; __u32 count; };
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, struct val); } m SEC(".maps");
SEC("xdp")
int spin(struct xdp_md *xdp)
{
    __u32 k = 0;
    struct val *v = bpf_map_lookup_elem(&m, &k);
    if (!v)
        return 0;
    bpf_spin_lock(&v->lock);
    v->count += 2;
    bpf_spin_unlock(&v->lock);
    return v->count;
}
char _license[] SEC("license") = "GPL";
"""


def test_spin_locks_are_no_ops_on_real_lock_memory(tmp_path):
    obj = compile_c(SPIN, tmp_path, tool("clang-19"))
    result = same(run_object(obj, bytes(64), repeat=3, engines=("interp", "fast")))
    assert result.retval == 6


@pytest.mark.parametrize("size", [1, 5, 12, 64])
def test_ring_buffer_records_are_memory_of_their_size(size, kernel):
    """A reserved record, filled, read back with bpf_probe_read_kernel, output again with
    bpf_ringbuf_output, submitted: the same results in the kernel and both tiers."""
    text = f"""
    r6 = r1
    r1 = map_fd(0) ll
    r2 = {size}
    r3 = 0
    call 131
    if r0 == 0 goto none
    r7 = r0
    *(u8 *)(r7 + 0) = 0x5a
    r1 = r10
    r1 += -64
    r2 = {size}
    r3 = r7
    call 113
    r8 = r0
    r1 = map_fd(0) ll
    r2 = r7
    r3 = {size}
    r4 = 0
    call 130
    r8 <<= 8
    r8 |= r0
    r1 = r7
    r2 = 0
    call 132
    r1 = map_fd(0) ll
    r2 = 0
    call 134
    r8 <<= 16
    r8 |= r0
    r0 = *(u8 *)(r10 - 64)
    r0 <<= 32
    r0 |= r8
    r0 &= 0x7fffffff
    exit
    none:
    r0 = 1
    exit
    """
    same(run_asm(text, "xdp", bytes(64), maps=[md("ringbuf", 0, 0, 4096)]))
