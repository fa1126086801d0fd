"""The verifier's walk: every path of the program, instruction by instruction, as the kernel's do_check.

`verify_program(insns, prog_type, maps)` explores the program from its first instruction with the state
`state.entry_state` gives, through `isa.semantics.step` on `VerifierMachine` — the abstract instance of
the one semantics: its values are `Reg`s, its ALU is the kernel's transfer functions (`scalar.alu` and
pointer arithmetic as adjust_ptr_min_max_vals), its memory accesses are check_mem_access, its branches
refine both sides (`branch.refine`, null checks, packet ranges) and push the side it does not follow.
Paths meet at prune points, where a state already proven safe that covers the current one ends the path
(the kernel's is_state_visited, with the registers dead there ignored); a state met again on its own path
unchanged is an infinite loop.

Scalars a path relied on become precise in the states it kept (precision.py); global functions are
checked once, from their BTF prototype (functions.py); references (ring buffer records, sockets) must be
given back on every path before the program exits.

What the kernel checks and this walk does not model yet raises `Unsupported` (a verdict of "unknown",
never an accept): kfuncs, BTF-typed pointers, dynptrs and iterators, spin locks, socket field reads,
callbacks (bpf_loop, for_each_map_elem, timers), variable-offset stack accesses, arena pointers, and helpers
without a signature in the helper table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..analysis import liveness
from ..analysis.cfg import CfgError, cfg_of_ops
from ..elf.maprefs import resolve_map_relocations
from ..errors import BpforgeError
from ..isa import FORMS, Insn
from ..isa.ctx_access import ctx_access, known_types
from ..isa.helper_sets import helper_allowed
from ..isa.helpers import CHANGES_PACKET_DATA, HELPER_IDS, HELPER_SIGNATURES, helper_name
from ..isa.maptypes import BPF_F_RDONLY_PROG, MAP_IN_MAP_TYPES, MapSpec
from ..isa.numbers import M64, U32_MAX, s32, s64
from ..isa.ops import Atomic, Call, Imm, Jump, MayGoto, Reg as RegOperand, Store, decode_ops, following
from ..isa.progtypes import return_range
from ..isa.semantics import NEGATED, Condition, step
from .branch import branch_taken, refine
from .functions import GlobalFunction, global_functions
from .precision import Wanted, backtrack, precise_parts
from .regs import MEMORY_KINDS, NOT_INIT, NULLABLE, PACKET_KINDS, SOCKET_KINDS, Reg, known, scalar, unknown
from .scalar import S32_MAX, S32_MIN, Scalar, alu as scalar_alu
from .tnum import Tnum
from .state import INVALID, MISC, SLOT, SPILL, STACK_SIZE, ZERO, Frame, State, entry_state

COMPLEXITY_LIMIT = 1_000_000  # BPF_COMPLEXITY_LIMIT_INSNS
JUMP_SEQUENCE_LIMIT = 8192  # BPF_COMPLEXITY_LIMIT_JMP_SEQ: paths waiting to be explored
MAX_CALL_FRAMES = 8
MAX_PACKET_OFF = 0xFFFF
BPF_MAX_VAR_OFF = 1 << 29
# The operators as the verifier log spells them: the assembler's spelling in the form table ("{rd} += {rs}").
_ALU_SYMBOLS = {f.op: f.syntax.split()[1] for f in FORMS if f.kind == "alu" and f.width == 64 and f.source == "reg"}
# may_access_direct_pkt_data: the types that may write into the packet they read directly.
_PACKET_WRITERS = frozenset({"xdp", "sched_cls", "sched_act", "lwt_xmit", "sk_skb", "sk_msg", "lwt_seg6local"})
_LEGACY_LOADERS = frozenset({"socket_filter", "sched_cls", "sched_act"})
_UNKNOWN = object()  # a condition the abstract machine cannot decide
_MEMORY_ARGUMENTS = frozenset({"fp", "pkt", "pkt_meta", "map_value", "mem", "ringbuf_mem"})
# Helpers that hand the program a reference it must give back (is_acquire_function), those that take it back
# (OBJ_RELEASE arguments), and those whose pointer result is a view of their argument and shares its
# reference (is_ptr_cast_function).
_ACQUIRE = frozenset({"bpf_sk_lookup_tcp", "bpf_sk_lookup_udp", "bpf_skc_lookup_tcp", "bpf_ringbuf_reserve"})
_RELEASE = frozenset({"bpf_sk_release", "bpf_ringbuf_submit", "bpf_ringbuf_discard"})
_CASTS = frozenset({"bpf_sk_fullsock", "bpf_tcp_sock"})
_RINGBUF_FUNCS = frozenset({"bpf_ringbuf_reserve", "bpf_ringbuf_output", "bpf_ringbuf_query"})
# reg_not_null: the pointers a comparison with 0 is decided for.
_NEVER_NULL = frozenset({"map_value", "map_ptr", "mem", "ringbuf_mem", "sock", "sock_common", "tcp_sock"})
# Helpers that call back into the program, with the callback's return range (set_loop_callback_state).
_CALLBACKS = {"bpf_loop": (0, 1)}
CALLBACK_HELPERS = frozenset(HELPER_IDS[name] for name in _CALLBACKS)
BPF_MAP_TYPE_RINGBUF = 27
_SOCKET_RESULTS = {"ptr_to_socket_or_null": "sock_or_null", "ptr_to_sock_common_or_null": "sock_common_or_null",
                   "ptr_to_tcp_sock_or_null": "tcp_sock_or_null"}
_EXPECTED_MEMORY = "fp, pkt, pkt_meta, map_key, map_value, mem, ringbuf_mem, buf, trusted_ptr_"
BPF_F_STRICT_ALIGNMENT = 1
NET_IP_ALIGN = 2  # strict alignment checks packet offsets as the kernel lays packets out: 2 bytes in
ARRAY_MAPS = ("array", "percpu_array")


class Rejected(BpforgeError):
    """The program is unsafe: `message` in the kernel's words, `where.insn` the slot."""


class Unsupported(BpforgeError):
    """The program uses something this verifier does not model yet: no verdict."""


@dataclass
class Verdict:
    """Our verifier's answer: accepted or not, and for a rejection where and why, with the state there and
    the branch decisions of the path that reached it."""

    accepted: bool
    message: str = ""
    insn: int | None = None  # slot of the failing instruction
    state: str = ""
    path: list[tuple[int, int]] = field(default_factory=list)  # (branch slot, where control went)
    trace: list[int] = field(default_factory=list)  # the slots the failing path went through, the failing one last
    final: State | None = field(default=None, repr=False)  # the state at the failing instruction
    processed: int = 0  # instructions processed (the kernel's "processed N insns")
    states: int = 0  # states kept at prune points
    collected: dict[int, list[State]] = field(default_factory=dict, repr=False)  # slot -> the states reaching it


@dataclass
class Limits:
    """What a caller bounds besides the instruction budget: wall time (a `time.monotonic()` deadline),
    a progress callback told the instructions processed so far, the states kept per collected slot."""

    deadline: float | None = None
    progress: "Callable[[int], None] | None" = None
    collect_per_slot: int = 4096

    def tick(self, processed: int) -> None:
        if self.progress is not None:
            self.progress(processed)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Unsupported(f"gave up after {processed} instructions (the time budget ran out)")


# ---- the abstract bit-vector: what step computes with, besides the machine's own ALU --------------------

class VerifierOps:
    """`BitVector` over `Reg`: addresses (base + constant), the arithmetic of atomics, sign-extension of
    loads, legacy-load offsets. Comparisons are undecided (`_UNKNOWN`)."""

    def const(self, value, width):
        return known(value & ((1 << width) - 1))

    def add(self, a, b, width):
        if a.is_pointer and b.is_scalar and b.var.is_const():
            return a.with_(off=a.off + s64(b.var.var_off.value))
        return self._scalar("add", a, b, width)

    def _scalar(self, op, a, b, width):
        if not (a.is_scalar and b.is_scalar):
            return unknown()
        return scalar(scalar_alu(op, width, a.var, b.var))

    def sub(self, a, b, w): return self._scalar("sub", a, b, w)  # noqa: E704
    def mul(self, a, b, w): return self._scalar("mul", a, b, w)  # noqa: E704
    def udiv(self, a, b, w): return self._scalar("div", a, b, w)  # noqa: E704
    def urem(self, a, b, w): return self._scalar("mod", a, b, w)  # noqa: E704
    def sdiv(self, a, b, w): return self._scalar("sdiv", a, b, w)  # noqa: E704
    def srem(self, a, b, w): return self._scalar("smod", a, b, w)  # noqa: E704
    def shl(self, a, b, w): return self._scalar("lsh", a, b, w)  # noqa: E704
    def lshr(self, a, b, w): return self._scalar("rsh", a, b, w)  # noqa: E704
    def ashr(self, a, b, w): return self._scalar("arsh", a, b, w)  # noqa: E704
    def and_(self, a, b, w): return self._scalar("and", a, b, w)  # noqa: E704
    def or_(self, a, b, w): return self._scalar("or", a, b, w)  # noqa: E704
    def xor(self, a, b, w): return self._scalar("xor", a, b, w)  # noqa: E704

    def neg(self, a, w):
        return scalar(scalar_alu("neg", w, a.var)) if a.is_scalar else unknown()

    def zext(self, a, from_width, to_width):
        return a  # the 32-bit operations above already zero-extend, as the kernel's alu32 does

    def trunc(self, a, to_width):
        return a  # the operations read the low half themselves (the kernel's 32-bit bounds)

    def sext(self, a, from_width, to_width):
        return scalar(scalar_alu("movsx", 64, a.var, a.var, ext=from_width)) if a.is_scalar else unknown()

    def ite(self, cond, a, b):
        return a if cond is True else b if cond is False else unknown()

    def cmp(self, op, a, b, width):
        return _UNKNOWN

    def not_(self, cond):
        return _UNKNOWN


VERIFIER_OPS = VerifierOps()


# ---- the walk --------------------------------------------------------------------------------------------

@dataclass(eq=False)
class _Checkpoint:
    """A state kept at a prune point; `branches` counts the paths from it still being explored (0: every
    path through it ended safely, so it may prune)."""

    state: State
    parent: "_Checkpoint | None"
    branches: int = 1
    slot: int = -1
    trace: tuple = ()  # the trace node of the instruction it was kept before (precision.backtrack's landmark)


@dataclass
class _Path:
    slot: int
    state: State
    checkpoint: _Checkpoint | None
    decisions: tuple  # linked list of (from, to) branch decisions: ((from, to), rest) or ()
    trace: tuple = ()  # the instructions processed on the way here, newest first: (slot, rest, frame, note) or ()


class VerifierMachine:
    """The `isa.semantics.Machine` whose values are `Reg`s: one instruction of one path at a time."""

    bv = VERIFIER_OPS

    def __init__(self, walk: "Context") -> None:
        self.walk = walk
        self.state: State = entry_state()
        self.op = None
        self.slot = 0
        self.next = 0
        self.ended = False
        self.forks: list[tuple[int, State]] = []  # (slot, state) of the sides not followed
        # The path so far, for precision tracking: its trace before this instruction, its newest kept state
        # (`fresh`: kept right before this instruction), and what this instruction's trace node will note.
        self.chain: tuple = ()
        self.checkpoint = None
        self.fresh = False
        self.note = None

    def precise(self, *regs: int | None, slot: tuple[int, int] | None = None) -> None:
        """The exact values of these registers of the current frame (and of a spilled stack slot, as
        (frame, slot)) decide something here: the path's kept states must match them exactly."""
        self.walk.mark_precise(self, [n for n in regs if n is not None], slot)

    # ---- registers -------------------------------------------------------------------------------------

    def reg(self, n: int) -> Reg:
        value = self.state.regs[n]
        if value.kind == "not_init":
            raise Rejected(f"R{n} !read_ok")
        return value

    def set_reg(self, n: int, value: Reg) -> None:
        if n == 10:
            raise Rejected("frame pointer is read only")
        self.state.regs[n] = value

    def clobber(self, n: int) -> None:
        self.state.regs[n] = NOT_INIT

    # ---- the ALU: the kernel's transfer functions -------------------------------------------------------

    def alu(self, op, dst, src):
        d = op.dst
        if op.op == "mov":
            return self._move(op, src)
        if op.op == "movsx":
            return scalar(scalar_alu("movsx", op.width, src.var, src.var, ext=op.ext)) if src.is_scalar else unknown()
        if op.op in ("lsh", "rsh", "arsh") and isinstance(op.src, Imm) and not 0 <= s64(op.src.value) < op.width:
            raise Rejected(f"invalid shift {s64(op.src.value)}")
        if op.op in ("div", "mod", "sdiv", "smod") and isinstance(op.src, Imm) and \
                op.src.value & ((1 << op.width) - 1) == 0:
            raise Rejected("div by zero")
        if dst.is_pointer or src.is_pointer:
            return self._pointer_arithmetic(op, d, dst, src)
        return _linked_sum(op, dst, src, scalar(scalar_alu(op.op, op.width, dst.var, src.var)))

    def unary(self, op, dst):
        if dst.is_pointer:  # a privileged loader may turn a pointer into a number this way
            return unknown()
        return scalar(scalar_alu(op.op, op.width, dst.var))

    def _move(self, op, src: Reg) -> Reg:
        if op.width == 32:
            if not src.is_scalar:
                return scalar(Scalar.u32_value())
            moved = scalar(scalar_alu("mov", 32, src.var, src.var))
            if isinstance(op.src, RegOperand) and src.var.umax <= U32_MAX:  # the copy is the same value
                src = self._linked_copy(op.src.n, src)
                moved = moved.with_(id=src.id)
            return moved
        if src.is_scalar and isinstance(op.src, RegOperand):
            src = self._linked_copy(op.src.n, src)
        return src

    def _linked_copy(self, n: int, src: Reg) -> Reg:
        """assign_scalar_id_before_mov, for `rX = rN` and the spill of rN: a copy stays linked to its
        original, so a check on either refines both (sync_linked_regs); a register linked to another by
        a constant loses that link first (a link carries one constant only), the copy sharing a fresh id."""
        if src.linked:
            src = src.with_(id=0, delta=0, linked=0)
        if not src.id and not src.var.is_const():
            src = src.with_(id=self.walk.new_id())
        self.state.regs[n] = src
        return src

    def _pointer_arithmetic(self, op, d: int, dst: Reg, src: Reg) -> Reg:
        """adjust_reg_min_max_vals and adjust_ptr_min_max_vals, in their order, for a privileged loader
        (which may turn pointers into numbers: a difference of pointers is a scalar)."""
        symbol = _ALU_SYMBOLS.get(op.op, op.op)
        if dst.is_pointer and src.is_pointer:
            if op.op == "sub":
                return unknown()
            raise Rejected(f"R{d} pointer {symbol} pointer prohibited")
        ptr, value = (dst, src.var) if dst.is_pointer else (src, dst.var)
        if src.is_scalar:
            self.precise(op.src.n if isinstance(op.src, RegOperand) else None)
        elif dst.is_scalar:
            self.precise(d)
        if op.width == 32:  # 32-bit operations on pointers make meaningless scalars
            if op.op == "sub":
                return unknown()
            raise Rejected(f"R{d} 32-bit pointer arithmetic prohibited")
        if ptr.kind in NULLABLE:
            raise Rejected(f"R{d} pointer arithmetic on {ptr.kind} prohibited, null-check it first")
        constant = value.is_const()
        if ptr.kind in ("pkt_end", "func") or ptr.kind in SOCKET_KINDS or (
                ptr.kind == "map_ptr" and not (constant and value.var_off.value == 0 and op.op == "add")) or (
                ptr.kind == "flow_keys" and not constant):
            raise Rejected(f"R{d} pointer arithmetic on {ptr.kind} prohibited")
        if op.op == "sub" and src.is_pointer:
            raise Rejected(f"R{d} tried to subtract pointer from scalar")
        if op.op == "sub" and ptr.kind == "fp":  # JITs may not support it, the kernel says
            raise Rejected(f"R{d} subtraction from stack pointer prohibited")
        if op.op in ("and", "or", "xor"):
            raise Rejected(f"R{d} bitwise operator {symbol} on pointer prohibited")
        if op.op not in ("add", "sub"):
            raise Rejected(f"R{d} pointer arithmetic with {symbol} operator prohibited")
        if constant:
            delta = s64(value.var_off.value)
            if not -BPF_MAX_VAR_OFF < delta < BPF_MAX_VAR_OFF:
                raise Rejected(f"math between {ptr.kind} pointer and {delta} is not allowed")
            return ptr.with_(off=ptr.off + (delta if op.op == "add" else -delta))
        if value.smin == -(1 << 63):
            raise Rejected(f"math between {ptr.kind} pointer and register with unbounded min value is not allowed")
        if not -BPF_MAX_VAR_OFF < value.smin < BPF_MAX_VAR_OFF:
            raise Rejected(f"value {value.smin} makes {ptr.kind} pointer be out of bounds")
        var = scalar_alu(op.op, 64, ptr.var, value)
        if ptr.kind in PACKET_KINDS:  # a new variable offset: a new packet pointer, nothing proven for it yet
            return ptr.with_(var=var, id=self.walk.new_id(), range=0)
        return ptr.with_(var=var)

    # ---- memory ----------------------------------------------------------------------------------------

    def load(self, addr: Reg, size: int) -> Reg:
        return self._access(addr, size, None)

    def store(self, addr: Reg, size: int, value: Reg, when=None) -> None:
        self._access(addr, size, value)

    def _access(self, addr: Reg, size: int, value: Reg | None) -> Reg | None:
        """check_mem_access. `value` is what a store writes (None: a load)."""
        op = self.op
        b = op.base
        write = value is not None
        if isinstance(op, Atomic) and addr.kind not in ("fp", "map_value") and addr.kind not in MEMORY_KINDS:
            raise Rejected(f"BPF_ATOMIC stores into R{b} {addr.kind} is not allowed")
        kind = addr.kind
        if kind == "fp":
            return self._stack(addr, size, value, b)
        if kind == "ctx":
            return self._ctx(addr, size, value, b)
        if kind in PACKET_KINDS:
            return self._packet(addr, size, write, b)
        if kind == "map_value":
            return self._map_value(addr, size, write, b)
        if kind in MEMORY_KINDS:
            return self._mem(addr, size, write, b)
        if kind in SOCKET_KINDS:
            raise Unsupported(f"reading fields of a {kind} pointer is not modelled yet")
        if kind == "flow_keys":
            if addr.off < 0 or addr.off + size > 56 or not addr.var.is_const():
                raise Rejected(f"invalid access to flow keys off={addr.off} size={size}")
            return unknown() if not write else None
        raise Rejected(f"R{b} invalid mem access '{kind}'")

    def _stack(self, addr: Reg, size: int, value: Reg | None, b: int) -> Reg | None:
        if not addr.var.is_const():
            return self._stack_var_off(addr, size, value, b)
        off = addr.off + s64(addr.var.var_off.value)
        write = value is not None
        if off < -STACK_SIZE or off + size > 0:
            raise Rejected(f"invalid {'write to' if write else 'read from'} stack R{b} off={off} size={size}")
        if off % size:
            raise Rejected(f"misaligned stack access off (0x0; 0x0)+{addr.off}+0 size {size}")
        frame = self.state.frames[addr.frame]
        start = STACK_SIZE + off
        self.walk.touch_stack(frame, -off)
        slot = start // SLOT
        self.note = (addr.frame, slot)
        if write:
            self._stack_write(frame, start, size, value, slot)
            return None
        kinds = frame.types[start:start + size]  # uninitialised bytes read as anything (allow_uninit_stack)
        spilled = frame.spilled.get(slot) if frame.types[slot * SLOT] == SPILL else None
        if spilled is not None:  # check_stack_read_fixed_off of a slot a register (or a constant) was spilled to
            if size == SLOT:  # a whole spill's register; a narrow one's bytes with misc ones: any number
                return spilled if all(k == SPILL for k in kinds) else self._loaded_scalar(size)
            if not spilled.is_scalar:
                raise Rejected("invalid size of register fill")
            spill_size = SLOT - len(frame.types[slot * SLOT:(slot + 1) * SLOT].lstrip(bytes([SPILL])))
            if start % SLOT == 0 and size <= spill_size:  # the low bytes of what was spilled (little-endian)
                if _fits(spilled, size):
                    return spilled
                return scalar(_truncated(spilled.var, size))
            if all(k == SPILL for k in kinds) and spilled.var.is_const() and spilled.var.var_off.value == 0:
                return known(0)
        if all(k == ZERO for k in kinds):
            return known(0)
        return self._loaded_scalar(size)

    def _stack_var_off(self, addr: Reg, size: int, value: Reg | None, b: int) -> Reg | None:
        """An access at a stack offset known only within bounds (check_stack_read_var_off and
        check_stack_write_var_off, for a privileged loader): every byte it may touch must lie in the frame;
        a read gives any number (zero if every such byte is zero), a write leaves misc bytes behind and
        erases the registers spilled there."""
        write = value is not None
        what = "write to" if write else "read from"
        var = addr.var
        if var.smax >= BPF_MAX_VAR_OFF or var.smin <= -BPF_MAX_VAR_OFF:
            raise Rejected(f"invalid unbounded variable-offset {what} stack R{b}")
        low, high = var.smin + addr.off, var.smax + addr.off + size  # the bytes [low, high) it may touch
        if low < -STACK_SIZE or high > 0:
            raise Rejected(f"invalid variable-offset {what} stack R{b} var_off={_tnum(var)} off={addr.off} "
                           f"size={size}")
        if not var.var_off.add(Tnum.const(addr.off & (1 << 64) - 1)).is_aligned(size):
            raise Rejected(f"misaligned stack access off {_tnum(var)}+{addr.off}+0 size {size}")
        frame = self.state.frames[addr.frame]
        self.walk.touch_stack(frame, -low)
        first, last = STACK_SIZE + low, STACK_SIZE + high
        if not write:
            if all(k == ZERO for k in frame.types[first:last]):
                return known(0)
            return self._loaded_scalar(size)
        zero = value.is_scalar and value.var.is_const() and value.var.var_off.value == 0
        for i in range(first, last):
            kind, slot = frame.types[i], i // SLOT
            if kind == SPILL:
                spilled = frame.spilled.get(slot, NOT_INIT)
                if zero and spilled.is_scalar and spilled.var.is_const() and spilled.var.var_off.value == 0:
                    continue  # a spilled zero overwritten with zero stays what it was
                frame.spilled[slot] = NOT_INIT  # (its other bytes stay spill bytes of nothing)
            frame.types[i] = ZERO if zero and kind == ZERO else MISC
        return None

    def _stack_write(self, frame: Frame, start: int, size: int, value: Reg, slot: int) -> None:
        """check_stack_write_fixed_off for a privileged loader: a store at the start of a slot of a scalar
        register or of a constant, of any size, spills it (the constant as an imprecise known scalar, so a
        kept state's stored constants match any number, as a register's do); a pointer spills whole; any other
        store leaves misc bytes, or zero bytes when it stores a register known to be 0 (made precise, as that
        zero is now relied on) or the constant 0."""
        frame.forget_spills(start, size)
        source = None if isinstance(self.op, Atomic) else getattr(self.op, "value", None)
        spill = None
        if start % SLOT == 0 and isinstance(source, RegOperand) and (value.is_scalar or size == SLOT):
            spill = value
            if value.is_scalar:  # the spilled copy is linked to the register as a copy is, when it fits
                spill = self._linked_copy(source.n, value) if _fits(value, size) else \
                    value.with_(id=0, delta=0, linked=0)
        elif start % SLOT == 0 and isinstance(source, Imm):
            spill = known(source.value)
        if spill is not None:
            frame.types[start:start + size] = bytes([SPILL]) * size
            frame.spilled[slot] = spill
            return
        if value.is_pointer:
            raise Rejected("invalid size of register spill")
        zero = source is not None and value.is_scalar and value.var.is_const() and value.var.var_off.value == 0
        if zero and isinstance(source, RegOperand):
            self.precise(source.n)
        frame.types[start:start + size] = bytes([ZERO if zero else MISC]) * size

    def _loaded_scalar(self, size: int) -> Reg:
        """mark_reg_unknown + coerce_reg_to_size: any value of `size` bytes, zero-extended."""
        if size == 8:
            return unknown()
        return scalar(Scalar.from_bounds(umax=(1 << 8 * size) - 1))

    def _ctx(self, addr: Reg, size: int, value: Reg | None, b: int) -> Reg | None:
        write = value is not None
        if write and isinstance(self.op, Store) and isinstance(self.op.value, Imm):
            raise Rejected(f"BPF_ST stores into R{b} ctx is not allowed")
        if not (addr.var.is_const() and addr.var.var_off.value == 0):
            raise Rejected(f"variable ctx access var_off={_tnum(addr.var)} off={addr.off} size={size}")
        if self.walk.prog_type not in known_types():
            raise Unsupported(f"the context of {self.walk.prog_type} programs is not modelled yet")
        access = ctx_access(self.walk.prog_type, addr.off, size, write, attach=self.walk.attach)
        if access is None:
            raise Rejected(f"invalid bpf_context access off={addr.off} size={size}")
        if write:
            return None
        if access.yields == "scalar":
            return self._loaded_scalar(size)
        if access.yields in ("sock_common_or_null", "sock_or_null"):
            return Reg(access.yields, id=self.walk.new_id())
        return Reg(access.yields)

    def _packet(self, addr: Reg, size: int, write: bool, b: int) -> Reg | None:
        if write and self.walk.prog_type not in _PACKET_WRITERS:
            raise Rejected("cannot write into packet")
        off = addr.off
        if self.walk.prog_flags & BPF_F_STRICT_ALIGNMENT:
            total = NET_IP_ALIGN + addr.off + addr.var.var_off.value
            if total % size or not addr.var.var_off.is_aligned(size):
                insn_off = getattr(self.op, "off", 0)
                var = addr.var.var_off.value if addr.var.is_const() else _tnum(addr.var)
                raise Rejected(f"misaligned packet access off {NET_IP_ALIGN}+{var}+{addr.off - insn_off}+{insn_off} "
                               f"size {size}")
        if addr.var.smin < 0:
            raise Rejected(f"R{b} min value is negative, either use unsigned index or do a if (index >=0) check.")
        if off < 0 or off + size > addr.range or addr.var.umax + off + size > MAX_PACKET_OFF:
            raise Rejected(f"invalid access to packet, off={off} size={size}, R{b}(id={addr.id},off={addr.off},"
                           f"r={addr.range})")
        return None if write else self._loaded_scalar(size)

    def _map_value(self, addr: Reg, size: int, write: bool, b: int) -> Reg | None:
        spec = addr.map
        if write and spec.flags & BPF_F_RDONLY_PROG:
            raise Rejected("write into map forbidden")
        var = addr.var
        if var.smin + addr.off < 0:
            raise Rejected(f"R{b} min value is negative, either use unsigned index or do a if (index >=0) check.")
        if var.umax >= BPF_MAX_VAR_OFF:
            raise Rejected(f"R{b} unbounded memory access, make sure to bounds check any such access")
        if addr.off + var.umax + size > spec.value_size:
            raise Rejected(f"invalid access to map value, value_size={spec.value_size} off={addr.off + var.umin} "
                           f"size={size}")
        if write:
            return None
        if spec.flags & BPF_F_RDONLY_PROG and spec.initial is not None and var.is_const():
            start = addr.off + var.var_off.value  # a frozen read-only map: the verifier reads the value
            return known(int.from_bytes(spec.initial[start:start + size], "little"))
        return self._loaded_scalar(size)

    def _mem(self, addr: Reg, size: int, write: bool, b: int) -> Reg | None:
        """check_mem_region_access for memory of a known size (a global function's pointer argument)."""
        var = addr.var
        if var.smin + addr.off < 0:
            raise Rejected(f"R{b} min value is negative, either use unsigned index or do a if (index >=0) check.")
        if var.umax >= BPF_MAX_VAR_OFF:
            raise Rejected(f"R{b} unbounded memory access, make sure to bounds check any such access")
        if addr.off + var.umin < 0 or addr.off + var.umax + size > addr.size:
            raise Rejected(f"invalid access to memory, mem_size={addr.size} off={addr.off + var.umin} size={size}")
        return None if write else self._loaded_scalar(size)

    # ---- control ---------------------------------------------------------------------------------------

    def branch(self, cond: Condition | None, target: int) -> None:
        if cond is None:
            self.next = target
            return
        op: Jump = self.op
        self._note_linked(cond)
        taken, fallthrough = self._sides(op, cond)
        if taken is not None and fallthrough is not None:
            self.forks.append((target, taken))
            self.state = fallthrough
        elif taken is not None:
            self.state, self.next = taken, target
        elif fallthrough is not None:
            self.state = fallthrough
        else:  # neither side possible: the path cannot reach here
            self.ended = True

    def _note_linked(self, cond: Condition) -> None:
        """The registers and spilled slots linked to a compared scalar learn from the comparison together,
        so precision wanted for one of them is wanted for all (the kernel's linked registers)."""
        ids = {v.id for v in (cond.lhs, cond.rhs) if v.is_scalar and v.id}
        if not ids:
            return
        linked = []
        for depth, frame in enumerate(self.state.frames):
            linked += [("r", depth, n) for n, r in enumerate(frame.regs) if r.is_scalar and r.id in ids]
            linked += [("s", depth, slot) for slot, r in frame.spilled.items() if r.is_scalar and r.id in ids]
        if len(linked) > 1:
            self.note = ("linked", tuple(linked))

    def _sides(self, op: Jump, cond: Condition) -> tuple[State | None, State | None]:
        """The states of the taken and the fall-through side (None: that side cannot happen)."""
        a, b = cond.lhs, cond.rhs
        src_reg = op.src.n if isinstance(op.src, RegOperand) else None
        if a.is_scalar and b.is_scalar:
            decided = branch_taken(cond.cmp, cond.width, a.var, b.var)
            if decided is not None:  # the values decided the branch: a path that meets this one must agree
                self.precise(op.dst, src_reg)
            if decided is True:
                return self._refined(op, cond.cmp, a, b, src_reg), None
            if decided is False:
                return None, self._refined(op, NEGATED[cond.cmp], a, b, src_reg)
            return (self._refined(op, cond.cmp, a, b, src_reg),
                    self._refined(op, NEGATED[cond.cmp], a, b, src_reg))
        if cond.width == 64 and (a.is_pointer != b.is_pointer) and cond.cmp in ("eq", "ne"):
            ptr, other, n = (a, b, op.dst) if a.is_pointer else (b, a, src_reg)
            if other.var.is_const() and other.var.var_off.value == 0:
                return self._null_check(cond.cmp, ptr, n)
        if a.is_pointer and b.is_pointer and cond.width == 64:
            return self._packet_compare(cond.cmp, a, b)
        return self.state.copy(), self.state.copy()

    def _refined(self, op: Jump, cmp: str, a: Reg, b: Reg, src_reg: int | None) -> State | None:
        same = src_reg == op.dst
        refined = refine(cmp, op.width, a.var, b.var, same=same)
        if refined is None:
            return None
        state = self.state.copy()
        for value, new, n in ((a, refined[0], op.dst), (b, refined[1], src_reg)):
            if n is None:
                continue
            updated = value.with_(var=new)
            state.regs[n] = updated
            if value.id:  # every copy of it learns the same, and what is linked to it by a constant (sync_linked_regs)
                state.replace_all(lambda r, i=value.id: r.is_scalar and r.id == i, lambda r, u=updated: _synced(r, u))
        return state

    def _null_check(self, cmp: str, ptr: Reg, n: int) -> tuple[State | None, State | None]:
        """`ptr == 0` / `ptr != 0` for a pointer: decided for one that cannot be NULL (reg_not_null), both
        sides unrefined for other pointers (the context, the stack, the packet), else both sides with the NULL
        side making every register of its id the scalar 0 (mark_ptr_or_null_regs)."""
        if ptr.kind in _NEVER_NULL:
            never_null = self.state.copy()
            return (None, never_null) if cmp == "eq" else (never_null, None)
        if ptr.kind not in NULLABLE:
            return self.state.copy(), self.state.copy()
        null, valid = self.state.copy(), self.state.copy()
        if ptr.ref and ptr.ref == ptr.id:  # NULL: nothing was acquired (release_reference_state)
            null.refs = [r for r in null.refs if r[0] != ptr.ref]
        if ptr.id:
            null.replace_all(lambda r: r.kind == ptr.kind and r.id == ptr.id, lambda r: known(0))
            valid.replace_all(lambda r: r.kind == ptr.kind and r.id == ptr.id,
                              lambda r: r.with_(kind=NULLABLE[r.kind], id=0))
        return (null, valid) if cmp == "eq" else (valid, null)

    def _packet_compare(self, cmp: str, a: Reg, b: Reg) -> tuple[State, State]:
        """try_match_pkt_pointers: a comparison of a packet pointer with the packet's end proves a range on
        one side, for every pointer of the same id."""
        taken, fallthrough = self.state.copy(), self.state.copy()
        end_of = {"pkt": "pkt_end", "pkt_meta": "pkt"}
        # (dst is the data pointer?, which side learns, right-open)
        table = {"ugt": ((fallthrough, False), (taken, True)), "ult": ((taken, True), (fallthrough, False)),
                 "uge": ((fallthrough, True), (taken, False)), "ule": ((taken, False), (fallthrough, True))}
        if cmp not in table:
            return taken, fallthrough
        if a.kind in end_of and b.kind == end_of[a.kind]:
            side, open_ = table[cmp][0]
            _good_packet_pointers(side, a, open_)
        elif b.kind in end_of and a.kind == end_of[b.kind]:
            side, open_ = table[cmp][1]
            _good_packet_pointers(side, b, open_)
        return taken, fallthrough

    def may_goto(self, target: int) -> None:
        self.forks.append((target, self.state.copy()))

    def exit(self) -> None:
        state = self.state
        if len(state.frames) > 1 and state.frame.callback:
            self._callback_return()
            return
        if len(state.frames) > 1:
            r0 = self.reg(0)  # a static function may return a pointer, but not one into any stack
            if r0.kind == "fp":
                raise Rejected("cannot return stack pointer to the caller")
            frame = state.frames.pop()
            caller = state.frame
            caller.regs[0] = r0
            for n in range(1, 6):
                caller.regs[n] = NOT_INIT
            self.next = frame.callsite + 1
            return
        r0 = self.state.regs[0]
        if r0.kind == "not_init":
            raise Rejected("R0 !read_ok")
        if state.refs:  # check_reference_leak
            ref, slot = state.refs[0]
            raise Rejected(f"Unreleased reference id={ref} alloc_insn={slot}")
        if state.frames[0].function != 0:  # a global function checked on its own returns a number
            if not r0.is_scalar:
                raise Rejected(f"At subprogram exit the register R0 is not a scalar value ({r0.kind})")
            self.ended = True
            return
        allowed = return_range(self.walk.prog_type, self.walk.attach)
        if allowed is not None:
            if not r0.is_scalar:
                raise Rejected(f"At program exit the register R0 is not a known value ({r0.kind})")
            self.precise(0)
            lo, hi = allowed
            v = r0.var
            if v.s32_min < lo or v.s32_max > hi:  # the kernel checks the 32-bit value
                raise Rejected(_invalid_scalar("At program exit", r0, lo, hi))
        self.ended = True

    def _callback_return(self) -> None:
        """A callback's exit: its r0 in the helper's range, then control is back at the helper's call,
        which may call it again or return (the kernel verifies callbacks as loops of unknown count)."""
        r0 = self.reg(0)
        if not r0.is_scalar:
            raise Rejected("R0 not a scalar value")
        self.precise(0)
        frame = self.state.frames[-1]
        lo, hi = _CALLBACKS[self.walk.callback_helper(frame.callsite)]
        if r0.var.smin < lo or r0.var.smax > hi:
            raise Rejected(_invalid_scalar("At callback return", r0, lo, hi))
        self.state.frames.pop()
        self.state.frame.callback_depth += 1
        self.next = frame.callsite
        self.walk.widen(self, frame.callsite)

    def call_callback(self, target: int, context: Reg) -> None:
        """push_callback_call: the callback runs on a path of its own, in a frame of its own (r1 the loop
        index, r2 the caller's context argument); this path goes on as if it had not been called."""
        if len(self.state.frames) >= MAX_CALL_FRAMES:
            raise Rejected(f"the call stack of {len(self.state.frames) + 1} frames is too deep !")
        state = self.state.copy()
        regs = [NOT_INIT] * 11
        regs[1], regs[2] = unknown(), context
        regs[10] = Reg("fp", frame=len(state.frames))
        state.frames.append(Frame(regs, callsite=self.slot, function=target, callback=True))
        self.forks.append((target, state))

    # ---- calls -----------------------------------------------------------------------------------------

    def call_local(self, target: int) -> None:
        state = self.state
        signature = self.walk.globals.get(target)
        if signature is not None:
            self.walk.call_global(self, target, signature)
            return
        self.note = "frame"
        if len(state.frames) >= MAX_CALL_FRAMES:
            raise Rejected(f"the call stack of {len(state.frames) + 1} frames is too deep !")
        regs = [NOT_INIT] * 11
        for n in range(1, 6):
            regs[n] = state.regs[n]
        regs[10] = Reg("fp", frame=len(state.frames))
        state.frames.append(Frame(regs, callsite=self.slot, function=target))
        self.next = target

    def call_indirect(self, addr) -> None:
        raise Rejected("unknown opcode 8d")

    def call_kfunc(self, btf_id: int, module: int) -> None:
        raise Unsupported("kfunc calls are not modelled yet")

    def call_helper(self, helper: int) -> None:
        self.walk.helpers.call(self, helper)

    # ---- what the loader resolves ----------------------------------------------------------------------

    def map_handle(self, ref: int) -> Reg:
        return Reg("map_ptr", map=self.walk.map_at(ref))

    def map_value(self, ref: int) -> Reg:
        spec = self.walk.map_at(ref)
        return Reg("map_value", map=spec)

    def function_address(self, slot: int) -> Reg:
        if not self.walk.func_info:  # check_ld_imm: a callback needs its BTF prototype
            raise Rejected("missing btf func_info")
        return Reg("func", target=slot)

    def kernel_object(self, btf_id: int, module: int) -> Reg:
        raise Unsupported("BTF-typed kernel objects (lddw of a BTF id) are not modelled yet")

    def legacy_load(self, size: int, offset: Reg) -> Reg:
        if self.walk.prog_type not in _LEGACY_LOADERS:
            raise Rejected("BPF_LD_[ABS|IND] instructions not allowed for this program type")
        if self.state.refs:
            raise Rejected("BPF_LD_[ABS|IND] cannot be mixed with socket references")
        if self.state.regs[6].kind != "ctx":
            raise Rejected("at the time of BPF_LD_ABS|IND R6 != pointer to skb")
        return self._loaded_scalar(size)

    def addr_space_cast(self, value, dst_as: int, src_as: int):
        raise Unsupported("arena pointers are not modelled yet")


def _invalid_scalar(where: str, reg: Reg, lo: int, hi: int) -> str:
    """verbose_invalid_scalar: a return value outside its range, with the bounds the verifier knew."""
    known_ = [f"smin={reg.var.smin}"] if reg.var.smin > -(1 << 63) else []
    known_ += [f"smax={reg.var.smax}"] if reg.var.smax < (1 << 63) - 1 else []
    return f"{where} the register R0 has {' '.join(known_) or 'unknown scalar value'} should have been in [{lo}, {hi}]"


def forget_packet_pointers(state: State) -> None:
    """clear_all_pkt_pointers: after the packet may have moved, every packet pointer in every frame and
    stack slot becomes a number (a privileged program may keep the value; it may not dereference it)."""
    state.replace_all(lambda r: r.kind in PACKET_KINDS or r.kind == "pkt_end", lambda r: unknown())


def _good_packet_pointers(state: State, reg: Reg, right_open: bool) -> None:
    """find_good_pkt_pointers: every packet pointer of `reg`'s kind and id may read `reg.off` bytes past
    its own offset (one more for a right-open comparison)."""
    if reg.off < 0 or (reg.off == 0 and right_open):
        return
    if reg.var.umax > MAX_PACKET_OFF or reg.var.umax + reg.off > MAX_PACKET_OFF:
        return
    new_range = reg.off + (1 if right_open else 0)
    state.replace_all(lambda r: r.kind == reg.kind and r.id == reg.id,
                      lambda r: r.with_(range=max(r.range, new_range)))


def _tnum(value: Scalar) -> str:
    t = value.var_off
    return f"({t.value:#x}; {t.mask:#x})"


# ---- helper calls ------------------------------------------------------------------------------------------

class _Helpers:
    """check_helper_call for the helpers the helper table types."""

    def __init__(self, walk: "Context") -> None:
        self.walk = walk

    def call(self, m: VerifierMachine, helper: int) -> None:
        name = helper_name(helper)
        if name is None:
            raise Rejected(f"invalid func unknown#{helper}")
        if not helper_allowed(self.walk.prog_type, helper):
            raise Rejected(f"program of this type cannot use helper {name}#{helper}")
        sig = HELPER_SIGNATURES.get(helper)
        if sig is None:
            raise Unsupported(f"{name} has no signature in the helper table yet")
        regs = m.state.regs
        current_map: MapSpec | None = None
        pending_mem: tuple[int, Reg, bool] | None = None  # (arg register, pointer, writes) awaiting its size
        released = inherited = 0  # the reference an argument gives back / a cast result shares
        alloc_size = 0
        callback, context = None, None
        if sig.args and "ptr_to_func" in sig.args and name not in _CALLBACKS:
            raise Unsupported(f"{name}: its callback is not modelled yet")
        if name == "bpf_tail_call" and m.state.refs:
            raise Rejected("tail_call would lead to reference leak")
        for i, kind in enumerate(sig.args, start=1):
            reg = m.reg(i)
            if kind in ("ptr_to_ringbuf_mem", "ptr_to_sock_common", "ptr_to_btf_id_sock_common"):
                allowed = ("ringbuf_mem",) if kind == "ptr_to_ringbuf_mem" else SOCKET_KINDS
                if reg.kind not in allowed:
                    expected = "ringbuf_mem" if kind == "ptr_to_ringbuf_mem" else "sock_common, sock, tcp_sock"
                    raise Rejected(f"R{i} type={reg.kind} expected={expected}")
                if name in _RELEASE:
                    if reg.off or not (reg.var.is_const() and reg.var.var_off.value == 0):
                        raise Rejected(f"R{i} must have zero offset when passed to release func or trusted arg to "
                                       "kfunc")
                    if not reg.ref:
                        raise Rejected(f"R{i} must be referenced when passed to release function")
                    released = reg.ref
                inherited = reg.ref
            elif kind == "ptr_to_func":
                if reg.kind != "func":
                    raise Rejected(f"R{i} type={reg.kind} expected=func")
                callback = reg.target
            elif kind == "ptr_to_stack_or_null":
                if not (reg.kind == "fp" or reg.is_scalar and reg.var.is_const() and reg.var.var_off.value == 0):
                    raise Rejected(f"R{i} type={reg.kind} expected=fp")
                context = reg
            elif kind == "const_alloc_size_or_zero":
                if not (reg.is_scalar and reg.var.is_const()):
                    raise Rejected(f"R{i} is not a known constant'")
                m.precise(i)
                alloc_size = reg.var.var_off.value
            elif kind == "ptr_to_ctx":
                if reg.kind != "ctx" or reg.off:
                    raise Rejected(f"R{i} type={reg.kind} expected=ctx")
            elif kind == "const_map_ptr":
                if reg.kind != "map_ptr":
                    raise Rejected(f"R{i} type={reg.kind} expected=map_ptr")
                current_map = reg.map
                if (name in _RINGBUF_FUNCS) != (current_map.type == BPF_MAP_TYPE_RINGBUF):
                    raise Rejected(f"cannot pass map_type {current_map.type} into func {name}#{helper}")
            elif kind in ("ptr_to_map_key", "ptr_to_map_value", "ptr_to_uninit_map_value"):
                if current_map is None:
                    raise Rejected("invalid map_ptr to access map->key")
                size = current_map.key_size if kind == "ptr_to_map_key" else current_map.value_size
                self.memory(m, i, reg, size, write=kind == "ptr_to_uninit_map_value")
            elif kind in ("ptr_to_mem_readonly", "ptr_to_mem", "ptr_to_uninit_mem",
                          "ptr_to_mem_readonly_or_null"):
                if kind.endswith("_or_null") and reg.is_scalar and reg.var.is_const() and reg.var.var_off.value == 0:
                    pending_mem = (i, reg, False)  # NULL: allowed with a size of 0 only
                    continue
                if reg.kind not in _MEMORY_ARGUMENTS:
                    raise Rejected(f"R{i} type={reg.kind} expected={_EXPECTED_MEMORY}")
                pending_mem = (i, reg, kind == "ptr_to_uninit_mem")
            elif kind in ("const_size", "const_size_or_zero"):
                if not reg.is_scalar:
                    raise Rejected(f"R{i} type={reg.kind} expected=scalar")
                if reg.var.smin < 0:
                    raise Rejected(f"R{i} min value is negative, either use unsigned or 'var &= const'")
                if reg.var.umax >= BPF_MAX_VAR_OFF:
                    raise Rejected(f"R{i} unbounded memory access, use 'var &= const' or 'if (var < const)'")
                if kind == "const_size" and reg.var.umin == 0:
                    raise Rejected(f"R{i} invalid zero-sized read: u64=[{reg.var.umin},{reg.var.umax}]")
                m.precise(i)
                if pending_mem is not None:
                    n, ptr, writes = pending_mem
                    if reg.var.umax:
                        self.memory(m, n, ptr, reg.var.umax, write=writes)
                    pending_mem = None
            elif kind == "anything":
                pass
            else:
                raise Unsupported(f"{name}: argument {i} of kind {kind} is not modelled yet")
        if callback is not None:
            # Another iteration only while fewer have run than r1 allows (the kernel reads r1's bound, so
            # its value must be exact on every path that meets this one).
            m.precise(1)
            if m.state.frame.callback_depth < regs[1].var.umax:
                m.call_callback(callback, context)
            else:
                m.state.frame.callback_depth = 0
        if released:  # release_reference: every copy of the released pointer becomes a number
            m.state.refs = [r for r in m.state.refs if r[0] != released]
            m.state.replace_all(lambda r: r.ref == released, lambda r: unknown())
        result = self._result(sig.ret, current_map, name, alloc_size)
        if result.is_pointer and name in _ACQUIRE:
            ref = self.walk.new_id()
            m.state.refs.append((ref, m.slot))
            result = result.with_(id=ref, ref=ref)
        elif result.is_pointer and name in _CASTS:
            result = result.with_(ref=inherited)
        if result.kind == "map_value_or_null" and current_map.type_name in ARRAY_MAPS and \
                self._constant_key(m, regs[2], current_map) is not None:
            key = self._constant_key(m, regs[2], current_map)
            if key < current_map.max_entries:  # an array element that exists: no NULL to check for
                result = Reg("map_value", map=current_map)
        for n in range(1, 6):
            regs[n] = NOT_INIT
        regs[0] = result
        if helper in CHANGES_PACKET_DATA:
            forget_packet_pointers(m.state)

    @staticmethod
    def _constant_key(m: VerifierMachine, ptr: Reg, spec: MapSpec) -> int | None:
        """The key a stack pointer argument holds, when the verifier knows it (get_constant_map_key): bytes
        all zero, or a spilled register with a known value."""
        if ptr.kind != "fp" or not ptr.var.is_const():
            return None
        start = STACK_SIZE + ptr.off + s64(ptr.var.var_off.value)
        frame = m.state.frames[ptr.frame]
        kinds = frame.types[start:start + spec.key_size]
        if len(kinds) == spec.key_size and all(k == ZERO for k in kinds):
            return 0
        spilled = frame.spilled.get(start // SLOT)
        if start % SLOT == 0 and spilled is not None and spilled.is_scalar and spilled.var.is_const() and \
                all(k == SPILL for k in kinds):
            m.precise(slot=(ptr.frame, start // SLOT))  # the key decides whether NULL is possible
            return spilled.var.var_off.value & ((1 << 8 * spec.key_size) - 1)
        return None

    def _result(self, ret: str, spec: MapSpec | None, name: str, alloc_size: int = 0) -> Reg:
        if ret == "integer":
            return unknown()
        if ret == "void":
            return NOT_INIT
        if ret == "ptr_to_ringbuf_mem_or_null":
            return Reg("ringbuf_mem_or_null", size=alloc_size)
        if ret in _SOCKET_RESULTS:
            return Reg(_SOCKET_RESULTS[ret], id=self.walk.new_id())
        if ret == "ptr_to_map_value_or_null" and spec is not None and spec.type_name in MAP_IN_MAP_TYPES:
            # An outer map's values are maps: the result is a map of the inner template's shape, or NULL.
            if spec.inner is None:
                raise Unsupported(f"{name} on {spec.name}, a map of maps whose inner map is not known")
            return Reg("map_ptr_or_null", map=spec.inner, id=self.walk.new_id())
        if ret == "ptr_to_map_value_or_null":
            return Reg("map_value_or_null", map=spec, id=self.walk.new_id())
        if ret == "ptr_to_map_value":
            return Reg("map_value", map=spec)
        raise Unsupported(f"{name} returns {ret}, which is not modelled yet")

    def memory(self, m: VerifierMachine, n: int, ptr: Reg, size: int, *, write: bool,
               wording: str = "indirect access to") -> None:
        """check_helper_mem_access: `size` bytes at `ptr`, read (initialised) or written by the helper (or
        handed to a global function: the kernel words a stack overrun as a direct read then)."""
        if ptr.kind == "fp":
            if not ptr.var.is_const():
                raise Unsupported("variable-offset stack arguments are not modelled yet")
            off = ptr.off + s64(ptr.var.var_off.value)
            if off < -STACK_SIZE or off + size > 0:
                raise Rejected(f"invalid {wording} stack R{n} off={off} size={size}")
            frame = m.state.frames[ptr.frame]
            start = STACK_SIZE + off
            self.walk.touch_stack(frame, -off)
            if write:
                frame.forget_spills(start, size)
                frame.types[start:start + size] = bytes([MISC]) * size
            return  # (a privileged loader's helpers may read uninitialised stack: allow_uninit_stack)
        if ptr.kind in PACKET_KINDS:
            m._packet(ptr, size, write, n)
            return
        if ptr.kind == "map_value":
            m._map_value(ptr, size, write, n)
            return
        if ptr.kind in MEMORY_KINDS:
            m._mem(ptr, size, write, n)
            return
        raise Rejected(f"R{n} type={ptr.kind} expected={_EXPECTED_MEMORY}")


# ---- exploring every path ------------------------------------------------------------------------------

class Context:
    """What the abstract machine consults besides the state: the program's type and attach type, its
    load flags and maps (by the reference a map lddw holds), fresh ids, and how deep each function's
    frames reach into the stack. A walk of a whole program is one; the window API makes its own."""

    def __init__(self, prog_type: str, maps: Sequence[MapSpec] | Mapping[int, MapSpec] = (), attach: int = 0,
                 prog_flags: int = 0, first_id: int = 0) -> None:
        self.prog_type = prog_type
        self.attach = attach
        self.prog_flags = prog_flags
        self.maps = dict(maps) if isinstance(maps, Mapping) else dict(enumerate(maps))
        self.helpers = _Helpers(self)
        self.depths: dict[int, int] = {}  # function entry slot -> deepest stack byte its frames touched
        self.globals: Mapping[int, GlobalFunction] = {}
        self.func_info = True  # whether the program came with BTF func_info (a raw program does not)
        self._ids = first_id

    def mark_precise(self, machine: "VerifierMachine", regs: list[int], slot: tuple[int, int] | None) -> None:
        """Exact values matter here; only a walk that keeps states for pruning has anything to mark."""

    def call_global(self, machine: "VerifierMachine", target: int, signature: "GlobalFunction") -> None:
        raise Unsupported("calls of global functions are checked by a whole-program walk only")

    def widen(self, machine: "VerifierMachine", slot: int) -> None:
        """A callback is back at its helper's call; only a walk that keeps states has earlier ones."""

    def touch_stack(self, frame: Frame, depth: int) -> None:
        if depth > self.depths.get(frame.function, 0):
            self.depths[frame.function] = depth

    def new_id(self) -> int:
        self._ids += 1
        return self._ids

    def map_at(self, ref: int) -> MapSpec:
        spec = self.maps.get(ref)
        if spec is None:
            raise Rejected(f"fd {ref} is not pointing to valid bpf_map")
        return spec


class _Walk(Context):
    def __init__(self, insns: Sequence[Insn], prog_type: str, maps: Sequence[MapSpec] | Mapping[int, MapSpec],
                 attach: int, prog_flags: int = 0, budget: int = COMPLEXITY_LIMIT + 1, limits: "Limits | None" = None,
                 collect: frozenset[int] = frozenset(), globals_: Mapping[int, GlobalFunction] | None = None,
                 func_info: bool = False) -> None:
        super().__init__(prog_type, maps, attach, prog_flags)
        self.globals = dict(globals_ or {})
        self.func_info = func_info
        self.called: set[int] = set()  # global functions called on some path: each is checked on its own
        self.processed = self.kept = 0
        self.insns = list(insns)
        self.budget = budget
        self.limits = limits or Limits()
        self.collect = collect
        self.collected: dict[int, list[State]] = {slot: [] for slot in collect}
        ops = decode_ops(self.insns)
        self.code = {slot: (op, following(ops, slot)) for slot, op in enumerate(ops) if op is not None}
        self.cfg = cfg_of_ops(ops)
        if self.cfg.unreachable:  # check_cfg: every instruction must be reachable from the first
            first = min(self.cfg.blocks[b].start for b in self.cfg.unreachable)
            raise CfgError(f"unreachable insn {first}", insn=first)
        self.live: dict[int, int] = {}  # slot -> mask of registers live before it (its function's view)
        for fn in self.cfg.functions:
            lv = liveness(self.cfg, fn.index)
            for block in fn.blocks:
                for s, _ in self.cfg.blocks[block].ops:
                    self.live[s] = lv.before_mask(s)
        self.prune_points = self._prune_points()
        self.callback_calls = frozenset(slot for slot, (op, _) in self.code.items() if isinstance(op, Call) and
                                        op.kind == "helper" and op.target in CALLBACK_HELPERS)

    def combined_stack(self) -> str | None:
        """check_max_stack_depth: the frames of the deepest call chain may use 512 bytes together, each
        rounded up to 16 bytes (as for a JITed program)."""
        graph = self.cfg.call_graph
        entries = {f.index: f.entry for f in self.cfg.functions}

        def worst(index: int, seen: tuple) -> tuple[int, int]:  # (bytes, frames) of the deepest chain
            own = -(-self.depths.get(entries[index], 0) // 16) * 16
            deeper = [worst(c, seen + (index,)) for c in graph.get(index, ()) if c not in seen]
            best = max(deeper, default=(0, 0))
            return own + best[0], 1 + best[1]

        total, frames = worst(0, ())
        if total > STACK_SIZE:
            return f"combined stack size of {frames} calls is {total}. Too large"
        return None

    def _prune_points(self) -> frozenset[int]:
        """Where paths may meet: jump targets, the instruction after a conditional jump, call returns."""
        points = set()
        for slot, (op, after) in self.code.items():
            if isinstance(op, Jump):
                points.add(op.target)
                if op.cmp is not None:
                    points.add(after)
            elif isinstance(op, MayGoto):
                points.update((op.target, after))
            elif isinstance(op, Call):
                points.add(after)
                if op.kind == "helper" and op.target in CALLBACK_HELPERS:
                    points.add(slot)  # where a callback's iterations meet
        return frozenset(points)

    def callback_helper(self, slot: int) -> str:
        return helper_name(self.code[slot][0].target)

    def covers(self, old: State, cur: State, slot: int) -> bool:
        return covers(old, cur, self.live.get(slot, ALL_REGISTERS), pruning=True)

    # ---- precision and global functions ------------------------------------------------------------------

    def mark_precise(self, machine: VerifierMachine, regs: list[int], slot: tuple[int, int] | None) -> None:
        wanted = Wanted()
        frame = len(machine.state.frames) - 1
        for n in regs:
            wanted.add_reg(frame, n)
        if slot is not None:
            wanted.add_slot(*slot)
        backtrack(self.code, wanted, machine.chain, machine.checkpoint, machine.fresh)

    def call_global(self, m: VerifierMachine, target: int, signature: GlobalFunction) -> None:
        """A call of a global function: its arguments checked against its prototype (btf_check_subprog_call),
        then r0 any number; the function is checked once on its own, after the program's own function."""
        if signature.unsupported:
            raise Unsupported(f"global function {signature.unsupported}, which is not modelled yet")
        regs = m.state.regs
        problem = None
        for i, arg in enumerate(signature.args, start=1):
            reg = regs[i]
            if arg.kind == "scalar" and not reg.is_scalar:
                problem = f"R{i} is not a scalar"
            elif arg.kind == "ctx" and (reg.kind != "ctx" or reg.off):
                problem = f"arg#{i - 1} expects pointer to ctx"
            elif arg.kind == "mem" and not (reg.is_scalar and reg.var.is_const() and reg.var.var_off.value == 0):
                if reg.is_scalar or reg.kind == "not_init":
                    problem = f"R{i} type={reg.kind} expected=fp, pkt, pkt_meta, map_value, mem"
                else:  # memory of the argument's size, checked as if not NULL (check_mem_reg)
                    ptr = reg.with_(kind=NULLABLE.get(reg.kind, reg.kind))
                    self.helpers.memory(m, i, ptr, arg.size, write=False, wording="read from")
            if problem:
                raise Rejected(f"{problem}; caller passes invalid args into func ('{signature.name}')")
        for n in range(1, 6):
            regs[n] = NOT_INIT
        regs[0] = unknown()
        if self._changes_packet(self.cfg.function_entered_at(target).index):
            forget_packet_pointers(m.state)
        self.called.add(target)

    def _changes_packet(self, function: int, seen: frozenset = frozenset()) -> bool:
        """Whether a function, or one it calls, calls a helper that may move the packet (the kernel's
        changes_pkt_data of a subprogram: a global function's callers lose their packet pointers)."""
        fn = self.cfg.functions[function]
        for b in fn.blocks:
            for _, op in self.cfg.blocks[b].ops:
                if isinstance(op, Call) and op.kind == "helper" and op.target in CHANGES_PACKET_DATA:
                    return True
        return any(self._changes_packet(c, seen | {function}) for c in self.cfg.call_graph.get(function, ())
                   if c not in seen and c != function)

    def widen(self, machine: VerifierMachine, slot: int) -> None:
        """widen_imprecise_scalars: a callback's next iteration starts from the state of the one before it
        (the newest kept state at the helper's call on this path); every number that changed and that
        nothing relied on becomes unknown, so the iterations converge."""
        previous = machine.checkpoint
        while previous is not None and not (previous.slot == slot and previous.branches):
            previous = previous.parent
        if previous is None or len(previous.state.frames) != len(machine.state.frames):
            return
        for old_frame, frame in zip(previous.state.frames, machine.state.frames):
            for n, (old, cur) in enumerate(zip(old_frame.regs, frame.regs)):
                if old.is_scalar and cur.is_scalar and not old.precise and old != cur:
                    frame.regs[n] = unknown()
            for s, cur in list(frame.spilled.items()):
                old = old_frame.spilled.get(s)
                if old is not None and old.is_scalar and cur.is_scalar and not old.precise and old != cur:
                    frame.spilled[s] = unknown()

    def _global_entry(self, entry: int) -> State:
        """btf_prepare_func_args: the state a global function starts from."""
        regs = [NOT_INIT] * 11
        regs[10] = Reg("fp")
        for i, arg in enumerate(self.globals[entry].args, start=1):
            if arg.kind == "ctx":
                regs[i] = Reg("ctx")
            elif arg.kind == "scalar":
                regs[i] = unknown()
            else:
                regs[i] = Reg("mem_or_null", size=arg.size, id=self.new_id())
        return State([Frame(regs, function=entry)])

    # ---- the walk ----------------------------------------------------------------------------------------

    def run(self) -> Verdict:
        """The program's own function, then each global function it (or one checked before) calls."""
        verdict = self._explore(0, entry_state())
        checked: set[int] = set()
        while verdict is None and self.called - checked:
            entry = min(self.called - checked)
            checked.add(entry)
            verdict = self._explore(entry, self._global_entry(entry))
        if verdict is not None:
            return verdict
        too_deep = self.combined_stack()
        if too_deep is not None:
            return Verdict(False, too_deep, None, processed=self.processed, states=self.kept)
        return Verdict(True, processed=self.processed, states=self.kept, collected=self.collected)

    def _explore(self, start: int, entry: State) -> Verdict | None:
        """Every path from `start` in state `entry`: None when all end safely, else the rejection."""
        machine = VerifierMachine(self)
        explored: dict[int, list[_Checkpoint]] = {}
        stack = [_Path(start, entry, None, ())]
        while stack:
            path = stack.pop()
            slot, state, checkpoint, decisions, trace = path.slot, path.state, path.checkpoint, path.decisions, \
                path.trace
            while True:
                fresh = False
                if slot in self.collect:  # before pruning: a pruned state is one a window may start from too
                    self._keep(slot, state)
                if slot in self.prune_points:
                    seen = explored.setdefault(slot, [])
                    old = next((cp for cp in seen if cp.branches == 0 and self.covers(cp.state, state, slot)), None)
                    if old is not None:  # what the old state had precise, this path relied on too
                        backtrack(self.code, precise_parts(old.state, self.live.get(slot, ALL_REGISTERS)), trace,
                                  checkpoint, False)
                        _finish(checkpoint)
                        break
                    loop = next((cp for cp in seen if cp.branches and covers(cp.state, state, exact=True)), None) \
                        if slot in self.callback_calls else None
                    if loop is not None:  # the callback's iterations reached a state already being explored
                        backtrack(self.code, precise_parts(loop.state, ALL_REGISTERS), trace, checkpoint, False)
                        _finish(checkpoint)
                        break
                    if slot not in self.callback_calls and any(cp.branches and _same(cp.state, state) for cp in seen):
                        return self._reject(f"infinite loop detected at insn {slot}", slot, state, decisions,
                                            (slot, trace), self.processed, self.kept)
                    checkpoint = _Checkpoint(state.copy(), checkpoint, slot=slot)
                    seen.append(checkpoint)
                    self.kept += 1
                    fresh = True
                self.processed += 1
                processed = self.processed
                if processed > self.budget:
                    raise Unsupported(f"gave up after {self.budget} instructions (the budget asked for)")
                if not processed & 0xFFF:
                    self.limits.tick(processed)
                if processed > COMPLEXITY_LIMIT:
                    return self._reject(f"BPF program is too large. Processed {processed} insn", slot, state,
                                        decisions, (slot, trace), processed, self.kept)
                entry_op = self.code.get(slot)
                if entry_op is None:
                    return self._reject(f"invalid insn idx {slot}", slot, state, decisions, (slot, trace),
                                        processed, self.kept)
                op, after = entry_op
                frame = len(state.frames) - 1
                machine.state, machine.op, machine.slot, machine.next = state, op, slot, after
                machine.ended, machine.forks, machine.note = False, [], None
                machine.chain, machine.checkpoint, machine.fresh = trace, checkpoint, fresh
                try:
                    step(machine, op)
                except Unsupported as err:
                    raise err.at(insn=slot)
                except Rejected as err:
                    return self._reject(err.message, slot, machine.state, decisions, (slot, trace), processed,
                                        self.kept)
                trace = (slot, trace, frame, machine.note)
                if fresh:
                    checkpoint.trace = trace
                for target, forked in machine.forks:
                    if checkpoint is not None:
                        checkpoint.branches += 1
                    stack.append(_Path(target, forked, checkpoint, ((slot, target), decisions), trace))
                    if len(stack) > JUMP_SEQUENCE_LIMIT:
                        return self._reject(f"The sequence of {len(stack)} jumps is too complex.", slot, state,
                                            decisions, trace, processed, self.kept)
                if machine.ended:
                    _finish(checkpoint)
                    break
                if isinstance(op, (Jump, MayGoto)) and (op.__class__ is MayGoto or op.cmp is not None):
                    decisions = ((slot, machine.next), decisions)
                state, slot = machine.state, machine.next
        return None

    def _keep(self, slot: int, state: State) -> None:
        """An arriving state at a slot the caller asked about, before pruning may end its path (a pruned
        state is covered by a kept one only in the registers live here, and a rewrite may read others)."""
        kept = self.collected[slot]
        if len(kept) >= self.limits.collect_per_slot:
            raise Unsupported(f"more than {self.limits.collect_per_slot} states reach insn {slot}")
        if not any(_same(k, state) for k in kept):
            kept.append(state.copy())

    def _reject(self, message: str, slot: int, state: State, decisions, trace, processed: int,
                kept: int) -> Verdict:
        return Verdict(False, message, slot, state.text(), _unlink(decisions), _unlink(trace), state, processed, kept)


def _unlink(chain: tuple) -> list:
    """The items of a linked list `(last, (earlier, (...)))`, first first."""
    items = []
    while chain:
        items.append(chain[0])
        chain = chain[1]
    items.reverse()
    return items


def _finish(checkpoint: _Checkpoint | None) -> None:
    """A path ended safely: the checkpoints it went through lose a pending branch (update_branch_counts)."""
    while checkpoint is not None:
        checkpoint.branches -= 1
        if checkpoint.branches:
            return
        checkpoint = checkpoint.parent


ALL_REGISTERS = (1 << 11) - 1
CALLER_SAVED_SURVIVORS = 0b1111000000  # r6-r9: what a caller's frame still holds when its callee returns


def covers(old: State, cur: State, live: int = ALL_REGISTERS, *, pruning: bool = False, exact: bool = False) -> bool:
    """states_equal: whether `old` includes `cur` — every register in the `live` mask (of the innermost
    frame; callers keep r6-r9) and every stack byte of `cur` at least as constrained as in `old`. A state
    proven safe from an instruction on then proves `cur` safe too.

    `pruning` compares as the kernel does when a path meets a kept state: a scalar of `old` that is not
    `precise` matches any scalar, and misc stack bytes match anything (a privileged program may read
    uninitialised stack). Without it, every value must be within `old`'s. `exact` (RANGE_WITHIN, how a
    callback's iterations converge) also wants what `old` leaves uninitialised uninitialised in `cur`."""
    if len(old.frames) != len(cur.frames) or len(old.refs) != len(cur.refs):
        return False
    ids = _IdMap()
    if not all(ids.match(o, c) for (o, _), (c, _) in zip(old.refs, cur.refs)):  # refsafe
        return False
    for depth, (fo, fc) in enumerate(zip(old.frames, cur.frames)):
        if fo.callsite != fc.callsite or fo.callback != fc.callback or fo.callback_depth > fc.callback_depth:
            return False
        mask = live if depth == len(old.frames) - 1 else CALLER_SAVED_SURVIVORS
        for n in range(10):
            if exact and (fo.regs[n].kind == "not_init") != (fc.regs[n].kind == "not_init"):
                return False
            if mask >> n & 1 and not _reg_covers(fo.regs[n], fc.regs[n], ids, pruning):
                return False
        if not _stack_covers(fo, fc, ids, pruning, exact):
            return False
    return True


_SLOT_BITS = (1 << 8 * SLOT) - 1
_STACK_SLOTS = STACK_SIZE // SLOT
_WHOLE_SPILL = bytes([SPILL]) * SLOT
_MISC_OR_INVALID = frozenset({MISC, INVALID})


def _stack_covers(fo: Frame, fc: Frame, ids: "_IdMap", pruning: bool, exact: bool) -> bool:
    """stacksafe: each 8-byte slot of `fo` includes that of `fc`. Only the slots whose bytes differ, and
    those `fo` has a register spilled in, can fail: the others hold the same plain bytes."""
    old_types, cur_types = fo.types, fc.types
    if old_types == cur_types and not fo.spilled:
        return True
    differing = int.from_bytes(old_types, "big") ^ int.from_bytes(cur_types, "big")
    candidates = set(fo.spilled)
    while differing:  # byte i is bits 8 * (511 - i) ...: slot s is the 64-bit chunk 63 - s
        chunk = (differing.bit_length() - 1) // 64
        candidates.add(_STACK_SLOTS - 1 - chunk)
        differing &= ~(_SLOT_BITS << 64 * chunk)
    for s in candidates:
        if not _slot_covers(fo, fc, s, ids, pruning, exact):
            return False
    return True


def _slot_covers(fo: Frame, fc: Frame, s: int, ids: "_IdMap", pruning: bool, exact: bool) -> bool:
    """One slot of stacksafe, byte by byte as the kernel compares them (a privileged loader's, with
    `pruning`: misc bytes of `fo` match anything, as uninitialised stack may be read)."""
    first = s * SLOT
    old_bytes, cur_bytes = fo.types[first:first + SLOT], fc.types[first:first + SLOT]
    # scalar_reg_for_stack: a scalar spilled whole is compared with a slot of misc bytes as with the unknown
    # number a load from there gives
    if old_bytes == _WHOLE_SPILL and fo.spilled.get(s, NOT_INIT).is_scalar and pruning and \
            _MISC_OR_INVALID.issuperset(cur_bytes):
        return _reg_covers(fo.spilled[s], unknown(), ids, pruning)
    for ko, kc in zip(old_bytes, cur_bytes):
        if ko == INVALID and (kc == INVALID or not exact) or ko == MISC and pruning:
            continue
        if ko == kc and ko != SPILL or ko == MISC and kc == ZERO:
            continue
        if ko == SPILL and kc == SPILL:
            continue
        return False
    if old_bytes[0] == SPILL and cur_bytes[0] == SPILL:
        return _reg_covers(fo.spilled.get(s, NOT_INIT), fc.spilled.get(s, NOT_INIT), ids, pruning)
    return True


class _IdMap:
    """check_ids: the ids of `old` and `cur` must correspond one to one (a register linked to another in
    `old` must be linked to the same one in `cur`); an id of 0 is a fresh one each time."""

    def __init__(self) -> None:
        self.forward: dict[int, int] = {}
        self.backward: dict[int, int] = {}
        self.fresh = 0

    def match(self, old: int, cur: int) -> bool:
        if not old and not cur:
            return True
        if not old:
            self.fresh -= 1
            old = self.fresh
        if not cur:
            self.fresh -= 1
            cur = self.fresh
        if self.forward.setdefault(old, cur) != cur:
            return False
        return self.backward.setdefault(cur, old) == old


def _linked_sum(op, dst: Reg, src: Reg, result: Reg) -> Reg:
    """adjust_reg_min_max_vals after the arithmetic: `rX += c` / `rX -= c` of a linked scalar keeps the
    link, with the constant as its delta (once: a second constant clears it), so a later check of either
    register refines the other (`_synced`); any other operation unlinks the result (its id 0)."""
    if op.op not in ("add", "sub") or not dst.id or dst.linked:
        return result
    value = src.var
    if op.width == 32:
        if not value.var_off.subreg().is_const() or dst.var.umax > U32_MAX:
            return result
        off = s32(value.var_off.value)
    else:
        if not value.is_const() or not S32_MIN <= s64(value.var_off.value) <= S32_MAX:
            return result
        off = s64(value.var_off.value)
    if op.op == "sub":
        if off == S32_MIN:  # its negation overflows
            return result
        off = -off
    return result.with_(id=dst.id, delta=off, linked=op.width)


def _synced(reg: Reg, known: Reg) -> Reg:
    """What `reg`, linked to `known` (same id), is after a check refined `known`: `known` itself when they
    are plain copies or have the same delta, else `known` + (reg's delta - known's), zero-extended when the
    link came from a 32-bit addition; `reg` keeps its own id and delta."""
    if (not reg.linked and not known.linked) or reg.delta == known.delta:
        return known
    if reg.linked and known.linked and reg.linked != known.linked:  # a 32- and a 64-bit addition: no relation
        return reg
    var = scalar_alu("add", 64, known.var, Scalar.known((reg.delta - known.delta) & M64))
    if 32 in (reg.linked, known.linked):  # one of them is a 32-bit result, zero-extended
        var = scalar_alu("mov", 32, var, var)
    return reg.with_(var=var)


def _reg_covers(old: Reg, cur: Reg, ids: _IdMap, pruning: bool) -> bool:
    """regsafe: `cur` is within `old`."""
    if old.kind == "not_init":
        return True
    if old.kind != cur.kind:
        return False
    if old.kind == "scalar":
        if pruning and not old.precise:
            return True
        if old.linked != cur.linked or old.linked and old.delta != cur.delta:  # the delta is part of the link
            return False
        return _within(old.var, cur.var) and ids.match(old.id, cur.id)
    if old.map is not cur.map or old.off != cur.off or old.frame != cur.frame or old.target != cur.target or \
            old.size != cur.size:
        return False
    if old.kind in PACKET_KINDS and old.range > cur.range:
        return False
    return ids.match(old.id, cur.id) and ids.match(old.ref, cur.ref) and _within(old.var, cur.var)


def _fits(reg: Reg, size: int) -> bool:
    """get_reg_width: whether a scalar's value fits in `size` bytes (a narrow spill of it keeps its link)."""
    return reg.var.umax.bit_length() <= 8 * size


def _truncated(value: Scalar, size: int) -> Scalar:
    """coerce_reg_to_size: the low `size` bytes of a value, zero-extended."""
    if size == 4:
        return scalar_alu("mov", 32, value, value)
    return scalar_alu("and", 64, value, Scalar.known((1 << 8 * size) - 1))


def _within(old: Scalar, cur: Scalar) -> bool:
    return (old.umin <= cur.umin and cur.umax <= old.umax and old.smin <= cur.smin and cur.smax <= old.smax
            and old.u32_min <= cur.u32_min and cur.u32_max <= old.u32_max and old.s32_min <= cur.s32_min
            and cur.s32_max <= old.s32_max and old.var_off.includes(cur.var_off))


def _same(a: State, b: State) -> bool:
    if len(a.frames) != len(b.frames) or a.refs != b.refs:
        return False
    return all(fa.regs == fb.regs and fa.types == fb.types and fa.spilled == fb.spilled
               for fa, fb in zip(a.frames, b.frames))


def verify_program(insns: Sequence[Insn], prog_type: str, maps: Sequence[MapSpec] | Mapping[int, MapSpec] = (), *,
                   attach: int = 0, prog_flags: int = 0, budget: int = COMPLEXITY_LIMIT + 1,
                   limits: Limits | None = None, collect: Sequence[int] = (),
                   global_functions: Mapping[int, GlobalFunction] | None = None, func_info: bool = False) -> Verdict:
    """Our verifier's verdict on a linked program whose map lddws name `maps` by index (the loader's
    convention for raw instructions). Raises Unsupported where it cannot decide yet, and when it has processed
    `budget` instructions (below the kernel's limit, a caller's bound on the work: no verdict) or `limits`
    stop it. An accepting verdict holds in `collected` every distinct state that reached each slot of
    `collect` (what a window there may start from). `global_functions` (by the slot they start at) are
    checked on their own, as the kernel checks the global functions BTF names; `func_info` says the program
    comes with BTF's function records (callbacks need them)."""
    try:
        walk = _Walk(insns, prog_type, maps, attach, prog_flags, budget, limits, frozenset(collect),
                     global_functions, func_info)
    except CfgError as err:
        return Verdict(False, err.message, err.where.insn)
    return walk.run()


def trace_states(insns: Sequence[Insn], prog_type: str, maps: Sequence[MapSpec] | Mapping[int, MapSpec],
                 trace: Sequence[int], *, attach: int = 0, prog_flags: int = 0) -> list[tuple[int, State]]:
    """The state before each instruction of `trace` (a verdict's failing path), walking that one path
    again: at each branch, the side the trace goes on. What `--log` prints, and what a failure slice reads."""
    walk = _Walk(insns, prog_type, maps, attach, prog_flags)
    machine = VerifierMachine(walk)
    state = entry_state()
    states: list[tuple[int, State]] = []
    for i, slot in enumerate(trace):
        states.append((slot, state.copy()))
        entry = walk.code.get(slot)
        if entry is None or i + 1 == len(trace):
            break
        op, after = entry
        machine.state, machine.op, machine.slot, machine.next = state, op, slot, after
        machine.ended, machine.forks = False, []
        try:
            step(machine, op)
        except Rejected:
            break
        following_slot = trace[i + 1]
        sides = [forked for target, forked in machine.forks if target == following_slot]
        if not machine.ended and machine.next == following_slot:
            state = machine.state
        elif sides:
            state = sides[0]
        else:
            raise ValueError(f"the trace leaves insn {slot} for {following_slot}, where no path goes")
    return states


def linked_inputs(obj, linked) -> tuple[list[Insn], list[MapSpec]]:
    """A linked program of an object as `verify_program` takes it: its map references become indexes into
    the maps it uses, numbered in order of first reference (as the loader resolves them)."""
    specs: list[MapSpec] = []

    def handle(name: str, spec: MapSpec | None) -> int | None:
        if spec is None:
            return None
        if spec not in specs:
            specs.append(spec)
        return specs.index(spec)

    return resolve_map_relocations(linked.insns, linked.relocations, obj.maps, handle), specs


def verify_linked_program(obj, linked, prog_type: str, *, attach: int = 0, budget: int = COMPLEXITY_LIMIT + 1,
                          limits: Limits | None = None, collect: Sequence[int] = ()) -> Verdict:
    """Our verdict on a linked program of an object (`elf.BpfObject.linked`), its maps numbered as
    `linked_inputs` numbers them; its global functions are checked on their own."""
    insns, specs = linked_inputs(obj, linked)
    return verify_program(insns, prog_type, specs, attach=attach, budget=budget, limits=limits, collect=collect,
                          global_functions=global_functions(obj, linked, prog_type),
                          func_info=obj.btf is not None and obj.btf_ext is not None and bool(obj.btf_ext.func_info))


__all__ = ["ALL_REGISTERS", "Context", "Limits", "Rejected", "Unsupported", "Verdict", "VerifierMachine", "covers",
           "linked_inputs", "trace_states", "verify_linked_program", "verify_program"]
