"""Kernel functions (kfuncs) the VM implements, dispatched by the BTF id a kfunc call carries (imm, as in
the kernel: the FUNC's id in the running kernel's vmlinux BTF). Both tiers call `call_kfunc`.

Implemented exactly as the kernel does (kernel/bpf/bpf_iter.c, kernel/bpf/helpers.c, kernel/bpf/arena.c):
the open-coded iterators bpf_iter_num_* and bpf_iter_bits_* (their state lives in the program's stack slot,
laid out as the kernel's bpf_iter_*_kern), the no-ops a VM needs nothing for (RCU read lock, preemption),
and the arena page allocator. Any other kfunc is refused when the program is prepared (`check_kfuncs`),
naming it. Return values: an `int` kfunc leaves its 32-bit value zero-extended in r0 (what the x86-64
JIT's call leaves there), a pointer kfunc the address or 0, a void kfunc 0.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from functools import lru_cache

from ..elf.vmlinux import KernelBtf, kernel_btf
from ..isa import Insn, slot_starts
from ..isa.numbers import M64, s32
from .helpers.misc import BPF_MAX_LOOPS  # the kernel's cap on bpf_loop, and on bpf_iter_num ranges
from .maps.arena import ArenaMap
from .memory import VmFault

BITS_ITER_NR_WORDS_MAX = 511  # bpf_iter_bits_new: at most 511 u64 words

Kfunc = Callable[..., "int | None"]
_KFUNCS: dict[str, Kfunc] = {}


def kfunc(name: str):
    def register(fn: Kfunc) -> Kfunc:
        _KFUNCS[name] = fn
        return fn
    return register


def implemented() -> list[str]:
    return sorted(_KFUNCS)


def _int_ret(value: int) -> int:
    return value & 0xFFFFFFFF


def _err(code: int) -> int:
    return _int_ret(-code)


# ---- dispatch ----------------------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _by_id(target: KernelBtf) -> dict[int, tuple[str, Kfunc]]:
    out = {}
    for name, fn in _KFUNCS.items():
        t = target.find("func", name)
        if t is not None:
            out[t.id] = (name, fn)
    return out


def kfunc_name(btf_id: int, target: KernelBtf | None = None) -> str:
    """The kernel's name for kfunc `btf_id` (`#id` when it names no function)."""
    target = target or kernel_btf(needed_for="kfunc calls")
    if 0 < btf_id < len(target.btf.types) and target.btf.types[btf_id].kind == "func":
        return target.btf.types[btf_id].name
    return f"#{btf_id}"


def lookup(btf_id: int, off: int = 0) -> Kfunc:
    """The implementation of kfunc `btf_id` (vmlinux: off 0). VmFault naming it when there is none."""
    if btf_id == 0:
        raise VmFault("call of an unresolved __weak kfunc (the kernel's verifier requires such a call to be "
                      "dead code, e.g. guarded by bpf_ksym_exists)")
    if off != 0:
        raise VmFault(f"kfunc call into module BTF (fd_array index {off}): the VM has only vmlinux kfuncs")
    target = kernel_btf(needed_for="kfunc calls")
    entry = _by_id(target).get(btf_id)
    if entry is None:
        raise VmFault(f"kfunc {kfunc_name(btf_id, target)} is not implemented by the VM "
                      f"(it implements: {', '.join(implemented())})")
    return entry[1]


def call_kfunc(vm, btf_id: int, off: int, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
    """r0 after kfunc `btf_id`. `vm` offers .machine (memory, maps) as for helpers; both tiers call this."""
    result = lookup(btf_id, off)(vm, r1, r2, r3, r4, r5)
    return 0 if result is None else result & M64


def check_kfuncs(insns: Sequence[Insn]) -> None:
    """Refuse, before running, a program that calls a kfunc the VM does not implement (the error names it
    and its instruction). Unresolved weak kfuncs (imm 0) are left to fault only if reached."""
    for insn, slot in zip(insns, slot_starts(insns)):
        if insn.form.name == "call_kfunc" and insn.imm != 0:
            try:
                lookup(insn.imm, insn.off)
            except VmFault as err:
                raise err.at(insn=slot) from None


# ---- no-ops: the VM has no RCU and no preemption -------------------------------------------------------

@kfunc("bpf_rcu_read_lock")
@kfunc("bpf_rcu_read_unlock")
@kfunc("bpf_preempt_disable")
@kfunc("bpf_preempt_enable")
def _nothing(vm, *_):
    return None


# ---- bpf_iter_num (kernel/bpf/bpf_iter.c) -----------------------------------------------------------------
# struct bpf_iter_num_kern { int cur; int end; }: `cur` is the value next() returned (inclusive), `end` is
# exclusive; both 0 once done or after a failed new().

def _num_state(vm, it: int) -> tuple[int, int]:
    mem = vm.machine.memory
    return s32(mem.load(it, 4)), s32(mem.load(it + 4, 4))


def _num_set(vm, it: int, cur: int, end: int) -> None:
    mem = vm.machine.memory
    mem.store(it, 4, cur)
    mem.store(it + 4, 4, end)


@kfunc("bpf_iter_num_new")
def _iter_num_new(vm, it, start, end, *_):
    start, end = s32(start), s32(end)
    if start > end:
        _num_set(vm, it, 0, 0)
        return _err(errno.EINVAL)
    if end - start > BPF_MAX_LOOPS:  # computed in 64 bits: no overflow at INT_MIN..INT_MAX
        _num_set(vm, it, 0, 0)
        return _err(errno.E2BIG)
    _num_set(vm, it, start - 1, end)  # next() is called first, so start one step back
    return 0


@kfunc("bpf_iter_num_next")
def _iter_num_next(vm, it, *_):
    cur, end = _num_state(vm, it)
    if s32(cur + 1) >= end:  # also catches a failed new(): cur = end = 0
        _num_set(vm, it, 0, 0)
        return 0
    _num_set(vm, it, cur + 1, end)
    return it  # &s->cur


@kfunc("bpf_iter_num_destroy")
def _iter_num_destroy(vm, it, *_):
    _num_set(vm, it, 0, 0)


# ---- bpf_iter_bits (kernel/bpf/helpers.c) -----------------------------------------------------------------
# struct bpf_iter_bits_kern { union { u64 *bits; u64 bits_copy; }; int nr_bits; int bit; }: a 64-bit mask is
# copied into the iterator itself, a longer one into memory allocated for it (here: a read-only region).

def _probe_read(vm, addr: int, size: int) -> bytes | None:
    try:
        return vm.machine.memory.read(addr, size)
    except VmFault:
        return None  # bpf_probe_read_kernel_common: -EFAULT


@kfunc("bpf_iter_bits_new")
def _iter_bits_new(vm, it, unsafe_ptr, nr_words, *_):
    mem = vm.machine.memory
    nr_words &= 0xFFFFFFFF
    nr_bytes = nr_words * 8 & 0xFFFFFFFF
    nr_bits = nr_bytes * 8 & 0xFFFFFFFF
    mem.store(it + 8, 4, 0)  # nr_bits
    mem.store(it, 8, 0)  # bits_copy
    mem.store(it + 12, 4, -1)  # bit
    if not unsafe_ptr or not nr_words:
        return _err(errno.EINVAL)
    if nr_words > BITS_ITER_NR_WORDS_MAX:
        return _err(errno.E2BIG)
    copy = _probe_read(vm, unsafe_ptr, nr_bytes)
    if copy is None:
        return _err(errno.EFAULT)
    if nr_bits == 64:
        mem.store(it, 8, int.from_bytes(copy, "little"))
    else:
        region = mem.map(bytearray(copy), "bpf_iter_bits copy", writable=False)
        mem.store(it, 8, region.base)
    mem.store(it + 8, 4, nr_bits)
    return 0


@kfunc("bpf_iter_bits_next")
def _iter_bits_next(vm, it, *_):
    mem = vm.machine.memory
    nr_bits, bit = s32(mem.load(it + 8, 4)), s32(mem.load(it + 12, 4))
    if not nr_bits or bit >= nr_bits:
        return 0
    if nr_bits == 64:
        words = mem.read(it, 8)
    else:
        words = mem.read(mem.load(it, 8), nr_bits // 8)
    value = int.from_bytes(words, "little")
    start = (bit + 1) & M64
    rest = value >> start if start < nr_bits else 0
    found = start + ((rest & -rest).bit_length() - 1) if rest else nr_bits  # find_next_bit
    mem.store(it + 12, 4, min(found, nr_bits))
    return 0 if found >= nr_bits else it + 12  # &kit->bit


@kfunc("bpf_iter_bits_destroy")
def _iter_bits_destroy(vm, it, *_):
    return None  # the kernel frees the copy of a long mask; nothing to free here


# ---- arenas (kernel/bpf/arena.c) ----------------------------------------------------------------------

def _arena(vm, map_ptr: int):
    vm_map = vm.machine.map_at(map_ptr)
    return vm_map if isinstance(vm_map, ArenaMap) else None


@kfunc("bpf_arena_alloc_pages")
def _arena_alloc_pages(vm, map_ptr, addr, page_cnt, node_id, flags):
    arena = _arena(vm, map_ptr)
    page_cnt &= 0xFFFFFFFF
    if arena is None or flags or not page_cnt:
        return 0
    return arena.alloc_pages(addr, page_cnt)


@kfunc("bpf_arena_free_pages")
def _arena_free_pages(vm, map_ptr, ptr, page_cnt, *_):
    arena = _arena(vm, map_ptr)
    page_cnt &= 0xFFFFFFFF
    if arena is None or not page_cnt or not ptr:
        return None
    arena.free_pages(ptr, page_cnt)


__all__ = ["BPF_MAX_LOOPS", "call_kfunc", "check_kfuncs", "implemented", "kfunc", "kfunc_name", "lookup"]
