"""Seeded generators of programs the kernel verifier accepts, one function per shape (`SHAPES`).

A program is kept as assembly lines (`CorpusProgram.lines`). A line that a rule is about carries a tag in
its comment (`r0 = *(u8 *)(r2 + 13)  ; @pkt_read`), so a mutator finds "the packet read", "the null check",
"the exit" in any program of a shape without knowing how it was laid out; `facts` holds what the tags
cannot say (the checked packet length, the registers never written, the stack bytes written, ...).

What keeps every shape acceptable (root, as in our CI): registers are read only after they are written on
every path to the read; r6 holds ctx from the first instruction on; pointers are dereferenced only inside the
range a comparison proved (packet) or after a null check (map values); stack accesses are aligned to their
size and lie in [-512, 0); loops have constant trip counts (or are may_goto loops); the value
returned fits the program type's return range. Packet offsets are aligned as the kernel's strict mode
wants (it adds NET_IP_ALIGN = 2 to the packet start), so a mutant may switch strict alignment on and break
alignment at one access only.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from bpforge.isa import Insn, assemble
from bpforge.isa.maptypes import MapSpec

CTX_FIELDS = {  # readable scalar context fields: (offset, size), per program type
    "xdp": ((12, 4), (16, 4)),  # ingress_ifindex, rx_queue_index
    "sched_cls": ((0, 4), (8, 4), (16, 4), (32, 4), (36, 4)),  # len, mark, protocol, priority, ingress_ifindex
    "cgroup_skb": ((0, 4), (8, 4), (16, 4), (32, 4)),
    "socket_filter": ((0, 4), (16, 4), (36, 4)),
}
PACKET_CTX = {"xdp": (0, 4), "sched_cls": (76, 80)}  # offsets of data and data_end in the context
RETURN = {"xdp": 2, "sched_cls": 0, "cgroup_skb": 1, "socket_filter": 0, "kprobe": 0}  # XDP_PASS, TC_ACT_OK, ...
NET_IP_ALIGN = 2  # what the kernel adds to packet offsets when it checks alignment strictly
_TAG = re.compile(r"@([\w:]+)")
_FUNC_REF = re.compile(r"func\((\w+)\)")
_LABEL_LINE = re.compile(r"^\s*(\w+):\s*(;.*)?$")


@dataclass
class CorpusProgram:
    """A generated program: assembly `lines` (tags in comments), the program type, the maps its
    `map_fd(i)` references index, load flags and what mutators may rely on (`facts`)."""

    shape: str
    seed: int
    lines: list[str]
    prog_type: str
    maps: list[MapSpec] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    prog_flags: int = 0

    @property
    def name(self) -> str:
        return f"{self.shape}#{self.seed}"

    @property
    def insns(self) -> list[Insn]:
        return assemble_lines(self.lines)

    def text(self) -> str:
        return "\n".join(self.lines)

    def tagged(self, tag: str) -> list[int]:
        """Indexes of the lines tagged `tag`."""
        return tagged(self.lines, tag)


def tagged(lines: list[str], tag: str) -> list[int]:
    return [i for i, line in enumerate(lines) if tag in _TAG.findall(line)]


def assemble_lines(lines: list[str]) -> list[Insn]:
    """Assemble tagged lines; `func(LABEL)` (a callback's address) is resolved here, since the
    assembler takes only pc-relative offsets there. Jumps are not checked: mutants jump where they must not."""
    text_lines = [line.split(";")[0].rstrip() for line in lines]
    slots, at = {}, 0
    starts = []
    for line in text_lines:
        starts.append(at)
        label = _LABEL_LINE.match(line)
        if label:
            slots[label.group(1)] = at
        elif line.strip():
            at += 2 if line.rstrip().endswith(" ll") else 1
    out = []
    for line, start in zip(text_lines, starts):
        ref = _FUNC_REF.search(line)
        if ref:
            line = line.replace(ref.group(0), f"func(pc{slots[ref.group(1)] - start - 1:+d})")
        out.append(line)
    return assemble("\n".join(out), check_jumps=False)


class Builder:
    """Assembly lines with fresh labels."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._labels = 0

    def __call__(self, line: str, *tags: str) -> None:
        self.lines.append(line + (f"  ; {' '.join('@' + t for t in tags)}" if tags else ""))

    def label(self, prefix: str = "L") -> str:
        self._labels += 1
        return f"{prefix}{self._labels}"

    def place(self, label: str) -> None:
        self.lines.append(f"{label}:")


# ---- scalar code -------------------------------------------------------------------------------------------

ALU_IMM = ("+=", "-=", "*=", "|=", "&=", "^=", "<<=", ">>=", "s>>=", "/=", "%=")
ALU_REG = ("+=", "-=", "*=", "|=", "&=", "^=", "/=", "%=")


def _alu(b: Builder, rng: random.Random, regs: list[int], *, wide: bool = True) -> None:
    """One scalar ALU instruction over registers already written (divisions by registers included: the
    kernel defines x / 0 = 0 and x % 0 = x, so it does not care)."""
    dst = rng.choice(regs)
    r, w = ("r", "r") if wide or rng.random() < 0.5 else ("w", "w")
    if rng.random() < 0.5 and len(regs) > 1:
        op = rng.choice(ALU_REG)
        src = rng.choice([x for x in regs if x != dst])
        tags = ("div_reg",) if op in ("/=", "%=") and r == "r" else ()
        b(f"{r}{dst} {op} {w}{src}", "alu", *tags)
    else:
        op = rng.choice(ALU_IMM)
        width = 64 if r == "r" else 32
        imm = rng.randrange(1, width) if "<<" in op or ">>" in op else rng.choice((1, 3, 7, 0xFF, -1, 1000, 0x1234))
        if op in ("/=", "%=") and imm == -1:
            imm = 5
        tags = ("div_imm",) if op in ("/=", "%=") and r == "r" else ()
        b(f"{r}{dst} {op} {imm}", "alu", *tags)


def _scalar_prologue(b: Builder, rng: random.Random, prog_type: str, regs: list[int]) -> None:
    b("r6 = r1", "ctx_save")
    for reg in regs:
        if rng.random() < 0.5 and prog_type in CTX_FIELDS:
            off, size = rng.choice(CTX_FIELDS[prog_type])
            b(f"r{reg} = *(u{size * 8} *)(r6 {off:+d})", "ctx_read")
        else:
            b(f"r{reg} = {rng.randrange(-1000, 100000)}", "init")


def _epilogue(b: Builder, prog_type: str, value: int | None = None) -> None:
    b(f"r0 = {RETURN[prog_type] if value is None else value}", "ret")
    b("exit", "exit")


def straight(seed: int) -> CorpusProgram:
    """Straight-line scalar ALU code with stack stores and loads of every size."""
    rng = random.Random(seed)
    prog_type = rng.choice(("xdp", "sched_cls", "socket_filter"))
    b = Builder()
    regs = [7, 8, 9]
    _scalar_prologue(b, rng, prog_type, regs)
    written: list[tuple[int, int]] = []  # (offset, size) stores
    for _ in range(rng.randrange(4, 14)):
        if rng.random() < 0.25:
            size = rng.choice((1, 2, 4, 8))
            off = -size * rng.randrange(1, 64 // size + 1)
            if rng.random() < 0.5:
                b(f"*(u{size * 8} *)(r10 {off:+d}) = r{rng.choice(regs)}", "stack_store")
            else:
                b(f"*(u{size * 8} *)(r10 {off:+d}) = {rng.randrange(-100, 100)}", "stack_store")
            written.append((off, size))
        elif rng.random() < 0.2 and written:
            off, size = rng.choice(written)
            b(f"r{rng.choice(regs)} = *(u{size * 8} *)(r10 {off:+d})", "stack_load")
        else:
            _alu(b, rng, regs, wide=rng.random() < 0.7)
    if not any(rng_tag == "div_reg" for line in b.lines for rng_tag in _TAG.findall(line)):
        b(f"r{regs[0]} /= r{regs[1]}", "alu", "div_reg")
    b(f"r{regs[0]} += r{regs[2]}", "alu", "use")
    _epilogue(b, prog_type)
    return CorpusProgram("straight", seed, b.lines, prog_type,
                         facts=dict(scalars=regs, uninit_regs=[2, 3, 4, 5], stack_written=written))


def branchy(seed: int) -> CorpusProgram:
    """Diamonds and nested ifs on ctx-derived scalars, JMP and JMP32 comparisons (register and immediate),
    each arm assigning the return value; cgroup_skb ones return 0 or 1 on every path."""
    rng = random.Random(seed)
    prog_type = rng.choice(("xdp", "sched_cls", "cgroup_skb"))
    b = Builder()
    regs = [7, 8, 9]
    _scalar_prologue(b, rng, prog_type, regs)
    verdicts = (0, 1) if prog_type == "cgroup_skb" else (0, 1, 2, 3)
    b(f"r0 = {rng.choice(verdicts)}", "retval")
    conds = ("==", "!=", ">", ">=", "<", "<=", "s>", "s>=", "s<", "s<=", "&")

    def block(depth: int) -> None:
        for _ in range(rng.randrange(1, 3)):
            kind = rng.random()
            if kind < 0.3 or depth >= 3:
                _alu(b, rng, regs)
                continue
            cond = rng.choice(conds)
            width = "w" if rng.random() < 0.4 else "r"
            lhs = f"{width}{rng.choice(regs)}"
            rhs = f"{width}{rng.choice(regs)}" if rng.random() < 0.4 and cond != "&" else str(rng.choice((0, 1, 7, 100, -1, 0x800)))
            els, end = b.label("else"), b.label("end")
            b(f"if {lhs} {cond} {rhs} goto {els}", "jmp", "jmp32" if width == "w" else "jmp64")
            b(f"r0 = {rng.choice(verdicts)}", "retval")
            block(depth + 1)
            if rng.random() < 0.6:  # a diamond: the then-arm jumps over the else-arm
                b(f"goto {end}", "jmp", "ja")
                b.place(els)
                b(f"r0 = {rng.choice(verdicts)}", "retval")
                block(depth + 1)
                b.place(end)
            else:
                b.place(els)

    block(0)
    b("exit", "exit")
    return CorpusProgram("branchy", seed, b.lines, prog_type, facts=dict(scalars=regs, uninit_regs=[2, 3, 4, 5],
                                                                         ret_range=(0, 1) if prog_type == "cgroup_skb" else None))


def loop(seed: int) -> CorpusProgram:
    """A bounded loop: a counter with a constant trip count (counting up or down), or a may_goto loop over
    an unknown bound. (bpf_loop's callback needs BTF func_info, which raw instructions do not carry.)"""
    rng = random.Random(seed)
    prog_type = rng.choice(("xdp", "sched_cls"))
    kind = rng.choice(("count_up", "count_down", "may_goto"))
    b = Builder()
    b("r6 = r1", "ctx_save")
    off, size = rng.choice(CTX_FIELDS[prog_type])
    b(f"r8 = *(u{size * 8} *)(r6 {off:+d})", "ctx_read")
    facts: dict[str, Any] = dict(kind=kind, uninit_regs=[2, 3, 4, 5])
    trips = rng.randrange(2, 24)
    head = b.label("loop")
    if kind in ("count_up", "count_down"):
        b(f"r7 = {0 if kind == 'count_up' else trips}", "loop_init")
        b.place(head)
        for _ in range(rng.randrange(1, 4)):
            b(rng.choice(("r8 += r7", "r8 ^= r7", "r8 *= 3", "r8 += 1", "w8 += w7")), "loop_body")
        if kind == "count_up":
            b("r7 += 1", "loop_step")
            b(f"if r7 < {trips} goto {head}", "jmp", "back_edge")
        else:
            b("r7 -= 1", "loop_step")
            b(f"if r7 != 0 goto {head}", "jmp", "back_edge")
        facts["trips"] = trips
    elif kind == "may_goto":
        out = b.label("out")
        # Only may_goto ends it; the counter is never compared, so it stays imprecise and the kernel
        # widens it at the loop head: the states then converge.
        b("r7 = 0", "loop_init")
        b.place(head)
        b(f"may_goto {out}", "may_goto")
        b("r7 += 1", "loop_step")
        b(f"r8 {rng.choice(('+=', '^=', '|='))} r7", "loop_body")
        b(f"goto {head}", "jmp", "back_edge")
        b.place(out)
    _epilogue(b, prog_type)
    return CorpusProgram("loop", seed, b.lines, prog_type, facts=facts)


def packet(seed: int) -> CorpusProgram:
    """Packet parsing: data/data_end from the context, `data + N > data_end` check, reads (and writes)
    within the checked range at NET_IP_ALIGN-aligned offsets, a read at a masked variable offset."""
    rng = random.Random(seed)
    prog_type = rng.choice(("xdp", "sched_cls"))
    data_off, end_off = PACKET_CTX[prog_type]
    checked = rng.choice((14, 20, 34, 42, 54, 64))
    b = Builder()
    b("r6 = r1", "ctx_save")
    b(f"r2 = *(u32 *)(r6 {data_off:+d})", "data")
    b(f"r3 = *(u32 *)(r6 {end_off:+d})", "data_end")
    b("r4 = r2")
    b(f"r4 += {checked}", "check_len")
    b("if r4 > r3 goto out", "jmp", "pkt_check")
    reads = []
    for _ in range(rng.randrange(1, 5)):
        size = rng.choice((1, 2, 4, 8))
        # (NET_IP_ALIGN + off) % size == 0 keeps the access aligned in the kernel's strict mode too
        choices = [o for o in range(0, checked - size + 1) if (NET_IP_ALIGN + o) % size == 0]
        if not choices:
            continue
        off = rng.choice(choices)
        b(f"r7 = *(u{size * 8} *)(r2 {off:+d})", "pkt_read")
        reads.append((off, size))
    if prog_type == "xdp" or rng.random() < 0.5:
        b(f"*(u8 *)(r2 {rng.randrange(checked):+d}) = r7", "pkt_write")
    mask = rng.choice((1, 3, 7, 15))
    if mask + 1 < checked:
        b("r5 = *(u8 *)(r2 +0)")
        b(f"r5 &= {mask}", "var_mask")
        b("r4 = r2")
        b("r4 += r5", "var_add")
        # A variable offset resets the pointer's proven range (the kernel gives it a new id): check again.
        var_off = rng.randrange(checked - mask)
        b("r1 = r4")
        b(f"r1 += {var_off + 1}")
        b("if r1 > r3 goto out", "jmp", "pkt_var_check")
        b(f"r7 = *(u8 *)(r4 {var_off:+d})", "pkt_var_read")
    b.place("out")
    _epilogue(b, prog_type)
    return CorpusProgram("packet", seed, b.lines, prog_type,
                         facts=dict(checked=checked, reads=reads, var_mask=mask, uninit_regs=[8, 9]))


def map_lookup(seed: int) -> CorpusProgram:
    """A map lookup with the key on the stack, the null check, a read and a write of the value, and maybe an
    update with the value on the stack; array or hash map."""
    rng = random.Random(seed)
    prog_type = rng.choice(("xdp", "sched_cls", "socket_filter"))
    kind = rng.choice(("array", "hash", "percpu_array", "lru_hash"))
    key_size = 4 if kind in ("array", "percpu_array") else rng.choice((4, 8))
    value_size = rng.choice((8, 16, 24, 32))
    spec = MapSpec.of(kind, key_size, value_size, 16, name=f"m_{kind}")
    b = Builder()
    b("r6 = r1", "ctx_save")
    key_off = -key_size
    b(f"*(u{key_size * 8} *)(r10 {key_off:+d}) = {rng.randrange(16)}", "key_store")
    b("r2 = r10", "key_ptr")
    b(f"r2 += {key_off}", "key_off")
    b("r1 = map_fd(0) ll", "map_ld")
    b("call bpf_map_lookup_elem", "call_helper", "lookup")
    b("if r0 == 0 goto out", "jmp", "null_check")
    off = 8 * rng.randrange(value_size // 8)
    b(f"r7 = *(u64 *)(r0 {off:+d})", "value_read")
    b("r7 += 1")
    b(f"*(u64 *)(r0 {off:+d}) = r7", "value_write")
    if rng.random() < 0.5:
        b("r8 = r0", "value_copy")
        b(f"r7 = *(u32 *)(r8 +{value_size - 4})", "value_read")
    b.place("out")
    if rng.random() < 0.5:
        value_off = -key_size - value_size
        value_off -= value_off % 8 if value_off % 8 else 0
        for o in range(value_off, value_off + value_size, 8):
            b(f"*(u64 *)(r10 {o:+d}) = {rng.randrange(100)}", "value_store")
        b("r2 = r10")
        b(f"r2 += {key_off}")
        b("r3 = r10", "value_ptr")
        b(f"r3 += {value_off}", "value_off")
        b("r4 = 0")
        b("r1 = map_fd(0) ll", "map_ld")
        b("call bpf_map_update_elem", "call_helper", "update")
    _epilogue(b, prog_type)
    return CorpusProgram("map", seed, b.lines, prog_type, [spec],
                         facts=dict(key_size=key_size, value_size=value_size, uninit_regs=[7, 8, 9]))


def spill_fill(seed: int) -> CorpusProgram:
    """Spills of the ctx pointer, a map value pointer and scalars to the stack, fills, and accesses through
    the filled pointers."""
    rng = random.Random(seed)
    prog_type = rng.choice(("xdp", "sched_cls"))
    b = Builder()
    b("r6 = r1", "ctx_save")
    ptr_slot = -8 * rng.randrange(1, 5)
    scalar_slot = ptr_slot - 8 * rng.randrange(1, 4)
    b(f"*(u64 *)(r10 {ptr_slot:+d}) = r1", "spill_ptr")
    b(f"r7 = {rng.randrange(1 << 20)}")
    b(f"*(u64 *)(r10 {scalar_slot:+d}) = r7", "spill_scalar")
    b(f"*(u32 *)(r10 {scalar_slot - 4:+d}) = {rng.randrange(100)}", "stack_store")
    b(f"r1 = *(u64 *)(r10 {ptr_slot:+d})", "fill_ptr")
    off, size = rng.choice(CTX_FIELDS[prog_type])
    b(f"r8 = *(u{size * 8} *)(r1 {off:+d})", "ctx_read_filled")
    b(f"r7 = *(u64 *)(r10 {scalar_slot:+d})", "fill_scalar")
    b("r7 ^= r8", "mix_unknown")  # unknown from here on: only the mask bounds it
    b("r7 &= 15", "fill_bounds")
    # The filled scalar keeps its bounds: a stack access at a variable offset it bounds.
    b("*(u64 *)(r10 -80) = 0", "stack_store")
    b("*(u64 *)(r10 -72) = 0", "stack_store")
    b("r9 = r10")
    b("r9 += -80")
    b("r9 += r7", "var_stack_add")
    b("r9 = *(u8 *)(r9 +0)", "var_stack_read")
    _epilogue(b, prog_type)
    return CorpusProgram("spill", seed, b.lines, prog_type,
                         facts=dict(ptr_slot=ptr_slot, scalar_slot=scalar_slot, uninit_regs=[2, 3, 4, 5]))


def bpf2bpf(seed: int) -> CorpusProgram:
    """A bpf-to-bpf call: a subprogram taking scalars and a pointer to the caller's stack, writing through
    it, using its own stack and returning a scalar."""
    rng = random.Random(seed)
    prog_type = rng.choice(("xdp", "sched_cls", "socket_filter"))
    b = Builder()
    b("r6 = r1", "ctx_save")
    b(f"r1 = {rng.randrange(1000)}")
    b(f"r2 = {rng.randrange(1000)}")
    b("*(u64 *)(r10 -8) = 0", "stack_store")
    b("r3 = r10", "arg_ptr")
    b("r3 += -8")
    b("call sub", "call_local")
    b("r7 = *(u64 *)(r10 -8)")
    b("r7 += r0", "use_ret")
    _epilogue(b, prog_type)
    b.place("sub")
    sub_stack = 8 * rng.randrange(1, 8)
    b(f"*(u64 *)(r10 -{sub_stack}) = r1", "sub_stack_store")
    b("r0 = r1", "sub_body")
    b(rng.choice(("r0 += r2", "r0 ^= r2", "r0 *= r2", "r0 -= r2")), "sub_body")
    b("*(u64 *)(r3 +0) = r0", "sub_ptr_write")
    b(f"r1 = *(u64 *)(r10 -{sub_stack})", "sub_stack_load")
    b("r0 += r1", "sub_ret")
    b("exit", "exit", "sub_exit")
    return CorpusProgram("bpf2bpf", seed, b.lines, prog_type, facts=dict(sub_stack=sub_stack, args=3))


def deep_call_lines(frames: int, each: int, arg: int) -> list[str]:
    """main -> f1 -> ... -> f{frames-1}: `frames` frames in all, each function with `each` bytes of stack."""
    b = Builder()
    b("r6 = r1", "ctx_save")
    b(f"r1 = {arg}")
    b("call f1", "call_local")
    b("exit", "exit")
    for depth in range(1, frames):
        b.place(f"f{depth}")
        b(f"*(u64 *)(r10 -{each}) = r1", "frame_stack")
        b("r1 += 1")
        if depth < frames - 1:
            b(f"call f{depth + 1}", "call_local")
        else:
            b("r0 = r1", "leaf")
        b(f"r1 = *(u64 *)(r10 -{each})")
        b("exit", "exit")
    return b.lines


def deep_calls(seed: int) -> CorpusProgram:
    """A chain of bpf-to-bpf calls exactly 8 frames deep (MAX_CALL_FRAMES), each frame with some stack."""
    rng = random.Random(seed)
    frames = 8
    each = 8 * rng.randrange(1, 8)  # 8 frames x at most 64 (rounded up to 32 per frame) stays under 512
    return CorpusProgram("deep_calls", seed, deep_call_lines(frames, each, rng.randrange(100)), "xdp",
                         facts=dict(frames=frames, frame_stack=each))


def atomics(seed: int) -> CorpusProgram:
    """Atomic read-modify-writes (add/or/and/xor, fetch forms, xchg, cmpxchg; 32 and 64 bits) on initialised
    stack slots and on a map value after its null check."""
    rng = random.Random(seed)
    prog_type = rng.choice(("xdp", "sched_cls"))
    spec = MapSpec.of("array", 4, 16, 4, name="counters")
    b = Builder()
    b("r6 = r1", "ctx_save")
    b(f"r7 = {rng.randrange(100)}")
    b("*(u64 *)(r10 -8) = r7", "stack_store")
    b("*(u32 *)(r10 -12) = 0", "stack_store")
    b("*(u32 *)(r10 -16) = 0", "stack_store")
    ops64 = ("lock *(u64 *)(r10 -8) += r7", "lock *(u64 *)(r10 -8) |= r7", "lock *(u64 *)(r10 -8) ^= r7",
             "r7 = atomic_fetch_add((u64 *)(r10 -8), r7)", "r7 = xchg_64(r10 -8, r7)",
             "r7 = atomic_fetch_and((u64 *)(r10 -8), r7)")
    ops32 = ("lock *(u32 *)(r10 -12) += w7", "w7 = atomic_fetch_or((u32 *)(r10 -12), w7)",
             "w7 = xchg32_32(r10 -12, w7)")
    for _ in range(rng.randrange(1, 4)):
        b(rng.choice(ops64 + ops32), "atomic_stack")
    b("r0 = 0")
    b("r8 = 5")
    b("r0 = cmpxchg_64(r10 -8, r0, r8)", "atomic_stack", "cmpxchg")
    b("r2 = r10")
    b("r2 += -16")
    b("r1 = map_fd(0) ll", "map_ld")
    b("call bpf_map_lookup_elem", "call_helper", "lookup")
    b("if r0 == 0 goto out", "jmp", "null_check")
    b("r1 = 1")
    b(rng.choice(("lock *(u64 *)(r0 +0) += r1", "r1 = atomic_fetch_add((u64 *)(r0 +8), r1)",
                  "lock *(u32 *)(r0 +4) += w1")), "atomic_value")
    b.place("out")
    _epilogue(b, prog_type)
    return CorpusProgram("atomics", seed, b.lines, prog_type, [spec], facts=dict(uninit_regs=[9]))


def helper_mem(seed: int) -> CorpusProgram:
    """Helpers taking memory and a size: bpf_probe_read_kernel into the stack (kprobe), bpf_csum_diff over a
    stack buffer (xdp/sched_cls), bpf_skb_load_bytes into the stack (sched_cls)."""
    rng = random.Random(seed)
    kind = rng.choice(("probe_read_kernel", "csum_diff", "skb_load_bytes"))
    size = 4 * rng.randrange(1, 9)
    buf = -8 * ((size + 7) // 8) - 8 * rng.randrange(0, 3)
    b = Builder()
    b("r6 = r1", "ctx_save")
    if kind == "probe_read_kernel":
        prog_type = "kprobe"
        b("r1 = r10", "mem_ptr")
        b(f"r1 += {buf}", "mem_off")
        b(f"r2 = {size}", "mem_size")
        b("r3 = 0", "src_addr")
        b("call bpf_probe_read_kernel", "call_helper")
        b(f"r7 = *(u32 *)(r10 {buf:+d})", "buf_read")
    elif kind == "csum_diff":
        prog_type = rng.choice(("xdp", "sched_cls"))
        for o in range(buf, buf + size, 4):
            b(f"*(u32 *)(r10 {o:+d}) = {rng.randrange(1 << 16)}", "stack_store")
        b("r1 = r10", "mem_ptr")
        b(f"r1 += {buf}", "mem_off")
        b(f"r2 = {size}", "mem_size")
        b("r3 = 0")
        b("r4 = 0")
        b(f"r5 = {rng.randrange(1 << 16)}")
        b("call bpf_csum_diff", "call_helper")
    else:
        prog_type = "sched_cls"
        b("r1 = r6", "ctx_arg")
        b(f"r2 = {rng.randrange(16)}")
        b("r3 = r10", "mem_ptr")
        b(f"r3 += {buf}", "mem_off")
        b(f"r4 = {size}", "mem_size")
        b("call bpf_skb_load_bytes", "call_helper")
        b(f"r7 = *(u32 *)(r10 {buf:+d})", "buf_read")
    _epilogue(b, prog_type)
    return CorpusProgram("helper_mem", seed, b.lines, prog_type, facts=dict(kind=kind, size=size, buf=buf))


def ld_abs(seed: int) -> CorpusProgram:
    """Legacy packet loads in a socket filter: LD_ABS of every size, LD_IND with a bounded index register."""
    rng = random.Random(seed)
    b = Builder()
    b("r6 = r1", "ctx_save")
    for _ in range(rng.randrange(1, 4)):
        size = rng.choice((8, 16, 32))
        b(f"r0 = *(u{size} *)skb[{rng.randrange(64)}]", "ld_abs")
        b("r7 = r0")
    b(f"r8 = {rng.randrange(40)}")
    b(f"r0 = *(u{rng.choice((8, 16, 32))} *)skb[r8 +{rng.randrange(20)}]", "ld_ind")
    b("r7 += r0")
    b("r0 = r7")
    b("exit", "exit")
    return CorpusProgram("ld_abs", seed, b.lines, "socket_filter", facts=dict(uninit_regs=[9]))


SHAPES: dict[str, Callable[[int], CorpusProgram]] = {
    "straight": straight, "branchy": branchy, "loop": loop, "packet": packet, "map": map_lookup,
    "spill": spill_fill, "bpf2bpf": bpf2bpf, "deep_calls": deep_calls, "atomics": atomics,
    "helper_mem": helper_mem, "ld_abs": ld_abs,
}


def generate(shape: str, seed: int) -> CorpusProgram:
    return SHAPES[shape](seed)
