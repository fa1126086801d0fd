"""Mutators that each break exactly one verifier rule, and the rule table.

A mutator takes a valid program of a shape it fits (`Mutator.shapes`) and edits the tagged lines a rule is
about (programs.py): it inserts one uninitialised read, moves one packet read past the checked range,
removes one null check, ... The rest of the program stays valid, so the kernel's first complaint is about
that rule. `mutate(rule, program, rng)` returns a `Mutant`, or None when the program offers no place for it.

`RULES` says what the 6.18 kernel (root, as in our CI) answers to each rule: a regex its complaint matches,
or that it accepts the mutant (the rule does not apply to privileged programs, or not on x86). Kernel
verdicts are never taken from this table: it is what a test checks the kernel against.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable

from bpforge.isa import Insn, slot_starts
from bpforge.isa.maptypes import MapSpec

from .programs import CTX_FIELDS, CorpusProgram, assemble_lines, deep_call_lines, tagged

BPF_F_STRICT_ALIGNMENT = 1 << 0


@dataclass
class Mutant:
    rule: str
    shape: str
    parent: str  # the program's name
    insns: list[Insn]
    prog_type: str
    maps: list[MapSpec] = field(default_factory=list)
    prog_flags: int = 0
    note: str = ""  # which variant of the rule, where
    text: str = ""

    @property
    def name(self) -> str:
        return f"{self.rule}@{self.parent}"


@dataclass(frozen=True)
class Rule:
    """What the kernel does with a mutant breaking the rule: rejects it with a complaint matching
    `pattern`, or accepts it (`accepts`, with the reason in `why`)."""

    pattern: str | None
    accepts: bool = False
    why: str = ""

    def matches(self, message: str) -> bool:
        return self.pattern is not None and re.search(self.pattern, message) is not None


@dataclass(frozen=True)
class Mutator:
    rule: str
    shapes: tuple[str, ...]
    apply: Callable[[CorpusProgram, random.Random], Mutant | None]


# ---- editing ---------------------------------------------------------------------------------------------

class Edit:
    """A copy of a program's lines to edit; `done()` makes the Mutant."""

    def __init__(self, rule: str, program: CorpusProgram) -> None:
        self.rule, self.program = rule, program
        self.lines = list(program.lines)
        self.prog_flags = program.prog_flags
        self.maps = list(program.maps)
        self.prog_type = program.prog_type

    def at(self, tag: str) -> list[int]:
        return tagged(self.lines, tag)

    def after(self, tag: str, *new: str) -> None:
        i = self.at(tag)[0] + 1
        self.lines[i:i] = [f"{line}  ; @mutation" for line in new]

    def before(self, index: int, *new: str) -> None:
        self.lines[index:index] = [f"{line}  ; @mutation" for line in new]

    def replace(self, index: int, new: str) -> None:
        self.lines[index] = f"{new}  ; @mutation (was: {self.lines[index].split(';')[0].strip()})"

    def delete(self, index: int) -> None:
        del self.lines[index]

    def done(self, note: str, insns: list[Insn] | None = None) -> Mutant:
        return Mutant(self.rule, self.program.shape, self.program.name,
                      insns if insns is not None else assemble_lines(self.lines), self.prog_type, self.maps,
                      self.prog_flags, note, "\n".join(self.lines))


def _code(line: str) -> str:
    return line.split(";")[0].strip()


_MEM = re.compile(r"\*\(u(\d+) \*\)\((r\d+) ([+-]\d+)\)")


def _with_offset(line: str, offset: int) -> str:
    return _MEM.sub(lambda m: f"*(u{m.group(1)} *)({m.group(2)} {offset:+d})", _code(line), count=1)


def _mem(line: str) -> tuple[int, str, int]:
    m = _MEM.search(line)
    return int(m.group(1)) // 8, m.group(2), int(m.group(3))


# ---- the mutators ---------------------------------------------------------------------------------------

def uninit_reg(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("uninit_reg", p)
    variants = []
    if p.facts.get("uninit_regs"):
        variants.append("never_written")
    if p.tagged("call_helper") and p.shape != "loop":
        variants.append("clobbered_by_call")
    if p.shape == "ld_abs":
        variants.append("clobbered_by_ld_abs")
    if p.shape == "bpf2bpf":
        variants.append("argument_not_passed")
    if not variants:
        return None
    variant = rng.choice(variants)
    if variant == "never_written":
        reg = rng.choice(p.facts["uninit_regs"])
        e.after("ctx_save", f"r0 = r{reg}")
        return e.done(f"r{reg} read before any write")
    if variant == "clobbered_by_call":
        reg = rng.randrange(1, 6)
        e.after("call_helper", f"r0 += r{reg}")
        return e.done(f"r{reg} read after a helper call clobbered it")
    if variant == "clobbered_by_ld_abs":
        reg = rng.randrange(1, 6)
        e.after("ld_abs", f"r0 += r{reg}")
        return e.done(f"r{reg} read after LD_ABS clobbered it")
    e.after("sub_body", "r0 += r4")
    return e.done("the subprogram reads r4, which the caller never wrote")


def uninit_stack_read(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("uninit_stack_read", p)
    size = rng.choice((1, 2, 4, 8))
    off = -size * rng.randrange(160 // size, 512 // size + 1)  # below anything a shape writes
    e.after("ctx_save", f"r0 = *(u{size * 8} *)(r10 {off:+d})")
    return e.done(f"read of never-written stack fp{off} size {size}")


def uninit_stack_helper_arg(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("uninit_stack_helper_arg", p)
    stores = e.at("key_store") or e.at("stack_store")
    if p.shape == "map":
        e.delete(e.at("key_store")[0])
        return e.done("map key on never-written stack")
    if p.facts.get("kind") == "csum_diff" and stores:
        e.delete(stores[rng.randrange(len(stores))])
        return e.done("bpf_csum_diff buffer partly never written")
    return None


def packet_past_range(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("packet_past_range", p)
    variant = rng.choice(("read_past", "no_check", "var_no_check") if e.at("pkt_var_check") else ("read_past", "no_check"))
    if variant == "read_past" and e.at("pkt_read"):
        i = rng.choice(e.at("pkt_read"))
        size, _, _ = _mem(e.lines[i])
        off = p.facts["checked"] - size + rng.randrange(1, 5)
        e.replace(i, _with_offset(e.lines[i], off))
        return e.done(f"read [{off}, {off + size}) past the checked {p.facts['checked']} bytes")
    if variant == "var_no_check":
        e.delete(e.at("pkt_var_check")[0])
        return e.done("variable-offset packet read without its own check")
    e.delete(e.at("pkt_check")[0])
    return e.done("the data_end check removed")


def stack_out_of_bounds(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("stack_out_of_bounds", p)
    variant = rng.choice(("below", "above", "var_offset") if p.shape == "spill" else ("below", "above"))
    size = rng.choice((1, 2, 4, 8))
    if variant == "below":
        off = -512 - size * rng.randrange(1, 4)
        e.after("ctx_save", rng.choice((f"*(u{size * 8} *)(r10 {off:+d}) = 0", f"r0 = *(u{size * 8} *)(r10 {off:+d})")))
        return e.done(f"access at fp{off}, below the 512-byte stack")
    if variant == "above":
        off = size * rng.randrange(0, 3)
        e.after("ctx_save", rng.choice((f"*(u{size * 8} *)(r10 {off:+d}) = 0", f"r0 = *(u{size * 8} *)(r10 {off:+d})")))
        return e.done(f"access at fp+{off}, at or above the frame pointer")
    i = e.at("fill_bounds")[0]
    e.replace(i, "r7 &= 255")
    return e.done("variable stack offset bounded to [fp-80, fp+175]")


def write_r10(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("write_r10", p)
    e.after("ctx_save", rng.choice(("r10 = 0", "r10 += -8", "r10 = r1", "w10 = 0", "r10 = *(u64 *)(r10 -8)")))
    return e.done("a write to the frame pointer")


def unbounded_loop(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("unbounded_loop", p)
    if p.facts.get("kind") == "may_goto":
        # a never-taken exit instead (ctx is not NULL), so the code after the loop stays reachable
        e.replace(e.at("may_goto")[0], "if r6 == 0 goto " + _code(e.lines[e.at("may_goto")[0]]).split()[-1])
        return e.done("may_goto replaced by an exit that is never taken: nothing ends the loop")
    if rng.random() < 0.5:
        e.delete(e.at("loop_step")[0])
        for i in reversed(e.at("loop_body")):
            e.delete(i)
        return e.done("the counter's step removed")
    e.after("ctx_save", "r7 = 0", "if r7 == 0 goto -1")
    return e.done("a jump to itself, always taken")


def _jump_indexes(insns: list[Insn]) -> list[int]:
    return [i for i, insn in enumerate(insns) if insn.form.kind in ("jmp", "ja", "may_goto")]


def jump_out_of_range(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("jump_out_of_range", p)
    insns = p.insns
    jumps = _jump_indexes(insns)
    if not jumps:
        return None
    i = rng.choice(jumps)
    starts = slot_starts(insns)
    total = starts[-1] + insns[-1].slots
    target = rng.choice((total + rng.randrange(0, 4), -1 - rng.randrange(0, 4)))
    insns = list(insns)
    insns[i] = insns[i].replace(**{insns[i].form.target_field: target - starts[i] - 1})
    return e.done(f"insn {i} jumps to slot {target} of {total}", insns)


def jump_into_lddw(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("jump_into_lddw", p)
    loads = e.at("map_ld")
    if not loads:
        return None
    i = rng.choice(loads)
    # conditional, so the lddw's first slot stays reachable (else the kernel calls it unreachable first)
    e.before(i, rng.choice(("if r6 == 0 goto +1", "if r0 != 0 goto +1", "if w6 > 7 goto +1")))
    return e.done("a jump to the second slot of an lddw")


def div_by_zero_imm(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("div_by_zero_imm", p)
    reg = rng.choice(p.facts["scalars"])
    op = rng.choice(("/=", "%="))
    width = rng.choice(("r", "w"))
    e.before(e.at("use")[0], f"{width}{reg} {op} 0")
    return e.done(f"{width}{reg} {op} 0 (an immediate zero divisor)")


def div_by_zero_reg(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("div_by_zero_reg", p)
    i = rng.choice(e.at("div_reg"))
    divisor = _code(e.lines[i]).split()[-1]
    e.before(i, f"{divisor} = 0")
    return e.done(f"divisor {divisor} known to be 0")


CTX_SIZE = {"xdp": 24, "sched_cls": 192, "socket_filter": 192, "cgroup_skb": 192, "kprobe": 168}
CTX_READ_ONLY = {"xdp": (12, 16), "sched_cls": (0, 16, 36), "socket_filter": (0, 8, 16), "cgroup_skb": (0, 16, 36)}


def ctx_write(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    if p.prog_type not in CTX_READ_ONLY:
        return None
    e = Edit("ctx_write", p)
    off = rng.choice(CTX_READ_ONLY[p.prog_type])
    e.after("ctx_save", "r0 = 0", f"*(u32 *)(r6 {off:+d}) = r0")
    return e.done(f"write to read-only ctx field at {off}")


def ctx_bad_offset(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    if p.prog_type not in CTX_SIZE:
        return None
    e = Edit("ctx_bad_offset", p)
    off = CTX_SIZE[p.prog_type] + 4 * rng.randrange(0, 8)
    if rng.random() < 0.3:
        off = -4 * rng.randrange(1, 4)
    e.after("ctx_save", f"r0 = *(u32 *)(r6 {off:+d})")
    return e.done(f"ctx read at {off}, outside the context")


def ctx_misaligned(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    if p.prog_type not in CTX_FIELDS:
        return None
    e = Edit("ctx_misaligned", p)
    base, _ = rng.choice(CTX_FIELDS[p.prog_type])
    off = base + rng.choice((1, 2, 3))
    e.after("ctx_save", f"r0 = *(u32 *)(r6 {off:+d})")
    return e.done(f"u32 ctx read at {off}")


def _zero_array_key(p: CorpusProgram) -> bool:
    return p.maps[0].type_name in ("array", "percpu_array") and _code(p.lines[p.tagged("key_store")[0]]).endswith("= 0")


def null_deref(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    if _zero_array_key(p):
        return None  # see null_check_elided_array
    e = Edit("null_deref", p)
    e.delete(e.at("null_check")[0])
    return e.done(f"the {p.maps[0].type_name} value's null check removed (key not a known constant)")


def null_check_elided_array(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    if p.maps[0].type_name not in ("array", "percpu_array"):
        return None
    e = Edit("null_check_elided_array", p)
    # Key 0 stored by an immediate: the kernel reads the key as the constant 0 < max_entries and knows the
    # value cannot be NULL. (Non-zero immediates in a 4-byte store leave the bytes unknown to it.)
    e.replace(e.at("key_store")[0], "*(u32 *)(r10 -4) = 0")
    e.delete(e.at("null_check")[0])
    return e.done("null check removed after an array lookup with the constant key 0")


def _after_null_check(rule: str, p: CorpusProgram, line: str, note: str) -> Mutant:
    e = Edit(rule, p)
    e.after("null_check", line)
    return e.done(note)


def ptr_mul(p, rng):
    op = rng.choice(("*=", "/=", "%=", "<<=", ">>="))
    return _after_null_check("ptr_mul", p, f"r0 {op} 2", f"map value pointer {op} 2")


def ptr_bitwise(p, rng):
    op = rng.choice(("&=", "|=", "^="))
    return _after_null_check("ptr_bitwise", p, f"r0 {op} -8", f"map value pointer {op} -8")


def ptr_plus_ptr(p, rng):
    # (ptr -= ptr is allowed for root: the difference is a scalar)
    return _after_null_check("ptr_plus_ptr", p, f"r0 += {rng.choice(('r6', 'r10'))}", "map value pointer += pointer")


def ptr_alu32(p, rng):
    # (w0 -= x is allowed for root: it makes a meaningless scalar, which fails only where dereferenced)
    return _after_null_check("ptr_alu32", p, rng.choice(("w0 += 8", "w0 += 1", "w0 |= 0")), "32-bit ALU on a map value pointer")


def map_ptr_arith(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("map_ptr_arith", p)
    e.after("map_ld", rng.choice(("r1 += 8", "r1 -= 1", "r1 += 4", "r1 *= 2")))
    return e.done("arithmetic on a map pointer")


def map_ptr_add_known_zero(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("map_ptr_add_known_zero", p)
    e.after("map_ld", "r5 = 0", "r1 += r5")
    return e.done("a map pointer plus a register known to be 0")


def ctx_var_offset(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    if p.prog_type not in CTX_FIELDS:
        return None
    e = Edit("ctx_var_offset", p)
    off, size = CTX_FIELDS[p.prog_type][0]
    e.after("ctx_save", f"r0 = *(u{size * 8} *)(r6 {off:+d})", "r0 &= 4", "r1 = r6", "r1 += r0",
            "r0 = *(u32 *)(r1 +0)")
    return e.done("ctx pointer plus a variable, then dereferenced")


def ptr_leak_map(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("ptr_leak_map", p)
    i = e.at("value_write")[0]
    e.replace(i, re.sub(r"= r7$", f"= {rng.choice(('r6', 'r0', 'r10'))}", _code(e.lines[i])))
    return e.done("a pointer stored into a map value")


def ptr_return_main(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    if p.prog_type not in ("xdp", "sched_cls", "socket_filter"):
        return None
    e = Edit("ptr_return_main", p)
    i = e.at("ret")[0]
    e.replace(i, rng.choice(("r0 = r6", "r0 = r10")))
    return e.done("the program returns a pointer")


def ptr_return_subprog(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("ptr_return_subprog", p)
    if rng.random() < 0.5:
        e.replace(e.at("sub_ret")[0], "r0 = r3")
        return e.done("the subprogram returns a pointer to the caller's stack")
    e.replace(e.at("sub_ret")[0], "r0 = r10")
    return e.done("the subprogram returns a pointer to its own stack")


def helper_arg_type(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("helper_arg_type", p)
    if p.shape == "map":
        e.replace(e.at("key_ptr")[0], rng.choice(("r2 = 0", "r2 = 16")))
        e.delete(e.at("key_off")[0])
        return e.done("a scalar as the map key pointer")
    if e.at("ctx_arg"):
        e.replace(e.at("ctx_arg")[0], rng.choice(("r1 = 0", "r1 = r10")))
        return e.done("not the ctx as bpf_skb_load_bytes' first argument")
    if e.at("mem_ptr"):
        i = e.at("mem_ptr")[0]
        reg = _code(e.lines[i]).split()[0]
        e.replace(i, f"{reg} = 0")
        e.delete(e.at("mem_off")[0])
        return e.done("NULL as a helper's memory argument")
    return None


def helper_arg_size(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("helper_arg_size", p)
    if p.shape == "map":
        i = e.at("key_off")[0]
        key_size = p.facts["key_size"]
        e.replace(i, f"r2 += {-rng.randrange(1, key_size)}")
        return e.done(f"the key area is smaller than key_size {key_size}")
    if e.at("mem_size"):
        i = e.at("mem_size")[0]
        reg = _code(e.lines[i]).split()[0]
        size = -p.facts["buf"] + 4 * rng.randrange(1, 4)
        e.replace(i, f"{reg} = {size}")
        return e.done(f"size {size} runs past the buffer at fp{p.facts['buf']}")
    return None


def helper_size_unbounded(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("helper_size_unbounded", p)
    i = e.at("mem_size")[0]
    reg = _code(e.lines[i]).split()[0]
    field = "r0 = *(u64 *)(r6 +0)" if p.prog_type == "kprobe" else "r0 = *(u32 *)(r6 +0)" if p.prog_type == "sched_cls" else "r0 = *(u32 *)(r6 +12)"
    # non-zero and non-negative (else the kernel complains about that first), but not bounded above
    e.before(i, field, "w0 |= 1")
    e.replace(i + 2, f"{reg} = r0")
    return e.done("a helper's size argument not bounded")


def missing_exit(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("missing_exit", p)
    if _code(e.lines[-1]) != "exit" or _code(e.lines[-2]).startswith(("goto", "if ")):
        return None
    e.delete(len(e.lines) - 1)
    return e.done("the last exit removed: control falls off the end")


def ret_range(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    if p.facts.get("ret_range") is None:
        return None
    e = Edit("ret_range", p)
    exits = e.at("exit")
    value = rng.choice((2, 3, 7, -1, 0x100))
    e.before(exits[-1], f"r0 = {value}")
    return e.done(f"returns {value} where the type allows {p.facts['ret_range']}")


def ld_abs_in_xdp(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    if p.prog_type != "xdp":
        return None
    e = Edit("ld_abs_in_xdp", p)
    e.after("ctx_save", rng.choice(("r0 = *(u8 *)skb[0]", "r0 = *(u16 *)skb[12]", "r1 = 0", )))
    if _code(e.lines[e.at("mutation")[0]]) == "r1 = 0":
        e.replace(e.at("mutation")[0], "r0 = *(u32 *)skb[14]")
    return e.done("LD_ABS in an XDP program")


def ld_abs_without_skb(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("ld_abs_without_skb", p)
    e.after("ctx_save", rng.choice(("r6 = r10", "r6 = 0")))
    return e.done("r6 is not the skb at LD_ABS")


def misaligned_packet_strict(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    return _misaligned_packet("misaligned_packet_strict", p, rng, strict=True)


def misaligned_packet_lax(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    return _misaligned_packet("misaligned_packet_lax", p, rng, strict=False)


def _misaligned_packet(rule: str, p: CorpusProgram, rng: random.Random, *, strict: bool) -> Mutant | None:
    e = Edit(rule, p)
    reads = [i for i in e.at("pkt_read") if _mem(e.lines[i])[0] > 1]
    if not reads:
        return None
    i = rng.choice(reads)
    size, _, off = _mem(e.lines[i])
    new = off + 1 if off + 1 + size <= p.facts["checked"] else off - 1
    e.replace(i, _with_offset(e.lines[i], new))
    if strict:
        e.prog_flags |= BPF_F_STRICT_ALIGNMENT
    return e.done(f"u{size * 8} packet read at {new}{' with BPF_F_STRICT_ALIGNMENT' if strict else ' (no strict flag)'}")


def misaligned_stack(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("misaligned_stack", p)
    stores = [i for i in e.at("stack_store") if _mem(e.lines[i])[0] > 1]
    if not stores:
        return None
    i = rng.choice(stores)
    size, _, off = _mem(e.lines[i])
    e.replace(i, _with_offset(e.lines[i], off - rng.randrange(1, size)))
    return e.done(f"u{size * 8} stack store off its alignment")


def too_deep_calls(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("too_deep_calls", p)
    frames = p.facts["frames"] + rng.randrange(1, 3)
    e.lines = deep_call_lines(frames, p.facts["frame_stack"], 1)
    return e.done(f"a chain of {frames} frames (the limit is 8)")


def too_big_stack(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("too_big_stack", p)
    if p.shape == "deep_calls":
        each = 8 * rng.randrange(9, 20)
        e.lines = deep_call_lines(p.facts["frames"], each, 1)
        return e.done(f"{p.facts['frames']} frames of {each} bytes each")
    i = e.at("sub_stack_store")[0]
    off = -rng.choice((504, 512))
    e.replace(i, _with_offset(e.lines[i], off))
    load = e.at("sub_stack_load")[0]
    e.lines[load] = _with_offset(e.lines[load], off)
    return e.done(f"the subprogram's stack reaches fp{off} on top of the caller's")


def atomic_bad_pointer(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("atomic_bad_pointer", p)
    e.after("ctx_save", "r1 = 1", rng.choice(("lock *(u32 *)(r6 +0) += w1", "lock *(u64 *)(r6 +0) += r1",
                                              "r1 = atomic_fetch_add((u64 *)(r6 +8), r1)")))
    return e.done("an atomic on the ctx")


def spill_partial_overwrite(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("spill_partial_overwrite", p)
    slot = p.facts["ptr_slot"]
    size = rng.choice((1, 2, 4))
    e.after("spill_ptr", f"*(u{size * 8} *)(r10 {slot + size * rng.randrange(0, 8 // size):+d}) = 0")
    return e.done("part of the spilled ctx pointer overwritten, then the fill dereferenced")


def map_value_oob(p: CorpusProgram, rng: random.Random) -> Mutant | None:
    e = Edit("map_value_oob", p)
    i = e.at("value_read")[0]
    vs = p.facts["value_size"]
    off = rng.choice((vs, vs - 4, -8, vs + 8))
    e.replace(i, _with_offset(e.lines[i], off))
    return e.done(f"u64 read at {off} of a {vs}-byte value")


# ---- the table -----------------------------------------------------------------------------------------

SCALAR_SHAPES = ("straight", "branchy", "packet", "map", "spill", "atomics", "loop")
NONCALL_SHAPES = SCALAR_SHAPES + ("helper_mem", "ld_abs")

MUTATORS: dict[str, Mutator] = {m.rule: m for m in (
    Mutator("uninit_reg", NONCALL_SHAPES + ("bpf2bpf",), uninit_reg),
    Mutator("uninit_stack_read", ("straight", "branchy", "packet", "map", "loop"), uninit_stack_read),
    Mutator("uninit_stack_helper_arg", ("map", "helper_mem"), uninit_stack_helper_arg),
    Mutator("packet_past_range", ("packet",), packet_past_range),
    Mutator("stack_out_of_bounds", ("straight", "branchy", "spill", "packet"), stack_out_of_bounds),
    Mutator("write_r10", NONCALL_SHAPES + ("bpf2bpf",), write_r10),
    Mutator("unbounded_loop", ("loop",), unbounded_loop),
    Mutator("jump_out_of_range", ("branchy", "loop", "packet", "map"), jump_out_of_range),
    Mutator("jump_into_lddw", ("map", "atomics"), jump_into_lddw),
    Mutator("div_by_zero_imm", ("straight",), div_by_zero_imm),
    Mutator("div_by_zero_reg", ("straight",), div_by_zero_reg),
    Mutator("ctx_write", ("straight", "branchy", "packet", "map"), ctx_write),
    Mutator("ctx_bad_offset", ("straight", "branchy", "packet", "map", "helper_mem"), ctx_bad_offset),
    Mutator("ctx_misaligned", ("straight", "branchy", "packet", "loop"), ctx_misaligned),
    Mutator("null_deref", ("map",), null_deref),
    Mutator("null_check_elided_array", ("map",), null_check_elided_array),
    Mutator("ptr_mul", ("map", "atomics"), ptr_mul),
    Mutator("ptr_bitwise", ("map", "atomics"), ptr_bitwise),
    Mutator("ptr_plus_ptr", ("map", "atomics"), ptr_plus_ptr),
    Mutator("ptr_alu32", ("map", "atomics"), ptr_alu32),
    Mutator("map_ptr_arith", ("map", "atomics"), map_ptr_arith),
    Mutator("map_ptr_add_known_zero", ("map", "atomics"), map_ptr_add_known_zero),
    Mutator("ctx_var_offset", ("straight", "branchy", "packet"), ctx_var_offset),
    Mutator("ptr_leak_map", ("map",), ptr_leak_map),
    Mutator("ptr_return_main", ("straight", "packet", "map"), ptr_return_main),
    Mutator("ptr_return_subprog", ("bpf2bpf",), ptr_return_subprog),
    Mutator("helper_arg_type", ("map", "helper_mem"), helper_arg_type),
    Mutator("helper_arg_size", ("map", "helper_mem"), helper_arg_size),
    Mutator("helper_size_unbounded", ("helper_mem",), helper_size_unbounded),
    Mutator("missing_exit", ("straight", "packet", "map", "bpf2bpf", "loop"), missing_exit),
    Mutator("ret_range", ("branchy",), ret_range),
    Mutator("ld_abs_in_xdp", ("straight", "branchy", "packet", "map"), ld_abs_in_xdp),
    Mutator("ld_abs_without_skb", ("ld_abs",), ld_abs_without_skb),
    Mutator("misaligned_packet_strict", ("packet",), misaligned_packet_strict),
    Mutator("misaligned_packet_lax", ("packet",), misaligned_packet_lax),
    Mutator("misaligned_stack", ("straight", "atomics", "helper_mem"), misaligned_stack),
    Mutator("too_deep_calls", ("deep_calls",), too_deep_calls),
    Mutator("too_big_stack", ("bpf2bpf", "deep_calls"), too_big_stack),
    Mutator("atomic_bad_pointer", ("straight", "atomics", "packet"), atomic_bad_pointer),
    Mutator("spill_partial_overwrite", ("spill",), spill_partial_overwrite),
    Mutator("map_value_oob", ("map",), map_value_oob),
)}

# The 6.18 kernel's answers (root), as observed; tests/test_verifier_corpus.py checks them against the kernel.
_ROOT = "not checked for privileged (root/CAP_PERFMON) programs"
RULES: dict[str, Rule] = {
    "uninit_reg": Rule(r"R\d+ !read_ok"),
    "uninit_stack_read": Rule(None, accepts=True, why="allow_uninit_stack: " + _ROOT),
    "uninit_stack_helper_arg": Rule(None, accepts=True, why="allow_uninit_stack covers helper memory too: " + _ROOT),
    "packet_past_range": Rule(r"invalid access to packet, off=-?\d+ size=\d+"),
    "stack_out_of_bounds": Rule(r"invalid (write to|read from|variable-offset read from) stack R\d+"),
    "write_r10": Rule(r"frame pointer is read only"),
    "unbounded_loop": Rule(r"infinite loop detected at insn \d+|The sequence of \d+ jumps is too complex"),
    "jump_out_of_range": Rule(r"jump out of range from insn \d+ to -?\d+"),
    "jump_into_lddw": Rule(r"jump into the middle of ldimm64 insn \d+"),
    "div_by_zero_imm": Rule(r"div by zero"),
    "div_by_zero_reg": Rule(None, accepts=True, why="division by a register that holds 0 is defined at run time "
                                                   "(x / 0 = 0, x % 0 = x): the verifier does not care"),
    "ctx_write": Rule(r"invalid bpf_context access off=\d+ size=\d+"),
    "ctx_bad_offset": Rule(r"invalid bpf_context access off=-?\d+ size=\d+"),
    "ctx_misaligned": Rule(r"invalid bpf_context access off=\d+ size=\d+"),
    "null_deref": Rule(r"R\d+ invalid mem access 'map_value_or_null'"),
    "null_check_elided_array": Rule(None, accepts=True, why="an array lookup with a constant in-range key "
                                                            "cannot return NULL: the kernel drops the _or_null"),
    "ptr_mul": Rule(r"R\d+ pointer arithmetic with \S+ operator prohibited"),
    "ptr_bitwise": Rule(r"R\d+ bitwise operator \S+ on pointer prohibited"),
    "ptr_plus_ptr": Rule(r"R\d+ pointer \+= pointer prohibited"),
    "ptr_alu32": Rule(r"R\d+ 32-bit pointer arithmetic prohibited"),
    "map_ptr_arith": Rule(r"R\d+ pointer arithmetic on map_ptr prohibited"),
    "map_ptr_add_known_zero": Rule(None, accepts=True, why="adding a known 0 to a map pointer is the one "
                                                          "arithmetic on it the kernel lets through"),
    "ctx_var_offset": Rule(r"variable ctx access var_off=\(0x[0-9a-f]+; 0x[0-9a-f]+\) disallowed"),
    "ptr_leak_map": Rule(None, accepts=True, why="allow_ptr_leaks: storing a pointer into a map value is " + _ROOT),
    "ptr_return_main": Rule(None, accepts=True, why="allow_ptr_leaks, and xdp/sched_cls/socket_filter have no "
                                                   "return range: a pointer in r0 is " + _ROOT),
    "ptr_return_subprog": Rule(r"cannot return stack pointer to the caller"),
    "helper_arg_type": Rule(r"R\d+ type=\w+ expected="),
    "helper_arg_size": Rule(r"invalid (read from|write to) stack R\d+ off=-?\d+ size=\d+"),
    "helper_size_unbounded": Rule(r"R\d+ unbounded memory access"),
    "missing_exit": Rule(r"last insn is not an exit or jmp"),
    "ret_range": Rule(r"At program exit the register R0 has smin=-?\d+ smax=-?\d+ should have been in \[0, 1\]"),
    "ld_abs_in_xdp": Rule(r"BPF_LD_\[ABS\|IND\] instructions not allowed for this program type"),
    "ld_abs_without_skb": Rule(r"at the time of BPF_LD_ABS\|IND R6 != pointer to skb"),
    "misaligned_packet_strict": Rule(r"misaligned packet access off \d+\+"),
    "misaligned_packet_lax": Rule(None, accepts=True, why="x86 has efficient unaligned access: packet alignment "
                                                         "is checked only with BPF_F_STRICT_ALIGNMENT"),
    "misaligned_stack": Rule(r"misaligned stack access off"),
    "too_deep_calls": Rule(r"the call stack of \d+ frames is too deep"),
    "too_big_stack": Rule(r"combined stack size of \d+ calls is \d+\. Too large"),
    "atomic_bad_pointer": Rule(r"BPF_ATOMIC stores into R\d+ ctx is not allowed"),
    "spill_partial_overwrite": Rule(r"R\d+ invalid mem access 'scalar'"),
    "map_value_oob": Rule(r"invalid access to map value, value_size=\d+ off=-?\d+ size=\d+"),
}
KERNEL_ACCEPTS = frozenset(rule for rule, r in RULES.items() if r.accepts)


def mutate(rule: str, program: CorpusProgram, rng: random.Random) -> Mutant | None:
    """The rule's mutant of `program`, or None if the mutator does not fit it."""
    mutator = MUTATORS[rule]
    if program.shape not in mutator.shapes:
        return None
    return mutator.apply(program, rng)
