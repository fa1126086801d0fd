"""Why the verifier refused a program, in words a C programmer can act on.

`explain(verdict, insns, ...)` turns a rejecting `check.Verdict` into an `Explanation`: the failing
instruction (its slot, as the kernel's log and our listings number instructions, and its C source line),
the kernel-worded message unchanged, ONE plain sentence with the concrete registers, offsets and sizes,
a hint where one exists, the registers the instruction reads and the stack slots it touches, the branch
decisions of the path that reached it, and the failure slice: only the instructions of that path the
failing values depend on (their definitions, through copies and stack spills/fills, and the branches
that refined them).

The words come from a table of message patterns (`_RULES`), one row per message `check.py` and
`analysis/cfg.py` raise and per kernel wording of the rules the kernel is tested on; a row reads the
numbers from the message and, where it needs more, the state before the failing instruction, which
`check.trace_states` replays along the failing path. `explain_message(message, prog_type)` gives the
same words for a message alone (the kernel's complaint, with no state to read).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..analysis.effects import effects_of
from ..elf.btf_ext import LineInfo
from ..elf.lines import where
from ..errors import BpforgeError
from ..isa import Insn, slot_starts
from ..isa.ctx_access import ctx_access
from ..isa.helpers import CHANGES_PACKET_DATA, helper_name
from ..isa.maptypes import MapSpec
from ..isa.ops import (
    Alu, Atomic, Call, Exit, Jump, LegacyLoad, Load, LoadImm64, MayGoto, Op, Reg as RegOperand, Store, decode_ops,
)
from ..isa.progtypes import return_range
from ..kernel.verifier_log import parse_state
from .check import Verdict, trace_states
from .functions import CTX_STRUCTS
from .regs import NULLABLE, PACKET_KINDS, Reg, describe
from .state import SLOT, STACK_SIZE, State

# Replaying a path keeps a copy of the state before each of its instructions: past this many, the slice is
# read off the instructions alone (no pointer tracking through registers, no linked registers) and there is
# no --log. A path this long only comes with "BPF program is too large".
REPLAY_LIMIT = 50_000


@dataclass(frozen=True)
class Step:
    """One instruction of the failing path: its slot, source line, disassembly, and for a branch decision
    whether it jumped (`taken`; None for an instruction that is not a decision)."""

    insn: int
    line: str | None
    text: str
    taken: bool | None = None

    def as_json(self) -> dict:
        row = {"insn": self.insn, "line": self.line, "text": self.text}
        if self.taken is not None:
            row["taken"] = self.taken
        return row

    def label(self) -> str:
        return f"insn {self.insn}" + (f" ({self.line})" if self.line else "")


@dataclass
class Explanation:
    """A rejection explained. `registers`: the registers the failing instruction reads, as the verifier log
    prints them; `stack`: the stack slots it reads or is handed a pointer to; `state`: the whole state
    (the log's text); `log`: the state before each instruction of the failing path, when it was replayed."""

    insn: int | None
    line: str | None
    message: str
    reason: str
    hint: str | None
    registers: dict[str, str] = field(default_factory=dict)
    stack: dict[str, str] = field(default_factory=dict)
    state: str = ""
    path: list[Step] = field(default_factory=list)
    slice: list[Step] = field(default_factory=list)
    log: list[tuple[Step, str]] | None = None

    def state_json(self) -> dict:
        return {"registers": self.registers, "stack": self.stack, "text": self.state}


# ---- the facts a rule reads ------------------------------------------------------------------------------

@dataclass
class _Facts:
    """What a rule may consult besides the message: the failing op and the state before it (either may be
    missing: a message alone, a path that could not be replayed), the path and its states, the program."""

    message: str
    prog_type: str | None
    attach: int = 0
    slot: int | None = None
    op: Op | None = None
    before: State | None = None
    trace: Sequence[int] = ()
    states: Sequence[State] | None = None
    ops: Sequence[Op | None] = ()
    lines: Mapping[int, str | None] = field(default_factory=dict)  # slot -> "file.c:42"
    slice: Sequence[int] = ()

    def reg(self, n: int) -> Reg | None:
        return self.before.regs[n] if self.before is not None and 0 <= n <= 10 else None

    def at(self, slot: int) -> str:
        """"insn 7 (x.c:12)"."""
        return Step(slot, self.lines.get(slot), "").label()

    def definer(self, n: int) -> int | None:
        """The last instruction of the slice before the failing one that writes register `n`."""
        for slot in reversed(self.slice[:-1]):
            op = self.ops[slot] if 0 <= slot < len(self.ops) else None
            if op is not None and n in effects_of(op).writes:
                return slot
        return None

    def origin(self, reg: Reg) -> int | None:
        """The instruction whose result started `reg`'s id: the helper call that returned the possibly-NULL
        pointer (or the reference) it carries."""
        if not reg.id or self.states is None:
            return None
        for i in range(len(self.states) - 1, 0, -1):
            slot = self.trace[i - 1]
            op = self.ops[slot]
            after = self.states[i].regs[0]
            if isinstance(op, Call) and after.id == reg.id and after.kind == reg.kind:
                return slot
        return None


def _b(n: int) -> str:
    return f"{n} byte" + ("" if n == 1 else "s")


def _verb(op: Op | None) -> str:
    if isinstance(op, Store):
        return "writes"
    if isinstance(op, Atomic):
        return "atomically updates"
    if isinstance(op, Call) and op.kind == "helper":
        return f"passes to {helper_name(op.target) or 'a helper'}"
    return "reads"


def _helper(op: Op | None) -> str:
    if isinstance(op, Call) and op.kind == "helper":
        return helper_name(op.target) or f"helper #{op.target}"
    if isinstance(op, Call):
        return "the function"
    return "the helper"


def _fp(off: int) -> str:
    return f"fp{off:+d}" if off else "fp"


def _range(reg: Reg) -> str:
    v = reg.var
    if v.is_const():
        return str(v.smin)
    return f"anything from {v.smin} to {v.smax}" if v.smin > -(1 << 63) or v.smax < (1 << 63) - 1 else "any number"


_KIND_WORDS = {
    "scalar": "a number", "ctx": "the context pointer", "fp": "a stack pointer", "pkt": "a packet pointer",
    "pkt_end": "data_end (the end of the packet)", "pkt_meta": "a packet metadata pointer",
    "map_ptr": "a map (not a pointer to its values)", "map_value": "a pointer to a map value",
    "map_value_or_null": "a map value pointer that may be NULL", "func": "a function's address",
    "flow_keys": "the flow keys pointer", "mem": "a pointer to memory", "mem_or_null": "a pointer that may be NULL",
    "not_init": "nothing (an uninitialised register)", "sock": "a socket", "sock_common": "a socket",
    "sock_or_null": "a socket pointer that may be NULL", "sock_common_or_null": "a socket pointer that may be NULL",
    "ringbuf_mem": "a ring buffer record", "ringbuf_mem_or_null": "a ring buffer record that may be NULL",
    "tcp_sock": "a TCP socket", "tcp_sock_or_null": "a TCP socket pointer that may be NULL",
}


def _kind(kind: str) -> str:
    return _KIND_WORDS.get(kind, f"a {kind} pointer")


# ---- the rules: message pattern -> reason and hint --------------------------------------------------------

Rule = Callable[[re.Match, _Facts], tuple[str, str | None]]


def _not_init(m: re.Match, f: _Facts) -> tuple[str, str | None]:
    n = int(m.group(1))
    if isinstance(f.op, Exit) and n == 0:
        return ("the program exits without giving r0, its return value, a value on this path",
                "set the return value (r0) on every path before exit")
    clobber = _clobbered_by(f, n)
    if clobber is not None:
        return (f"reads r{n}, which has no value here: the call at {f.at(clobber)} left r1-r5 without values",
                f"keep the value in one of r6-r9 (calls preserve them), or set r{n} again after {f.at(clobber)}")
    return (f"reads r{n}, which is never given a value on the path to here (at the start only r1, the context, "
            "and r10, the frame pointer, hold one)",
            f"set r{n} before insn {f.slot}" if f.slot is not None else f"set r{n} before reading it")


def _clobbered_by(f: _Facts, n: int) -> int | None:
    """The call on the path that last left register `n` without a value (in the failing frame)."""
    if f.states is None or not 1 <= n <= 5:
        return None
    depth = len(f.states[-1].frames)
    for i in range(len(f.trace) - 2, -1, -1):
        op = f.ops[f.trace[i]]
        frames = f.states[i].frames
        if isinstance(op, Exit) and len(frames) == depth + 1:  # a callee returned to this frame
            return frames[-1].callsite
        if len(frames) != depth:
            continue
        if n in effects_of(op).writes:
            return None
        if isinstance(op, (Call, LegacyLoad)) and len(f.states[i + 1].frames) == depth:
            return f.trace[i]
    return None


def _frame_pointer(m, f):
    return ("writes r10, the frame pointer, which is read only",
            "copy r10 into another register (`r1 = r10`) and change the copy")


def _div_zero(m, f):
    op = f.op
    if isinstance(op, Alu) and op.op in ("mod", "smod"):
        what = f"takes the remainder of r{op.dst} modulo the constant 0"
    elif isinstance(op, Alu):
        what = f"divides r{op.dst} by the constant 0"
    else:
        what = "divides by the constant 0"
    return (what, "divide by a non-zero constant (a division by a register that holds 0 is allowed: it gives 0)")


def _bad_shift(m, f):
    op = f.op
    width = op.width if isinstance(op, Alu) else 64
    return (f"shifts by the constant {m.group(1)}, outside 0..{width - 1} for a {width}-bit operation",
            f"shift by a constant from 0 to {width - 1}")


def _maybe_null(m, f):
    n, kind = int(m.group(1)), m.group(2) + "_or_null"
    reg = f.reg(n)
    size = getattr(f.op, "size", None)
    what = f"{_verb(f.op)} {_b(size)} through r{n}" if size else f"uses r{n} as a pointer"
    origin = f.origin(reg) if reg is not None else None
    if origin is not None:
        helper = _helper(f.ops[origin])
        return (f"{what}, which may be NULL: {helper} at {f.at(origin)} returns NULL when it finds nothing",
                f"check that the pointer {helper} returned (r0 at {f.at(origin)}) is not NULL before using it "
                "(`if (!p) return ...;`)")
    return (f"{what}, which may be NULL ({_kind(kind)})",
            f"check that r{n} is not NULL before using it (`if (!p) return ...;`)")


def _bad_base(m, f):
    n, kind = int(m.group(1)), m.group(2)
    reg = f.reg(n)
    size = getattr(f.op, "size", None)
    what = f"{_verb(f.op)} {_b(size)} through r{n}" if size else f"uses r{n} as a pointer"
    if kind == "scalar":
        moved = _packet_forgotten(f, n)
        if moved is not None:
            return (f"{what}, but r{n} stopped being a packet pointer at {f.at(moved)}: "
                    f"{_helper(f.ops[moved])} may move the packet",
                    f"load data and data_end from the context again after {f.at(moved)} and check them before "
                    "this access")
        value = f" ({describe(reg)})" if reg is not None else ""
        return (f"{what}, but r{n} holds a number{value}, not a pointer",
                "dereference only pointers the verifier knows: the context, the stack, the packet (after a "
                "data_end check), a map value checked for NULL")
    hints = {"pkt_end": "data_end marks where the packet ends: compare pointers with it, read through data",
             "map_ptr": "a map is only passed to helpers: call bpf_map_lookup_elem to get a pointer to a value",
             "ctx": "read context fields at their constant offsets (`ctx->field`)"}
    return (f"{what}, but r{n} holds {_kind(kind)}, which cannot be read or written through", hints.get(kind))


def _packet_forgotten(f: _Facts, n: int) -> int | None:
    """The packet-moving helper call after which register `n` (a packet pointer before it) became a number."""
    if f.states is None:
        return None
    for i in range(len(f.trace) - 2, -1, -1):
        op = f.ops[f.trace[i]]
        if isinstance(op, Call) and op.kind == "helper" and op.target in CHANGES_PACKET_DATA and \
                f.states[i].regs[n].kind in PACKET_KINDS and f.states[i + 1].regs[n].is_scalar:
            return f.trace[i]
    return None


def _two_pointers(m, f):
    return (f"combines two pointers with {m.group(2)} in r{m.group(1)}; of two pointers only a difference may "
            "be taken", "work with one pointer plus a number offset")


def _ptr32(m, f):
    return (f"does 32-bit arithmetic on the pointer in r{m.group(1)}, which would cut it in half",
            "do pointer arithmetic in 64 bits: add a 64-bit (e.g. `__u64`) offset to the pointer")


def _ptr_null_arith(m, f):
    n = int(m.group(1))
    reg = f.reg(n)
    origin = f.origin(reg) if reg is not None else None
    extra = f" (r0 of {_helper(f.ops[origin])} at {f.at(origin)})" if origin is not None else ""
    return (f"moves the pointer in r{n}{extra}, which may still be NULL",
            f"check that r{n} is not NULL before computing with it")


def _ptr_arith_kind(m, f):
    n, kind = m.group(1), m.group(2)
    return (f"moves {_kind(kind)} in r{n}, which may not be moved",
            {"pkt_end": "move the data pointer instead and compare it with data_end",
             "map_ptr": "look the value up with bpf_map_lookup_elem and move the value pointer"}.get(kind))


def _sub_pointer(m, f):
    return (f"subtracts a pointer from a number in r{m.group(1)}", "subtract the number from the pointer instead")


def _sub_fp(m, f):
    return (f"subtracts a register from the stack pointer in r{m.group(1)}",
            "address the stack with a constant offset (`r1 += -8`), not by subtracting a register")


def _bitwise_ptr(m, f):
    return (f"applies {m.group(2)} to the pointer in r{m.group(1)}; pointers only take + and - of a number",
            "compute on the offset (a number) and add it to the pointer afterwards")


def _ptr_operator(m, f):
    return (f"applies {m.group(2)} to the pointer in r{m.group(1)}; pointers only take + and - of a number",
            "compute on the offset (a number) and add it to the pointer afterwards")


def _math_const(m, f):
    return (f"adds {m.group(2)} to {_kind(m.group(1))}: an offset must stay within ±2^29 (536870912)",
            "use a smaller offset")


def _math_unbounded(m, f):
    return (f"adds to {_kind(m.group(1))} a number that has no lower bound (it may be hugely negative)",
            "bound the offset first (an unsigned type and `if (off < N)`, or `off &= N - 1`)")


def _math_oob(m, f):
    return (f"adds to {_kind(m.group(2))} a number that may be as small as {m.group(1)}, which would leave "
            "its region", "bound the offset first (an unsigned type and `if (off < N)`)")


def _atomic(m, f):
    return (f"does an atomic operation through r{m.group(1)}, {_kind(m.group(2))}; atomics work on the stack "
            "and on map values only", "do the atomic update on a map value (or a stack slot)")


def _flow_keys(m, f):
    return (f"accesses {_b(int(m.group(2)))} at offset {m.group(1)} of struct bpf_flow_keys, outside its 56 bytes",
            None)


def _stack_bounds(m, f):
    n, off, size = m.group(2), int(m.group(3)), int(m.group(4))
    if isinstance(f.op, Call) or m.group(1) == "indirect access to":  # memory handed to a helper or function
        return _indirect_stack(n, off, size, f)
    verb = "writes" if "write" in m.group(1) else "reads"
    where = f"at {_fp(off)}"
    if off + size > 0:
        return (f"{verb} {_b(size)} {where} through r{n}, above the frame pointer: the stack is fp-512 to fp-1",
                "stack offsets are negative: address the stack below r10")
    return (f"{verb} {_b(size)} {where} through r{n}, outside the 512-byte stack (fp-512 to fp-1)",
            "keep the stack within 512 bytes: move large buffers into a map (a per-CPU array of one element)")


def _stack_variable(m, f):
    verb = "writes" if "write" in m.group(1) else "reads"
    n = m.group(2)
    reg = f.reg(int(n))
    span = ""
    if reg is not None and reg.kind == "fp" and isinstance(f.op, (Load, Store, Atomic)):
        low, high = reg.var.smin + reg.off + f.op.off, reg.var.smax + reg.off + f.op.off + f.op.size
        span = f" (it may touch {_fp(low)} up to {_fp(high)})"
    return (f"{verb} the stack through r{n} at a variable offset that may leave the 512-byte frame{span}",
            "bound the index with `if (i < N)` first, so that every offset it allows stays within fp-512 to fp-1")


def _stack_unbounded(m, f):
    verb = "writes" if "write" in m.group(1) else "reads"
    return (f"{verb} the stack through r{m.group(2)} at an offset with no bounds",
            "bound the index with `if (i < N)` first")


def _callback_pointer(m, f):
    return "a callback returns a pointer; callbacks return numbers", "return a number from the callback"


def _callback_range(m, f):
    lo, hi = int(m.group(2)), int(m.group(3))
    return (f"a callback returns {m.group(1)}, but its helper takes only values in [{lo}, {hi}]",
            f"return a value in [{lo}, {hi}] from the callback (for bpf_loop: 0 goes on, 1 stops)")


def _stack_misaligned(m, f):
    size = int(m.group(1))
    op = f.op
    off = None
    if isinstance(op, (Load, Store, Atomic)):
        base = f.reg(op.base)
        off = op.off + (base.off if base is not None else 0)
    where = f" at {_fp(off)}" if off is not None else ""
    return (f"accesses {_b(size)} on the stack{where}, which is not a multiple of {size}",
            f"align stack accesses of {_b(size)} to {size}")


def _packet_misaligned(m, f):
    size = int(m.group(2))
    return (f"accesses {_b(size)} of the packet at an offset that is not a multiple of {size} (the program "
            "was loaded with strict alignment, which counts the 2 bytes the kernel puts before the packet)",
            "read the field with smaller loads, or copy it to the stack first")


def _fill(m, f):
    return ("reads part of a pointer that was saved on the stack (a pointer is only read back whole, 8 bytes)",
            "read the saved pointer back with an 8-byte load")


def _spill(m, f):
    return ("writes a pointer to the stack with fewer than 8 bytes", "save pointers to the stack whole, as 8 bytes")


def _st_ctx(m, f):
    return (f"stores a constant into the context through r{m.group(1)}",
            "context fields are written from a register, and only the fields the program type may write")


def _ctx_variable(m, f):
    return (f"accesses {_b(int(m.group(3)))} of the context at an offset that is not a constant",
            "access context fields at constant offsets (`ctx->field`), not through a computed pointer")


def _ctx_access(m, f):
    off, size = int(m.group(1)), int(m.group(2))
    write = isinstance(f.op, (Store, Atomic))
    struct = CTX_STRUCTS.get(f.prog_type or "", "the context")
    struct = f"struct {struct}" if struct != "the context" else struct
    who = f"{f.prog_type} programs" if f.prog_type else "programs of this type"
    verb = "writes" if write else "reads"
    reason = f"{verb} {_b(size)} at offset {off} of the context ({struct}), which {who} may not {verb[:-1]}"
    field_start = _ctx_field(f, off, write)
    if field_start is not None:
        o, s = field_start
        hint = f"{verb[:-1]} the whole {s}-byte field at offset {o} of {struct}"
    elif write:
        hint = f"this field of {struct} is read-only for {who}"
    else:
        hint = f"offset {off} is not a field of {struct} that {who} may read: check the struct layout"
    return reason, hint


def _ctx_field(f: _Facts, off: int, write: bool) -> tuple[int, int] | None:
    """A (offset, size) access of a field around `off` that the program type allows, if any."""
    if not f.prog_type:
        return None
    for size in (4, 8, 2, 1):
        start = off - off % size
        try:
            if ctx_access(f.prog_type, start, size, write, attach=f.attach) is not None:
                return start, size
        except KeyError:  # a type whose rules the table does not state
            return None
    return None


def _packet_write(m, f):
    who = f"{f.prog_type} programs" if f.prog_type else "programs of this type"
    return (f"writes into the packet, which {who} may not do directly",
            "use a helper that writes packet bytes (bpf_skb_store_bytes) where the program type has one")


def _negative_index(m, f):
    n = int(m.group(1))
    reg = f.reg(n)
    smallest = f" (its smallest value is {reg.var.smin})" if reg is not None and reg.is_pointer else ""
    return (f"accesses memory through r{n} at an offset that may be negative{smallest}",
            "use an unsigned index, or check `if (i >= 0)` first")


def _packet(m, f):
    off, size, n, rid, r = int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(6))
    reg = f.reg(n)
    meta = reg is not None and reg.kind == "pkt_meta"
    start, end = ("data_meta", "data") if meta else ("data", "data_end")
    variable = reg is not None and not (reg.var.is_const() and reg.var.var_off.value == 0)
    verb = _verb(f.op)
    if off < 0:
        return (f"{verb} {_b(size)} at offset {off}, before the start of the packet", None)
    if variable:
        base = f"r{n} (data plus a variable offset of up to {reg.var.umax})"
        checked = f"only {r} bytes past it were" if r else "nothing past it was"
        return (f"{verb} {_b(size)} at offset {off} past {base}, but {checked} checked against {end}",
                f"compare r{n} + {off + size} with {end} before this access (after the variable offset is added: "
                "a check made before does not carry over)")
    if rid:  # a pointer moved by a variable offset, then by constants: its range counts from where it moved
        checked = f"only {r} bytes past r{n}'s variable position were" if r else "nothing past it was"
        return (f"{verb} {_b(size)} at offset {off} past a variable position in the packet (r{n}), but {checked} "
                f"checked against {end}",
                f"compare that position + {off + size} with {end} before this access (after the variable offset "
                "is added: a check made before does not carry over)")
    past = f"packet offset {off}" if not meta else f"metadata offset {off}"
    checked = f"only {r} bytes past the packet start were" if r else "the packet's length was not"
    return (f"{verb} {_b(size)} at {past}, but {checked} checked against {end}",
            f"compare {start} + {off + size} with {end} before this access "
            f"(`if ({start} + {off + size} > {end}) return ...;`)")


def _rdonly_map(m, f):
    return ("writes into a map the program may only read (BPF_F_RDONLY_PROG: a `const` global or .rodata)",
            "keep variables the program changes in .data or .bss, not in const globals")


def _unbounded(m, f):
    n = int(m.group(1))
    reg = f.reg(n)
    hint = "bound the index with `if (i < N)` first"
    if reg is not None and reg.kind == "map_value" and reg.map is not None and isinstance(f.op, (Load, Store)):
        most = reg.map.value_size - reg.off - f.op.off - f.op.size
        if most >= 0:
            hint += f", so that the offset stays at most {most} (the value has {reg.map.value_size} bytes)"
    return f"accesses memory through r{n} at an offset that has no upper bound", hint


def _map_value(m, f):
    size_v, off, size = int(m.group(1)), int(m.group(2)), int(m.group(3))
    reg = None
    if isinstance(f.op, (Load, Store, Atomic)):
        reg = f.reg(f.op.base)
    name = f" of map {reg.map.name}" if reg is not None and reg.map is not None and reg.map.name else ""
    verb = _verb(f.op)
    if reg is not None and not reg.var.is_const():
        lo = reg.off + f.op.off + reg.var.umin
        hi = reg.off + f.op.off + reg.var.umax
        most = size_v - size
        return (f"{verb} {_b(size)} at an offset from {lo} to {hi} of a {size_v}-byte map value{name}, which "
                "may go past its end",
                f"bound the index with `if (i < N)` first, so that the offset stays at most {most} (now up to {hi})"
                if most >= 0 else f"the value has only {size_v} bytes: access fewer")
    if off < 0:
        return (f"{verb} {_b(size)} at offset {off} of a map value{name}, before its start", None)
    return (f"{verb} {_b(size)} at offset {off} of a {size_v}-byte map value{name}, past its end",
            f"stay within the value: an access of {_b(size)} starts at offset {size_v - size} at most" if size_v >= size
            else f"the value has only {size_v} bytes")


def _memory(m, f):
    mem, off, size = int(m.group(1)), int(m.group(2)), int(m.group(3))
    return (f"{_verb(f.op)} {_b(size)} at offset {off} of a {mem}-byte memory region, past its end",
            f"stay within the {mem} bytes (check the index against the size first)")


def _return_stack(m, f):
    return ("a function returns a pointer into its own stack, which is gone once it returns",
            "return a number, or write the result into memory the caller passes in")


def _subprog_return(m, f):
    return (f"a global function returns {_kind(m.group(1))}; global functions return numbers",
            "return a number from the global function (or make it static)")


def _return_pointer(m, f):
    allowed = return_range(f.prog_type, f.attach) if f.prog_type else None
    rng = f" in [{allowed[0]}, {allowed[1]}]" if allowed else ""
    who = f"a {f.prog_type} program" if f.prog_type else "a program of this type"
    return (f"returns {_kind(m.group(1))}, but {who} must return a number{rng}",
            f"return a number{rng}")


_RETURN_MEANINGS = {
    "cgroup_skb": "1 lets the packet through, 0 drops it", "cgroup_sock": "1 allows, 0 refuses",
    "cgroup_sock_addr": "1 allows, 0 refuses", "cgroup_sysctl": "1 allows, 0 refuses",
    "cgroup_sockopt": "1 lets the call go on, 0 refuses it", "cgroup_device": "1 allows the access, 0 refuses it",
    "sock_ops": "1 for success", "sk_lookup": "SK_PASS (1) or SK_DROP (0)", "netfilter": "NF_ACCEPT (1) or NF_DROP (0)",
    "xdp": "an XDP action",
}


def _return_range(m, f):
    lo, hi = int(m.group(2)), int(m.group(3))
    r0 = f.reg(0)
    if r0 is not None and r0.is_scalar:
        value = f"{r0.var.s32_min}" if r0.var.s32_min == r0.var.s32_max else \
            f"a value that may be anything from {r0.var.s32_min} to {r0.var.s32_max}"
    else:
        value = m.group(1)
    who = f"a {f.prog_type} program" if f.prog_type else "a program of this type"
    meaning = _RETURN_MEANINGS.get(f.prog_type or "")
    hint = f"return a value in [{lo}, {hi}]" + (f" ({meaning})" if meaning else "")
    defined = f.definer(0)
    if defined is not None:
        hint += f"; r0 gets its value at {f.at(defined)}"
    return f"returns {value}, but {who} must return a value in [{lo}, {hi}]", hint


def _call_depth(m, f):
    return (f"calls functions {int(m.group(1))} frames deep; the kernel allows 8",
            "flatten the call chain (BPF has no recursion: use a bounded loop instead)")


def _combined_stack(m, f):
    return (f"the chain of {m.group(1)} calls uses {m.group(2)} bytes of stack together, more than 512",
            "use less stack in these functions: move large buffers into a map (a per-CPU array)")


def _callx(m, f):
    return ("calls through a register (callx), which the kernel does not take",
            "call functions directly, or use a tail call (bpf_tail_call) for a computed target")


def _ld_abs_type(m, f):
    who = f"{f.prog_type} programs" if f.prog_type else "this program type"
    return (f"uses a legacy packet load (LD_ABS/LD_IND), which {who} do not have: only socket_filter, sched_cls "
            "and sched_act programs do", "read the packet through ctx->data after checking data_end "
                                         "(or with bpf_skb_load_bytes)")


def _ld_abs_r6(m, f):
    return ("does a legacy packet load (LD_ABS/LD_IND) while r6 does not hold the context (the skb)",
            "set `r6 = r1` at the start and keep r6 unchanged up to the load")


def _ld_abs_refs(m, f):
    return ("does a legacy packet load (LD_ABS/LD_IND) while holding a socket reference (the load may end the "
            "program, leaking it)", "release the reference before the load")


def _unknown_helper(m, f):
    return f"calls helper #{m.group(1)}, which does not exist", "call a helper the kernel has (bpf_helper_defs.h)"


def _helper_not_allowed(m, f):
    who = f"{f.prog_type} programs" if f.prog_type else "programs of this type"
    return f"calls {m.group(1)}, which {who} may not call", f"use a helper {who} have, or another program type"


def _arg_type(m, f):
    n, kind, expected = int(m.group(1)), m.group(2), m.group(3)
    helper = _helper(f.op)
    hints = {"map_ptr": f"pass the map itself (`&my_map`) as argument {n} of {helper}",
             "ctx": f"pass the program's context (its first argument) unchanged as argument {n}",
             "scalar": f"pass a number as argument {n}"}
    wanted = hints.get(expected.split(",")[0])
    if wanted is None and expected.startswith("fp"):
        wanted = f"pass a pointer to memory the program owns (the stack, a map value, a checked packet range) " \
                 f"as argument {n}"
    return (f"passes {_kind(kind)} in r{n} as argument {n} of {helper}, which expects {expected}", wanted)


def _no_map(m, f):
    return (f"passes a key or value pointer to {_helper(f.op)}, but its argument 1 is not a map",
            "pass the map (`&my_map`) as argument 1")


def _size_negative(m, f):
    n = m.group(1)
    return (f"the size in r{n} passed to {_helper(f.op)} may be negative",
            "use an unsigned size, or bound it first (`if (size > N) return ...;` or `size &= N - 1`)")


def _size_unbounded(m, f):
    n = m.group(1)
    return (f"the size in r{n} passed to {_helper(f.op)} has no upper bound",
            "bound it first: `if (size > N) return ...;` or `size &= N - 1` with N no larger than the buffer")


def _size_zero(m, f):
    n = m.group(1)
    return (f"the size in r{n} passed to {_helper(f.op)} may be 0", "check `if (size == 0)` before the call")


def _indirect_stack(n: str, off: int, size: int, f: _Facts) -> tuple[str, str | None]:
    return (f"{_helper(f.op)} would access {_b(size)} at {_fp(off)} through r{n}, outside the 512-byte stack",
            "pass a smaller buffer, or one in a map")


def _uninit_stack(m, f):
    n, off, size = m.group(1), int(m.group(2)), int(m.group(3))
    return (f"passes {_b(size)} at {_fp(off)} (r{n}) to {_helper(f.op)}, but not all of them were written",
            f"initialise the {_b(size)} at {_fp(off)} before passing them")


def _bad_map_ref(m, f):
    return f"loads map #{m.group(1)}, which the program does not have", "refer to maps the object defines"


def _global_args(m, f):
    return (f"calls the global function {m.group(2)} with arguments its prototype does not take: {m.group(1)}",
            "pass what the prototype declares (a non-NULL pointer to enough memory, the context, a number)")


def _infinite(m, f):
    return (f"loops forever: the path comes back to insn {m.group(1)} in a state it was in before",
            "make the loop end: bound it by a counter that changes each time (`for (i = 0; i < N; i++)`)")


def _too_large(m, f):
    return ("the verifier would have to walk more than 1,000,000 instructions (too many paths or loop turns)",
            "bound loops by small constants, cut branches, or split the program with tail calls")


def _jumps(m, f):
    return (f"has {m.group(1)} branches pending at once, more than the verifier follows",
            "cut the number of branches in a row (loops with many conditions inside)")


def _past_end(m, f):
    return f"control runs past the last instruction (to insn {m.group(1)})", "end every path with exit"


def _jump_range(m, f):
    return (f"jumps from insn {m.group(1)} to insn {m.group(2)}, outside its function",
            "jump only within the function")


def _jump_lddw(m, f):
    return (f"jumps into the second half of the 16-byte lddw at insn {m.group(1)}",
            "jump to the start of an instruction")


def _no_exit(m, f):
    return ("the last instruction neither exits nor jumps: control would run off the end",
            "end every function with exit")


def _unreachable(m, f):
    return (f"insn {m.group(1)} can never run (the kernel refuses dead code)", "remove the unreachable code")


def _bad_call(m, f):
    return f"calls {m.group(1)}, which is not inside the program", None


def _entry(m, f):
    return f"a function entry is not a valid instruction: {m.group(0)}", None


def _empty(m, f):
    return "the program has no instructions", None


def _leak_ref(m, f):
    slot = int(m.group(2))
    return (f"exits without releasing the reference acquired at insn {slot}",
            "release it on every path (bpf_sk_release, bpf_ringbuf_submit or bpf_ringbuf_discard)")


def _release_unref(m, f):
    return (f"passes r{m.group(1)} to a release function, but it does not hold a reference",
            "release only what an acquiring helper returned (after its NULL check)")


def _release_offset(m, f):
    return (f"passes r{m.group(1)} to a release function after moving it",
            "release the pointer exactly as the acquiring helper returned it")


def _tail_leak(m, f):
    return ("does a tail call while holding a reference, which the tail call would leak",
            "release the reference before bpf_tail_call")


def _map_type(m, f):
    return f"passes a map of type {m.group(1)} to {m.group(2)}, which does not take that map type", None


def _not_const(m, f):
    return f"passes a size in r{m.group(1)} that is not a known constant", "pass a constant size"


def _leak_map(m, f):
    return (f"stores the pointer in r{m.group(1)} into a map, which would leak a kernel address",
            "store numbers in maps, not pointers")


def _leak_ret(m, f):
    return ("returns a pointer, which would leak a kernel address", "return a number")


def _uninit_stack_read(m, f):
    return ("reads stack bytes that were never written", "initialise the stack slot before reading it")


def _no_func_info(m, f):
    return ("takes a function's address (a callback) in a program loaded without BTF that describes its functions",
            "compile with `clang -g` so the object carries BTF, and load it with its func_info")


def _back_edge(m, f):
    return (f"has a loop (a jump back from insn {m.group(1)} to insn {m.group(2)}), which this kernel refuses",
            "unroll the loop (`#pragma unroll`) or use bpf_loop")


def _invalid_stack(m, f):
    return (f"accesses the stack at an invalid offset ({m.group(0)})", "keep stack accesses within fp-512 to fp-1")


# First match wins: more specific wordings before the general ones they contain.
_RULES: tuple[tuple[re.Pattern, Rule], ...] = tuple((re.compile(p), r) for p, r in (
    (r"R(\d+) !read_ok", _not_init),
    (r"frame pointer is read only", _frame_pointer),
    (r"div by zero", _div_zero),
    (r"invalid shift (-?\d+)", _bad_shift),
    (r"R(\d+) invalid mem access '(\w+)_or_null'", _maybe_null),
    (r"R(\d+) invalid mem access '(\w+)'", _bad_base),
    (r"R(\d+) pointer (\S+) pointer prohibited", _two_pointers),
    (r"R(\d+) 32-bit pointer arithmetic prohibited", _ptr32),
    (r"R(\d+) pointer arithmetic on (\w+) prohibited, null-check it first", _ptr_null_arith),
    (r"R(\d+) pointer arithmetic on (\w+) prohibited", _ptr_arith_kind),
    (r"R(\d+) tried to subtract pointer from scalar", _sub_pointer),
    (r"R(\d+) subtraction from stack pointer prohibited", _sub_fp),
    (r"R(\d+) bitwise operator (\S+) on pointer prohibited", _bitwise_ptr),
    (r"R(\d+) pointer arithmetic with (\S+) operator prohibited", _ptr_operator),
    (r"math between (\w+) pointer and (-?\d+) is not allowed", _math_const),
    (r"math between (\w+) pointer and register with unbounded min value is not allowed", _math_unbounded),
    (r"value (-?\d+) makes (\w+) pointer be out of bounds", _math_oob),
    (r"BPF_ATOMIC stores into R(\d+) (\w+) is not allowed", _atomic),
    (r"invalid access to flow keys off=(-?\d+) size=(\d+)", _flow_keys),
    (r"invalid ([\w ]+?) stack R(\d+) off=(-?\d+) size=(\d+)", _stack_bounds),
    (r"invalid unbounded variable-offset ([\w ]+?) stack R(\d+)", _stack_unbounded),
    (r"invalid variable-offset ([\w ]+?) stack R(\d+)", _stack_variable),
    (r"invalid indirect read from stack R(\d+) off (-?\d+)\+\d+ size (\d+)", _uninit_stack),
    (r"invalid read from stack off (-?\d+)\+\d+ size (\d+)", _uninit_stack_read),
    (r"misaligned stack access .* size (\d+)", _stack_misaligned),
    (r"misaligned (?:packet )?access off (.*) size (\d+)", _packet_misaligned),
    (r"invalid size of register fill", _fill),
    (r"invalid size of register spill", _spill),
    (r"BPF_ST stores into R(\d+) ctx is not allowed", _st_ctx),
    (r"variable ctx access var_off=(.*?) off=(-?\d+) size=(\d+)", _ctx_variable),
    (r"invalid bpf_context access off=(-?\d+) size=(\d+)", _ctx_access),
    (r"cannot write into packet", _packet_write),
    (r"R(\d+) min value is negative, either use unsigned index", _negative_index),
    (r"invalid access to packet, off=(-?\d+) size=(\d+), R(\d+)\(id=(\d+),off=(-?\d+),r=(\d+)\)", _packet),
    (r"write into map forbidden", _rdonly_map),
    (r"R(\d+) unbounded memory access, make sure to bounds check", _unbounded),
    (r"invalid access to map value, value_size=(\d+) off=(-?\d+) size=(\d+)", _map_value),
    (r"invalid access to memory, mem_size=(\d+) off=(-?\d+) size=(\d+)", _memory),
    (r"cannot return stack pointer to the caller", _return_stack),
    (r"At subprogram exit the register R0 is not a scalar value \((\w+)\)", _subprog_return),
    (r"R0 not a scalar value", _callback_pointer),
    (r"At callback return the register R0 has (.*) should have been in \[(-?\d+), ?(-?\d+)\]", _callback_range),
    (r"At program exit the register R0 is not a known value \((\w+)\)", _return_pointer),
    (r"At program exit the register R0 has (.*) should have been in \[(-?\d+), ?(-?\d+)\]", _return_range),
    (r"the call stack of (\d+) frames is too deep", _call_depth),
    (r"combined stack size of (\d+) calls is (\d+)\. Too large", _combined_stack),
    (r"unknown opcode 8d", _callx),
    (r"BPF_LD_\[ABS\|IND\] instructions not allowed for this program type", _ld_abs_type),
    (r"at the time of BPF_LD_ABS\|IND R6 != pointer to skb", _ld_abs_r6),
    (r"BPF_LD_\[ABS\|IND\] cannot be mixed with socket references", _ld_abs_refs),
    (r"invalid func unknown#(\d+)", _unknown_helper),
    (r"program of this type cannot use helper (\w+)#\d+", _helper_not_allowed),
    (r"(.*); caller passes invalid args into func \('(\w+)'\)", _global_args),
    (r"R(\d+) type=(\w+) expected=(.*?)(?:;|$)", _arg_type),
    (r"invalid map_ptr to access map->key", _no_map),
    (r"R(\d+) min value is negative, either use unsigned or 'var &= const'", _size_negative),
    (r"R(\d+) unbounded memory access, use 'var &= const'", _size_unbounded),
    (r"R(\d+) invalid zero-sized read", _size_zero),
    (r"fd (\d+) is not pointing to valid bpf_map", _bad_map_ref),
    (r"infinite loop detected at insn (\d+)", _infinite),
    (r"BPF program is too large", _too_large),
    (r"The sequence of (\d+) jumps is too complex", _jumps),
    (r"invalid insn idx (\d+)", _past_end),
    (r"jump out of range from insn (\d+) to (-?\d+)", _jump_range),
    (r"jump into the middle of ldimm64 insn (\d+)", _jump_lddw),
    (r"last insn is not an exit or jmp", _no_exit),
    (r"unreachable insn (\d+)", _unreachable),
    (r"call to invalid destination: (slot \d+ of \d+)", _bad_call),
    (r"function entry .*", _entry),
    (r"empty program", _empty),
    (r"Unreleased reference id=(\d+) alloc_insn=(\d+)", _leak_ref),
    (r"R(\d+) must be referenced when passed to release function", _release_unref),
    (r"R(\d+) must have zero offset when passed to release func", _release_offset),
    (r"tail_call would lead to reference leak", _tail_leak),
    (r"cannot pass map_type (\d+) into func (\w+)#\d+", _map_type),
    (r"R(\d+) is not a known constant", _not_const),
    (r"R(\d+) leaks addr into map", _leak_map),
    (r"R0 leaks addr as return value", _leak_ret),
    (r"missing btf func_info", _no_func_info),
    (r"back-edge from insn (\d+) to (\d+)", _back_edge),
    (r"invalid stack off=(-?\d+) size=(\d+)", _invalid_stack),
))


def _words(f: _Facts, text: str | None) -> tuple[str, str | None]:
    for pattern, rule in _RULES:
        match = pattern.search(f.message)
        if match is not None:
            try:
                return rule(match, f)
            except (AttributeError, IndexError, TypeError, ValueError):
                break  # a rule that needs facts this message came without: the plain fallback below
    what = f"insn {f.slot}" + (f" (`{text}`)" if text else "") if f.slot is not None else "the program"
    return f"{what} is refused: {f.message}", None


def explain_message(message: str, prog_type: str | None = None, *, attach: int = 0,
                    slot: int | None = None) -> tuple[str, str | None]:
    """The reason and hint for a verifier message alone (the kernel's complaint), without a state to read."""
    return _words(_Facts(message, prog_type, attach, slot), None)


def rules() -> tuple[re.Pattern, ...]:
    """The message patterns the table knows (a test checks every message check.py can raise has one)."""
    return tuple(p for p, _ in _RULES)


# ---- the failure slice ----------------------------------------------------------------------------------

def _link(reg: Reg) -> tuple | None:
    """What a branch on `reg` refines along with it: every packet pointer of its kind and id, every
    register of a possibly-NULL pointer's id, every scalar linked by id (copies)."""
    if reg.kind in PACKET_KINDS:
        return ("pkt", reg.kind, reg.id)
    if reg.kind in NULLABLE and reg.id:
        return ("null", reg.id)
    if reg.is_scalar and reg.id:
        return ("scalar", reg.id)
    return None


def _stack_location(state: State | None, depth: int, base: int, off: int) -> tuple | None:
    """("s", frame, 8-byte slot index) of an access through register `base` + `off`, when it is the stack."""
    if state is None:
        return ("s", depth, (STACK_SIZE + off) // SLOT) if base == 10 and -STACK_SIZE <= off < 0 else None
    reg = state.frames[depth].regs[base]
    if reg.kind != "fp" or not reg.var.is_const():
        return None
    at = reg.off + off + reg.var.var_off.value
    if not -STACK_SIZE <= at < 0:
        return None
    return ("s", reg.frame, (STACK_SIZE + at) // SLOT)


def _pointer_arguments(op: Call, state: State | None, depth: int) -> set:
    """The stack slots a call's pointer arguments point at (a helper reads or writes memory there)."""
    if state is None:
        return set()
    found = set()
    for n in effects_of(op).reads:
        loc = _stack_location(state, depth, n, 0)
        if loc is not None:
            found.add(loc)
    return found


def failure_slice(trace: Sequence[int], ops: Sequence[Op | None], states: Sequence[State] | None = None) -> list[int]:
    """The slots of `trace` (a failing path, the failing instruction last) the failure depends on: what
    the failing instruction reads, what defined those values on the path (through copies and fp-relative
    stack spills and fills), and the conditional branches whose operands were among them (or linked to
    them) when reached. In path order. `states` (the state before each trace instruction) lets pointers
    into the stack and linked registers be followed; without them only r10-relative slots are."""
    if not trace:
        return []
    n = len(trace)
    states = states if states is not None and len(states) == n else None
    depths = _depths(trace, ops)

    def depth(i: int) -> int:
        return depths[i]

    last = ops[trace[-1]]
    d = depth(n - 1)
    st = states[-1] if states is not None else None
    wanted: set = {("r", d, r) for r in effects_of(last).reads}
    if isinstance(last, (Load, Atomic)):
        loc = _stack_location(st, d, last.base, last.off)
        if loc is not None:
            wanted.add(loc)
    elif isinstance(last, Call):
        wanted |= _pointer_arguments(last, st, d)
    chosen = [n - 1]
    for i in range(n - 2, -1, -1):
        op = ops[trace[i]]
        st = states[i] if states is not None else None
        d, nd = depth(i), depth(i + 1)
        if isinstance(op, Call) and op.kind == "local" and nd > d:  # into a callee: its r1-r5 are ours
            moved = {w for w in wanted if w[0] == "r" and w[1] == nd}
            if moved:
                wanted -= moved
                wanted |= {("r", d, w[2]) for w in moved if 1 <= w[2] <= 5}
                chosen.append(i)
            continue
        if isinstance(op, Exit) and nd < d:  # back to the caller: its r0 is the callee's
            if ("r", nd, 0) in wanted:
                wanted.discard(("r", nd, 0))
                wanted.add(("r", d, 0))
                chosen.append(i)
            continue
        effects = effects_of(op)
        if isinstance(op, Jump):
            if op.cmp is not None and _refines(op, st, d, wanted):
                chosen.append(i)
                wanted |= {("r", d, r) for r in effects.reads}
            continue
        defined, whole, uses = _defs_uses(op, effects, st, d)
        hit = defined & wanted
        if not hit:
            continue
        chosen.append(i)
        wanted -= hit & whole
        wanted |= uses
    # Each instruction once, where the path first reaches it for the failure (a loop or a recursion may
    # go through one several times).
    return list(dict.fromkeys(trace[i] for i in reversed(chosen)))


def _depths(trace: Sequence[int], ops: Sequence[Op | None]) -> list[int]:
    """The call depth at each instruction of a path, read off the path itself: a local call followed by its
    callee's first instruction goes one frame deeper (a global function, checked on its own, is not
    entered), an exit that the path goes on after returns one."""
    depths, d = [], 0
    for i, slot in enumerate(trace):
        depths.append(d)
        op = ops[slot]
        following = trace[i + 1] if i + 1 < len(trace) else None
        if isinstance(op, Call) and op.kind == "local" and following == op.target:
            d += 1
        elif isinstance(op, Exit) and following is not None and d > 0:
            d -= 1
    return depths


def _refines(op: Jump, state: State | None, d: int, wanted: set) -> bool:
    operands = [op.dst] + ([op.src.n] if isinstance(op.src, RegOperand) else [])
    if any(("r", d, r) in wanted for r in operands):
        return True
    if state is None:
        return False
    links = {_link(state.frames[d].regs[r]) for r in operands} - {None}
    if not links:
        return False
    for w in wanted:
        if w[0] == "r":
            reg = state.frames[w[1]].regs[w[2]] if w[1] < len(state.frames) else None
        else:
            reg = state.frames[w[1]].spilled.get(w[2]) if w[1] < len(state.frames) else None
        if reg is not None and _link(reg) in links:
            return True
    return False


def _packet_pointers(state: State, d: int) -> set:
    """The registers of frame `d` and the stack slots of every frame that hold packet pointers."""
    found = {("r", d, n) for n, reg in enumerate(state.frames[d].regs) if reg.kind in PACKET_KINDS or
             reg.kind == "pkt_end"}
    for depth, frame in enumerate(state.frames):
        found |= {("s", depth, slot) for slot, reg in frame.spilled.items() if reg.kind in PACKET_KINDS or
                  reg.kind == "pkt_end"}
    return found


def _defs_uses(op: Op, effects, state: State | None, d: int) -> tuple[set, set, set]:
    """(locations written, those written whole, locations read for them) of one instruction."""
    regs = {("r", d, r) for r in effects.writes | effects.clobbers}
    uses = {("r", d, r) for r in effects.reads}
    if isinstance(op, Store):
        loc = _stack_location(state, d, op.base, op.off)
        if loc is None:
            return regs, regs, set()
        whole = {loc} if op.size == SLOT and op.off % SLOT == 0 else set()
        value = {("r", d, op.value.n)} if isinstance(op.value, RegOperand) else set()
        return {loc}, whole, value
    if isinstance(op, Atomic):
        loc = _stack_location(state, d, op.base, op.off)
        defined = regs | ({loc} if loc is not None else set())
        return defined, regs, uses - {("r", d, op.base)} | ({loc} if loc is not None else set())
    if isinstance(op, Load):
        loc = _stack_location(state, d, op.base, op.off)
        if loc is not None:  # a fill: the value comes from the slot, the address is a constant
            return regs, regs, {loc}
        return regs, regs, uses
    if isinstance(op, Call):  # a result (and cleared r1-r5) starts here; helpers may write stack memory
        written = _pointer_arguments(op, state, d) if effects.memory_writes else set()
        if op.kind == "helper" and op.target in CHANGES_PACKET_DATA and state is not None:
            regs = regs | _packet_pointers(state, d)  # the packet may move: they all become numbers here
        return regs | written, regs, set()
    if isinstance(op, LegacyLoad):
        return regs, regs, uses
    return regs, regs, uses


# ---- putting it together --------------------------------------------------------------------------------

def _disasm(insn: Insn, op: Op | None, maps: Mapping[int, MapSpec]) -> str:
    """The instruction as the listings print it; helper calls and map loads name what they refer to, as
    the kernel's log does."""
    if isinstance(op, Call) and op.kind == "helper" and helper_name(op.target):
        return f"call {helper_name(op.target)}#{op.target}"
    text = str(insn)
    if isinstance(op, LoadImm64) and op.kind in ("map", "map_value"):
        spec = maps.get(op.value)
        if spec is not None and spec.name:
            text += f"  ; {spec.name}"
    return text


def explain(verdict: Verdict, insns: Sequence[Insn], *, lines: Sequence[LineInfo | None] | None = None,
            prog_type: str, maps: Sequence[MapSpec] | Mapping[int, MapSpec] = (), attach: int = 0,
            prog_flags: int = 0) -> Explanation:
    """A rejecting verdict of `verify_program(insns, prog_type, maps, ...)` explained. `lines`: the source
    line of each instruction (`elf.lines.source_lines`), for "file.c:42"."""
    if verdict.accepted:
        raise ValueError("only a rejection is explained")
    table = dict(maps) if isinstance(maps, Mapping) else dict(enumerate(maps))
    ops = decode_ops(insns)
    starts = slot_starts(insns)
    index_of = {slot: i for i, slot in enumerate(starts)}
    line_of = {slot: where(lines[i]) if lines is not None and i < len(lines) else None for slot, i in index_of.items()}
    text_of = {slot: _disasm(insns[i], ops[slot], table) for slot, i in index_of.items()}

    def step(slot: int, taken: bool | None = None) -> Step:
        return Step(slot, line_of.get(slot), text_of.get(slot, "?"), taken)

    trace = list(verdict.trace)
    states = _replay(insns, prog_type, table, trace, attach, prog_flags)
    slot = verdict.insn
    op = ops[slot] if slot is not None and 0 <= slot < len(ops) else None
    before = states[-1] if states else verdict.final
    sliced = failure_slice(trace, ops, states) if op is not None and trace and trace[-1] == slot else []
    facts = _Facts(verdict.message, prog_type, attach, slot, op, before, trace, states, ops, line_of, sliced)
    reason, hint = _words(facts, text_of.get(slot) if slot is not None else None)
    registers, stack = _relevant_state(op, before)
    path = []
    for branch, went in verdict.path:
        branch_op = ops[branch] if 0 <= branch < len(ops) else None
        taken = went == branch_op.target if isinstance(branch_op, (Jump, MayGoto)) else None
        path.append(step(branch, taken))
    log = None
    if states is not None:
        log = [(step(s), state.text()) for s, state in zip(trace, states)]
    return Explanation(slot, line_of.get(slot) if slot is not None else None, verdict.message, reason, hint,
                       registers, stack, verdict.state, path, [step(s) for s in sliced], log)


def _replay(insns, prog_type, maps, trace, attach, prog_flags) -> list[State] | None:
    """The state before each instruction of the failing path, or None when the path cannot be replayed
    (too long; or one that starts in a global function, which `trace_states` does not enter from its own
    state yet)."""
    if not trace or trace[0] != 0 or len(trace) > REPLAY_LIMIT:
        return None
    try:
        replayed = trace_states(insns, prog_type, maps, trace, attach=attach, prog_flags=prog_flags)
    except (ValueError, BpforgeError):  # the replay took another way than the walk did: no states, only words
        return None
    if len(replayed) != len(trace):
        return None
    return [state for _, state in replayed]


def _relevant_state(op: Op | None, state: State | None) -> tuple[dict[str, str], dict[str, str]]:
    """The registers `op` reads, as the log prints them, and the stack slots it reads or is pointed at."""
    if op is None or state is None:
        return {}, {}
    regs = state.regs
    reads = sorted(effects_of(op).reads)
    registers = {f"r{n}": describe(regs[n]) for n in reads}
    offsets = set()
    for access in effects_of(op).stack_reads + effects_of(op).stack_writes:
        offsets.update(access.slots)
    for n in reads:
        reg = regs[n]
        if reg.kind == "fp" and reg.var.is_const() and reg.frame == len(state.frames) - 1:
            at = reg.off + reg.var.var_off.value + (getattr(op, "off", 0) if isinstance(op, (Load, Store, Atomic))
                                                     and getattr(op, "base", None) == n else 0)
            offsets.add(at - at % SLOT)
    logged = parse_state(state.frame.stack_text())
    stack = {f"fp{off}": logged[f"fp{off}"] for off in sorted(offsets, reverse=True) if f"fp{off}" in logged}
    return registers, stack


__all__ = ["Explanation", "REPLAY_LIMIT", "Step", "explain", "explain_message", "failure_slice", "rules"]
