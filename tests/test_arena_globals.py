"""Arena globals (`__arena` variables, the `.addr_space.1` section): laid out as libbpf lays them out (at the
end of the arena, page rounded), copied in through the arena's user mapping, referenced by lddw as the
kernel resolves them (user_vm_start + offset) — the interpreter and the fast tier against
BPF_PROG_TEST_RUN of syscall and xdp programs, values read back from user space — and libbpf's refusals."""

from __future__ import annotations

import errno
import struct

import pytest

from bpforge.elf.maps import PAGE_SIZE, arena_data_offset, with_arena_data
from bpforge.isa.maptypes import MapSpec
from bpforge.errors import BpforgeError, ElfError
from bpforge.isa.maptypes import MapError
from bpforge.kernel.program import load_linked
from bpforge.vm import Machine, from_object, run_fast

from test_core_helpers import build, vmlinux, words

USER_VM_START = 0x20000  # map_extra: user_vm_start fixed, so addresses agree between the engines
PAGES = 8

ARENA_MAP = r"""
#define __arena __attribute__((address_space(1)))
#define BPF_MAP_TYPE_ARENA 33
struct { __uint(type, BPF_MAP_TYPE_ARENA); __uint(map_flags, %(flags)s); __uint(max_entries, %(pages)d);
         %(extra)s } arena SEC(".maps");
"""


def arena_source(body: str, *, pages: int = PAGES, extra: int | None = None, flags: str = "BPF_F_MMAPABLE") -> str:
    extra_field = f"__uint(map_extra, {extra});" if extra is not None else ""
    return ARENA_MAP % dict(pages=pages, extra=extra_field, flags=flags) + body + \
        '\nchar LICENSE[] SEC("license") = "GPL";\n'


GLOBALS = arena_source(r"""
extern void __arena *bpf_arena_alloc_pages(void *map, void __arena *addr, __u32 page_cnt, int node_id,
                                           __u64 flags) __ksym;
struct node { struct node __arena *next; __u64 value; };

int __arena counter = 5;            /* initialized */
__u64 __arena zeroed;               /* zero-initialized: in .addr_space.1 too, not in a .bss */
static int __arena hidden = 9;      /* a section-symbol relocation with an addend */
char __arena text[16] = "arena";
struct node __arena * __arena head; /* a list in arena memory hung from a global in the arena too */
__u64 __arena big[600] = { 1 };     /* the globals span two pages */
__u64 out[14];

SEC("syscall")
int globals(void *ctx)
{
    char __arena *page;
    struct node __arena *n;
    __u64 sum = 0;
    int i;

    counter += 1;
    zeroed += 7;
    hidden *= 3;
    text[0] = 'A';
    big[599] = 42;
    page = bpf_arena_alloc_pages(&arena, NULL, 1, -1, 0);   /* the first free page: page 0 */
    out[0] = (__u64)page;
    if (!page)
        return 1;
    out[1] = (__u64)&counter;                               /* user addresses of globals */
    out[2] = (__u64)&big[599];
    /* the pages the loader's copy faulted in are taken; the one below them is free */
    out[3] = (__u64)bpf_arena_alloc_pages(&arena, (void __arena *)(%(base)d + 6 * 4096), 1, -1, 0);
    out[4] = (__u64)bpf_arena_alloc_pages(&arena, (void __arena *)(%(base)d + 7 * 4096), 1, -1, 0);
    out[5] = (__u64)bpf_arena_alloc_pages(&arena, (void __arena *)(%(base)d + 5 * 4096), 1, -1, 0);
    for (i = 0; i < 3; i++) {
        n = (struct node __arena *)(page + i * sizeof(*n));
        n->value = i + 10;
        n->next = head;
        head = n;
    }
    for (i = 0, n = head; i < 4 && n; i++, n = n->next)
        sum += n->value;
    out[6] = sum;
    out[7] = counter;
    out[8] = zeroed;
    out[9] = hidden;
    out[10] = text[0] + text[4];
    out[11] = big[0] + big[599];
    out[12] = (__u64)head;
    out[13] = i;
    return 0;
}
""" % dict(base=USER_VM_START), extra=USER_VM_START)

XDP = arena_source(r"""
__u32 __arena hits;
__u8 __arena last[4] = { 1, 2, 3, 4 };
__u64 where;

SEC("xdp")
int count(struct xdp_md *ctx)
{
    __u8 *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    int i;

    if (data + 4 > end)
        return XDP_ABORTED;
    hits += 1;
    for (i = 0; i < 4; i++)
        last[i] ^= data[i];
    where = (__u64)&hits;
    return hits == 1 ? XDP_PASS : XDP_DROP;
}
""", pages=2)

# bpf_arena_common.h without __BPF_FEATURE_ADDR_SPACE_CAST (or with BPF_ARENA_FORCE_ASM): globals put in the
# section by name, pointers cast to the kernel's view by hand.
FORCE_ASM = arena_source(r"""
int plain SEC(".addr_space.1") = 7;

SEC("syscall")
int by_section(void *ctx)
{
    int *p = &plain;

    asm volatile("%[p] = addr_space_cast(%[p], 0, 1)" : [p] "+r"(p));
    *p += 1;
    return *p;
}
""", pages=1)


def _layout(obj) -> tuple[int, int]:
    """(offset from user_vm_start, size) of the globals in the object's arena."""
    arena = next(m for m in with_arena_data(obj).maps if m.type == 33)
    return arena_data_offset(arena.max_entries, len(arena.initial)), len(arena.initial)


def _symbol(obj, name: str) -> int:
    return next(s.value for s in obj.symbols if s.name == name)


def run_kernel(obj, data: bytes, prog_type: str):
    """(retval, .bss words, the globals as user space reads them afterwards, user_vm_start)."""
    offset, size = _layout(obj)
    with load_linked(obj.linked(None), obj, prog_type=prog_type) as prog:
        retval = prog.test_run(data).retval
        bss = prog.maps[".bss"].lookup(bytes(4)) if ".bss" in prog.maps else b""
        mapping = prog.maps["arena"].arena
        return retval, words(bss), mapping.read(offset, size), mapping.address


def run_vm(obj, data: bytes, prog_type: str, tier: str):
    offset, size = _layout(obj)
    program = from_object(obj)
    machine = Machine(program)
    result = machine.run(data, prog_type) if tier == "interp" else run_fast(machine, data, prog_type)
    bss = program.map(".bss").lookup(bytes(4)) if ".bss" in program.map_names else b""
    arena = program.map("arena")
    return result.retval, words(bss), arena.user_read(offset, size), arena.user_vm_start


def run_all_engines(obj, data: bytes, prog_type: str, *, same_address: bool = True):
    kernel = run_kernel(obj, data, prog_type)
    for tier in ("interp", "fast"):
        vm = run_vm(obj, data, prog_type, tier)
        if same_address:
            assert vm == kernel, tier
        else:  # the kernel chose user_vm_start; only the addresses may differ
            assert vm[0] == kernel[0] and vm[2] == kernel[2], tier
    return kernel


def test_data_offset_is_the_end_of_the_arena_page_rounded():
    assert arena_data_offset(4, 100) == 3 * PAGE_SIZE
    assert arena_data_offset(4, PAGE_SIZE) == 3 * PAGE_SIZE
    assert arena_data_offset(4, PAGE_SIZE + 1) == 2 * PAGE_SIZE
    assert arena_data_offset(4, 4 * PAGE_SIZE) == 0
    assert arena_data_offset(4, 0) == 4 * PAGE_SIZE


def test_globals_match_the_kernel(tmp_path, arenas):
    vmlinux()  # bpf_arena_alloc_pages is a kfunc
    obj = build(tmp_path, GLOBALS)
    offset, size = _layout(obj)
    assert offset == (PAGES - 2) * PAGE_SIZE and size > PAGE_SIZE
    retval, out, after, base = run_all_engines(obj, b"", "syscall")
    assert retval == 0 and base == USER_VM_START
    counter = USER_VM_START + offset + _symbol(obj, "counter")
    assert out[:6] == (USER_VM_START, counter, USER_VM_START + offset + _symbol(obj, "big") + 599 * 8, 0, 0,
                       USER_VM_START + 5 * PAGE_SIZE)
    assert out[6:12] == (33, 6, 7, 27, ord("A") + ord("a"), 43)
    assert out[12:] == (USER_VM_START + 32, 3)  # the list's last node, and its length
    counter_at = _symbol(obj, "counter")
    assert struct.unpack_from("<i", after, counter_at) == (6,)  # what user space sees in the arena
    assert after[_symbol(obj, "text"):][:5] == b"Arena"


def test_xdp_globals_where_the_kernel_chooses_the_address(tmp_path, arenas):
    obj = build(tmp_path, XDP)
    packet = bytes([0x10, 0x20, 0x30, 0x40]) + bytes(60)
    retval, out, after, base = run_all_engines(obj, packet, "xdp", same_address=False)
    assert retval == 2  # XDP_PASS
    offset, _ = _layout(obj)
    assert offset == PAGE_SIZE
    assert out == (base + offset + _symbol(obj, "hits"),)  # the lddw gave user_vm_start + offset
    assert after[_symbol(obj, "last"):][:4] == bytes([0x11, 0x22, 0x33, 0x44])
    vm_base = run_vm(obj, packet, "xdp", "interp")[3]
    assert run_vm(obj, packet, "xdp", "interp")[1] == (vm_base + offset + _symbol(obj, "hits"),)


def test_section_globals_with_explicit_casts(tmp_path, arenas):
    obj = build(tmp_path, FORCE_ASM)
    retval, _, after, _ = run_all_engines(obj, b"", "syscall", same_address=False)
    assert retval == 8 and after[:4] == struct.pack("<i", 8)


def test_an_arena_with_segv_on_fault_cannot_take_globals(tmp_path, arenas):
    # libbpf's copy into such an arena would kill the process with SIGSEGV; bpforge refuses instead
    obj = build(tmp_path, arena_source("int __arena x = 1;\nSEC(\"syscall\") int p(void *c) { return x; }\n",
                                       flags="BPF_F_MMAPABLE | (1U << 17)"))
    for attempt in (lambda: from_object(obj), lambda: load_linked(obj.linked(None), obj).close()):
        with pytest.raises(MapError, match="SEGV_ON_FAULT") as refused:
            attempt()
        assert refused.value.errno == errno.EFAULT


def test_globals_without_an_arena_map_are_refused(tmp_path):
    source = "#define __arena __attribute__((address_space(1)))\nint __arena x = 1;\n"
    referenced = source + 'SEC("syscall") int p(void *c) { return x; }\n'
    with pytest.raises(ElfError, match="arena map"):
        build(tmp_path, referenced)  # libbpf: at open, before any relocation
    unreferenced = build(tmp_path, source + 'SEC("syscall") int p(void *c) { return 0; }\n', name="unref")
    with pytest.raises(ElfError, match="arena map"):
        from_object(unreferenced)


def test_a_second_arena_map_is_refused(tmp_path):
    source = arena_source('struct { __uint(type, 33); __uint(map_flags, BPF_F_MMAPABLE); __uint(max_entries, 1); }'
                          ' second SEC(".maps");\nSEC("syscall") int p(void *c) { return 0; }\n')
    with pytest.raises(ElfError, match="only a single arena map"):
        build(tmp_path, source)


def test_globals_larger_than_the_arena_are_refused(tmp_path):
    obj = build(tmp_path, arena_source('char __arena big[2 * 4096 + 1] = { 1 };\n'
                                       'SEC("syscall") int p(void *c) { return big[0]; }\n', pages=2))
    for attempt in (lambda: from_object(obj), lambda: load_linked(obj.linked(None), obj)):
        with pytest.raises(BpforgeError, match="too small"):
            attempt()


RAW = """
r1 = map_value(0, 8) ll
r2 = addr_space_cast(r1, 0, 1)
r3 = *(u64 *)(r2 + 0)
r0 = r1
r0 -= %d
r0 += r3
exit
"""


def test_raw_value_load_of_an_arena(arenas):
    # an lddw map_value of an arena, as K2 or assembly gives it: the verifier's user_vm_start + offset
    from bpforge.isa import assemble
    from bpforge.kernel.maps import KernelMap
    from bpforge.kernel.program import load_insns
    from bpforge.vm import from_insns
    from bpforge.vm.maps import create_map

    spec = MapSpec("arena", 33, 0, 0, 2, flags=0x400, map_extra=USER_VM_START)
    insns = assemble(RAW % USER_VM_START)
    with KernelMap.create(spec) as kmap, load_insns(insns, "syscall", maps=[kmap]) as prog:
        kernel_retval = prog.test_run(b"").retval
    vm_retval = Machine(from_insns(insns, [create_map(spec)])).run(b"", "syscall").retval
    assert kernel_retval == vm_retval == 8  # the page is not allocated: the load reads 0
    past_end = assemble(f"r1 = map_value(0, {2 * PAGE_SIZE + 1}) ll\nr0 = 0\nexit")
    with KernelMap.create(spec) as kmap:
        with pytest.raises(BpforgeError, match="invalid access to map value pointer"):
            load_insns(past_end, "syscall", maps=[kmap]).close()
    with pytest.raises(MapError, match="invalid access to map value pointer") as refused:
        from_insns(past_end, [create_map(spec)])
    assert refused.value.errno == errno.ERANGE and refused.value.where.insn == 0
