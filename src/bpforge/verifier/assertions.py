"""The safety conditions each instruction needs, as data (PREVAIL's assertions), and which of them a
verifier message refutes.

`assertions_of(op, slot)` reads the conditions off the shape of a decoded op (`isa.ops`): the registers it
reads are initialised, r10 is not written, a memory access goes through a pointer it may use and stays
inside that pointer's region, a constant divisor is not zero, pointer arithmetic is of an allowed kind, a
helper is called with the argument types its signature names (`isa.helpers.HELPER_SIGNATURES`), an exit
returns what the program type may return (`isa.progtypes.return_range`), a jump lands on an instruction.
Given the registers before the instruction (`regs`, e.g. from a state the verifier saw there), the words
name the region the base pointer is in and its proven bounds.

There is no second copy of the rules here: whether an assertion holds is what the verifier's walk
(`check.VerifierMachine`) finds. An instruction whose step raised `Rejected(message)` refutes the assertion
`classify(message)` names (`refuted(assertions, message)` picks it among the instruction's); every
assertion of an instruction that every path passed is proven.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..isa.helpers import HELPER_SIGNATURES, helper_name
from ..isa.ops import (
    AddrSpaceCast, Alu, Atomic, Call, Exit, Imm, Jump, LegacyLoad, Load, LoadImm64, MayGoto, Op, Reg as RegOperand,
    Store, Unary,
)
from ..isa.progtypes import return_range
from .regs import NULLABLE, Reg

# ---- kinds -------------------------------------------------------------------------------------------------

INITIALISED = "initialised"  # a register read holds a value
FRAME_POINTER = "frame_pointer"  # r10 is not written
DIVISOR = "divisor"  # a constant divisor is not zero
SHIFT = "shift"  # a constant shift amount is less than the operation's width
POINTER_ARITHMETIC = "pointer_arithmetic"  # arithmetic on a pointer is of a kind the kernel allows
POINTER = "pointer"  # a memory access goes through a pointer it may read or write through
NOT_NULL = "not_null"  # ... which is not a possibly-NULL one
IN_BOUNDS = "in_bounds"  # ... and stays inside the region's proven bounds
ALIGNED = "aligned"  # ... aligned where the kernel requires it
HELPER = "helper"  # the helper exists and the program type may call it
HELPER_ARGUMENT = "helper_argument"  # an argument is of the type and size the helper's signature names
RETURN_VALUE = "return_value"  # exit: r0 is what the program type may return
JUMP_TARGET = "jump_target"  # control lands on an instruction of its function, never past its end
TERMINATES = "terminates"  # a loop ends; the program stays within the kernel's complexity limits
CALL_DEPTH = "call_depth"  # bpf2bpf calls stay within 8 frames and 512 stack bytes together
MAP_REFERENCE = "map_reference"  # an lddw of a map names one of the program's maps
LEGACY_LOAD = "legacy_load"  # LD_ABS/LD_IND: the program type allows them and r6 holds the skb
SUPPORTED = "supported"  # an instruction the kernel takes at all (callx is not)
REFERENCE = "reference"  # acquired references (sockets, ring buffer records) are released, once, before exit
OTHER = "other"  # a message no kind is known for (a test keeps this empty for our verifier's messages)

KINDS = (INITIALISED, FRAME_POINTER, DIVISOR, SHIFT, POINTER_ARITHMETIC, POINTER, NOT_NULL, IN_BOUNDS, ALIGNED, HELPER,
         HELPER_ARGUMENT, RETURN_VALUE, JUMP_TARGET, TERMINATES, CALL_DEPTH, MAP_REFERENCE, LEGACY_LOAD, SUPPORTED,
         REFERENCE)

# Statuses an assertion gets from a walk.
PROVEN, REFUTED, UNKNOWN, UNREACHED = "proven", "refuted", "unknown", "unreached"


@dataclass(frozen=True, slots=True)
class Assertion:
    """One condition instruction `slot` needs: its `kind` (one of `KINDS`), what it is about (`subject`: a
    register "r3", a helper name, a jump target "insn 12", ...) and the condition in plain words."""

    slot: int
    kind: str
    subject: str
    text: str

    def __str__(self) -> str:
        return f"insn {self.slot}: {self.text}"


# ---- reading the conditions off an op ---------------------------------------------------------------------

def assertions_of(op: Op, slot: int, *, prog_type: str | None = None, attach: int = 0,
                  regs: Sequence[Reg] | None = None) -> tuple[Assertion, ...]:
    """The conditions `op` (at `slot`) needs, in the order the verifier checks them. `prog_type` names
    the return range in an exit's words; `regs` (the registers before the instruction, as a verifier
    state holds them) name the region a memory access's base points into."""
    out: list[Assertion] = []

    def need(kind: str, subject: str, text: str) -> None:
        out.append(Assertion(slot, kind, subject, text))

    def reads(*numbers: int | None) -> None:  # (r10 always holds the frame pointer)
        for n in dict.fromkeys(n for n in numbers if n is not None and n != 10):
            need(INITIALISED, f"r{n}", f"r{n} is initialised")

    def writes(n: int) -> None:
        if n == 10:
            need(FRAME_POINTER, "r10", "r10 (the frame pointer) is not written")

    kind = op.__class__
    if kind is Alu:
        src = op.src.n if op.src.__class__ is RegOperand else None
        moves = op.op in ("mov", "movsx")
        reads(src, None if moves else op.dst)
        if op.op in ("div", "mod", "sdiv", "smod") and op.src.__class__ is Imm:
            divisor = _signed32(op.src.value)
            need(DIVISOR, f"imm {divisor}", f"the constant divisor {divisor} is not zero")
        if op.op in ("lsh", "rsh", "arsh") and op.src.__class__ is Imm:
            amount = _signed32(op.src.value)
            need(SHIFT, f"imm {amount}", f"the constant shift amount {amount} lies in [0, {op.width})")
        if not moves:
            operand = f"r{src}" if src is not None else str(_signed32(op.src.value))
            need(POINTER_ARITHMETIC, f"r{op.dst}",
                 f"if r{op.dst} or {operand} is a pointer, {op.width}-bit {op.op} on it is arithmetic the kernel "
                 "allows (a bounded scalar added to or subtracted from a pointer that may move, in 64 bits)")
        writes(op.dst)
    elif kind is Unary:
        reads(op.dst)
        writes(op.dst)
    elif kind is AddrSpaceCast:
        reads(op.src)
        writes(op.dst)
    elif kind is Load:
        reads(op.base)
        _memory(need, op.base, op.off, op.size, "read", regs, prog_type, atomic=False)
        writes(op.dst)
    elif kind is Store:
        reads(op.base, op.value.n if op.value.__class__ is RegOperand else None)
        _memory(need, op.base, op.off, op.size, "write", regs, prog_type, atomic=False)
    elif kind is Atomic:
        reads(op.base, op.src, 0 if op.op == "cmpxchg" else None)
        _memory(need, op.base, op.off, op.size, "read and write", regs, prog_type, atomic=True)
        if op.fetch or op.op in ("xchg", "cmpxchg"):
            writes(op.src)
    elif kind is Jump:
        if op.cmp is not None:
            reads(op.dst, op.src.n if op.src.__class__ is RegOperand else None)
        _target(need, slot, op.target)
    elif kind is MayGoto:
        _target(need, slot, op.target)
    elif kind is Call:
        _call(need, reads, op, slot, regs, prog_type)
    elif kind is Exit:
        reads(0)
        _exit(need, prog_type, attach)
    elif kind is LoadImm64:
        if op.kind in ("map", "map_value"):
            need(MAP_REFERENCE, f"map {op.value}", f"map reference {op.value} names one of the program's maps"
                 + (f", and offset {op.offset} lies inside its value" if op.kind == "map_value" else ""))
        elif op.kind == "func":
            need(JUMP_TARGET, f"insn {op.value}", f"insn {op.value}, whose address is taken, starts a function")
            need(SUPPORTED, f"insn {op.value}", "the program carries BTF func_info, which gives a callback its "
                 "prototype")
        writes(op.dst)
    elif kind is LegacyLoad:
        reads(op.src)
        need(LEGACY_LOAD, "r6", f"{prog_type or 'the'} program type allows LD_ABS/LD_IND, and r6 holds the context "
             "(the skb) they read from")
    else:
        raise TypeError(f"{op!r} is not an op of isa.ops")
    return tuple(out)


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


def _target(need, slot: int, target: int) -> None:
    need(JUMP_TARGET, f"insn {target}", f"the jump to insn {target} lands on an instruction of its function "
         "(not inside an lddw, not past the end)")
    if target <= slot:
        need(TERMINATES, f"insn {target}", f"the loop back to insn {target} ends: no state repeats on a path, and "
             "the walk stays within the kernel's 1M-instruction limit")


_REGIONS = {
    "pkt": "packet access {span} of {base} is within the range checked against data_end",
    "pkt_meta": "packet metadata access {span} of {base} is within the range checked against data",
    "fp": "stack access {span} of {base} lies within the 512-byte frame (a spilled pointer is filled and "
          "spilled only whole)",
    "map_value": "map value access {span} of {base} lies within {value}",
    "ctx": "context access {span} of {base} is a field {who} may {verb}",
    "flow_keys": "flow keys access {span} of {base} lies within struct bpf_flow_keys",
    "mem": "memory access {span} of {base} lies within the {size} bytes it points to",
}


def _memory(need, base: int, off: int, size: int, verb: str, regs: Sequence[Reg] | None, prog_type: str | None,
            *, atomic: bool) -> None:
    b = f"r{base}"
    reg = regs[base] if regs is not None else None
    region = NULLABLE.get(reg.kind, reg.kind) if reg is not None else None
    lo = off + (reg.off if reg is not None and reg.is_pointer else 0)
    if reg is not None and reg.is_pointer and not (reg.var.is_const() and reg.var.var_off.value == 0):
        span = f"[{lo}, {lo + size}) past its variable offset (max {reg.var.umax})"
    else:
        span = f"[{lo}, {lo + size})"
    through = "read through" if verb == "read" else "write through" if verb == "write" else "update atomically"
    if atomic:
        need(POINTER, b, f"{b} points to the stack or a map value, where an atomic update may go")
    elif reg is not None and reg.is_pointer:
        need(POINTER, b, f"{b} ({reg.kind}) is a pointer the program may {through}")
    else:
        need(POINTER, b, f"{b} is a pointer the program may {through}")
    if base != 10:
        need(NOT_NULL, b, f"{b} is not a possibly-NULL pointer (it was compared with 0 first)")
    template = _REGIONS.get(region or "")
    if template is None:
        need(IN_BOUNDS, b, f"access [{off}, {off + size}) of {b} lies within the proven bounds of what it points "
             "to (the packet range checked against data_end, the stack frame, the map value, a context field "
             "the program type allows)")
    else:
        value = f"the {reg.map.value_size}-byte value of map {reg.map.name}" if region == "map_value" and \
            reg.map is not None else "the map's value"
        need(IN_BOUNDS, b, template.format(span=span, base=b, value=value, size=getattr(reg, "size", 0),
                                           who=f"{prog_type} programs" if prog_type else "programs of this type",
                                           verb="write" if verb == "write" else "read"))
    need(ALIGNED, b, f"access [{off}, {off + size}) of {b} is aligned as the kernel requires (to its size on the "
         "stack; in the packet too under strict alignment)")


_ARGUMENT_WORDS = {
    "ptr_to_ctx": "is the context pointer, unmoved",
    "const_map_ptr": "is a map pointer (an lddw of a map)",
    "ptr_to_map_key": "points to {key} readable bytes (the map's key)",
    "ptr_to_map_value": "points to {value} readable bytes (the map's value)",
    "ptr_to_uninit_map_value": "points to {value} writable bytes (room for the map's value)",
    "ptr_to_mem": "points to memory of the size in the next argument, readable and writable",
    "ptr_to_mem_readonly": "points to readable memory of the size in the next argument",
    "ptr_to_mem_readonly_or_null": "points to readable memory of the size in the next argument, or is NULL "
                                   "with size 0",
    "ptr_to_uninit_mem": "points to writable memory of the size in the next argument",
    "const_size": "is a size known to be bounded, and not zero",
    "const_size_or_zero": "is a size known to be bounded",
}


def _call(need, reads, op: Call, slot: int, regs: Sequence[Reg] | None, prog_type: str | None) -> None:
    if op.kind == "helper":
        name = helper_name(op.target) or f"unknown#{op.target}"
        need(HELPER, name, f"{name} (helper {op.target}) exists and "
             f"{f'{prog_type} programs' if prog_type else 'programs of this type'} may call it")
        sig = HELPER_SIGNATURES.get(op.target)
        if sig is None:
            return
        spec = regs[1].map if regs is not None and regs[1].kind == "map_ptr" else None
        sizes = {"key": spec.key_size if spec else "key_size", "value": spec.value_size if spec else "value_size"}
        for i, arg in enumerate(sig.args, start=1):
            reads(i)
            if arg == "anything":
                continue
            words = _ARGUMENT_WORDS.get(arg, f"is of the helper's argument kind {arg}").format(**sizes)
            need(HELPER_ARGUMENT, f"r{i}", f"r{i}, argument {i} of {name}, {words}")
        if name == "bpf_tail_call":
            need(REFERENCE, name, "no acquired reference is held across the tail call")
        elif any(arg in _RELEASING for arg in sig.args):
            need(REFERENCE, name, f"the pointer {name} releases is one the program holds a reference to")
    elif op.kind == "local":
        need(JUMP_TARGET, f"insn {op.target}", f"the call to insn {op.target} goes to the start of a function")
        need(CALL_DEPTH, f"insn {op.target}", f"the call to insn {op.target} keeps the call stack within 8 frames "
             "and 512 stack bytes together")
    elif op.kind == "indirect":
        reads(op.target)
        need(SUPPORTED, "callx", "the instruction is one the kernel takes (it refuses callx)")
    else:
        need(SUPPORTED, f"kfunc {op.target}", f"kfunc {op.target} is one the program may call")


_RELEASING = frozenset({"ptr_to_ringbuf_mem", "ptr_to_sock_common", "ptr_to_btf_id_sock_common"})


def _exit(need, prog_type: str | None, attach: int) -> None:
    allowed = return_range(prog_type, attach) if prog_type else None
    if allowed is not None:
        lo, hi = allowed
        text = f"r0 is a number known to lie in [{lo}, {hi}], what a {prog_type} program may return"
    else:
        text = "r0 is a value the program type may return (from a subprogram: not a pointer into a stack)"
    need(RETURN_VALUE, "r0", text)
    need(REFERENCE, "references", "every reference the program acquired (a socket, a ring buffer record) is "
         "released before the program ends")


# ---- which assertion a message refutes -------------------------------------------------------------------

# The verifier's messages (the kernel's words, as check.py raises them) -> the kind they are about, first
# match wins. Order matters where wordings overlap: a possibly-NULL base before other bad bases, a helper's
# size argument ("unsigned or 'var &= const'") apart from a memory offset ("unsigned index").
_CLASSES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), k) for p, k in (
    (r"!read_ok", INITIALISED),
    (r"^frame pointer is read only", FRAME_POINTER),
    (r"^div by zero", DIVISOR),
    (r"^invalid shift", SHIFT),
    (r"invalid mem access '\w+_or_null'", NOT_NULL),
    (r"^Unreleased reference|would lead to reference leak|must be referenced when passed to release", REFERENCE),
    (r"caller passes invalid args|type=\S+ expected=|invalid map_ptr to access|either use unsigned or 'var|"
     r"unbounded memory access, use 'var|zero-sized read|invalid indirect access to stack|expects pointer to ctx|"
     r"is not a known constant|^cannot pass map_type|zero offset when passed to release", HELPER_ARGUMENT),
    (r"pointer arithmetic|pointer \S+ pointer prohibited|^math between|makes \w+ pointer be out of bounds|"
     r"tried to subtract pointer|subtraction from stack pointer|bitwise operator \S+ on pointer", POINTER_ARITHMETIC),
    (r"invalid mem access|^BPF_ATOMIC stores into|^BPF_ST stores into|^cannot write into packet|"
     r"^write into map forbidden", POINTER),
    (r"^misaligned", ALIGNED),
    (r"^invalid access to (packet|map value|memory|flow keys)|^invalid [\w -]*stack R\d+|"
     r"^invalid size of register (fill|spill)|min value is negative, either use unsigned index|"
     r"unbounded memory access, make sure|^invalid bpf_context access|^variable ctx access|^invalid stack off=",
     IN_BOUNDS),
    (r"^At (program|subprogram) exit|^At callback return|^cannot return stack pointer|^R0 not a scalar value|"
     r"^R0 leaks addr as return value", RETURN_VALUE),
    (r"leaks addr into map", POINTER),
    (r"^the call stack of \d+ frames is too deep|^combined stack size", CALL_DEPTH),
    (r"^invalid func unknown|cannot use helper|^unknown func", HELPER),
    (r"^infinite loop detected|^BPF program is too large|jumps is too complex|^back-edge", TERMINATES),
    (r"^invalid insn idx|^jump out of range|^jump into the middle|^last insn is not an exit or jmp|"
     r"^unreachable insn|^call to invalid destination|^function entry|^empty program", JUMP_TARGET),
    (r"is not pointing to valid bpf_map", MAP_REFERENCE),
    (r"BPF_LD_\[ABS\|IND\]|LD_ABS\|IND", LEGACY_LOAD),
    (r"^unknown opcode|^missing btf func_info", SUPPORTED),
))
_REGISTER = re.compile(r"\bR(\d+)\b")
# A helper's memory argument is checked as an access through it: those messages, raised at a call, are about
# the argument.
_ACCESS_KINDS = frozenset({POINTER, NOT_NULL, IN_BOUNDS, ALIGNED})


def classify(message: str) -> str:
    """The assertion kind a verifier message is about (`OTHER` when none is known)."""
    for pattern, kind in _CLASSES:
        if pattern.search(message):
            return kind
    return OTHER


def refuted(assertions: Sequence[Assertion], message: str, slot: int) -> Assertion:
    """The assertion of instruction `slot` (among its `assertions`) that `message` refutes: the one of the
    message's kind, about the register the message names where there are several. A message about
    something no assertion of the instruction states (the program's complexity, say) gets an assertion of
    its own, in the message's words."""
    kind = classify(message)
    named = _REGISTER.search(message)
    subject = f"r{named.group(1)}" if named else ""
    mine = [a for a in assertions if a.slot == slot]
    candidates = [a for a in mine if a.kind == kind]
    if not candidates and kind in _ACCESS_KINDS:
        candidates = [a for a in mine if a.kind == HELPER_ARGUMENT]
    if candidates:
        return next((a for a in candidates if a.subject == subject), candidates[0])
    return Assertion(slot, kind, subject, message)


__all__ = ["ALIGNED", "Assertion", "CALL_DEPTH", "DIVISOR", "FRAME_POINTER", "HELPER", "HELPER_ARGUMENT", "INITIALISED",
           "IN_BOUNDS", "JUMP_TARGET", "KINDS", "LEGACY_LOAD", "MAP_REFERENCE", "NOT_NULL", "OTHER", "POINTER",
           "POINTER_ARITHMETIC", "PROVEN", "REFERENCE", "REFUTED", "RETURN_VALUE", "SHIFT", "SUPPORTED", "TERMINATES",
           "UNKNOWN", "UNREACHED", "assertions_of", "classify", "refuted"]
