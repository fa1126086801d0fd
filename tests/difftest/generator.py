"""Random XDP programs the kernel verifier accepts, for differential testing of the interpreter.

`generate(seed)` builds one program from decisions drawn from `random.Random(seed)` (see `Choices`; `replay`
builds one from a list of decisions, which is how failures shrink). The program is structured code (forward
if / if-else blocks, do-while loops with a constant trip count of at most 16) over the whole kernel ISA as
the form table lists it: every ALU/ALU64 operation with register and immediate sources (divisions by
registers that hold 0 or -1 at run time), movsx, neg, byte swaps, JMP/JMP32 conditions, stack stores and
(sign-extending) loads of every size at naturally aligned offsets, every atomic on the stack and on map values,
lddw, packet reads and writes after a `data + N > data_end` check, ctx field reads, map lookup / update / delete
on array and hash maps, bpf_get_smp_processor_id, early exits, may_goto.

What keeps it verifier-acceptable:
- registers: a set of registers known to hold scalars is tracked; only those are read. At a join the set is
  the intersection of the incoming paths'. r6 holds the ctx pointer for the whole program; pointers (packet,
  map value) live only inside the block that checked them, in registers nobody else writes meanwhile, and
  never reach a scalar operation, the stack or the return value.
- stack: the initialised bytes are tracked the same way (the kernel lets root read uninitialised stack, which
  holds garbage there and zeros in the interpreter, so that must never happen); accesses are aligned to their
  size, as the verifier requires for the stack.
- loops: the counter is read-only in the body; bodies make no calls and restore every register a pointer
  block borrowed, so each iteration starts with at least the scalars of the first. A branch in a loop body
  can double the paths the verifier walks per iteration (and consecutive branching loops multiply), so one
  loop per program may branch, at most LOOP_BRANCHES times, for at most 8 trips; other loops go to 16.

The program ends by folding every scalar register and every initialised stack byte into r0, xoring r0 into
the first 8 packet bytes and returning r0 ^ (r0 >> 32): any difference in any register, in the stack, in the
packet or in map contents shows up in the outcome.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, replace

from bpforge.isa.maptypes import MapSpec
from bpforge.isa import FORMS, FORMS_BY_NAME, Insn
from bpforge.isa.helpers import helper_id
from bpforge.isa.maptypes import MAP_TYPE_IDS

from .program import DiffProgram

CTX, FP = 6, 10
POOL = (0, 1, 2, 3, 4, 5, 7, 8, 9)  # registers that may hold scalars (r6 keeps ctx)
CALLER_SAVED = frozenset({0, 1, 2, 3, 4, 5})
STACK_BASE = 512  # bit (offset + 512) of State.stack is the byte at fp + offset
XDP_MD_SCALARS = (12, 16)  # ingress_ifindex, rx_queue_index

ALU_FORMS = [f for f in FORMS if f.kind in ("alu", "mov", "neg")]
END_FORMS = [f for f in FORMS if f.kind == "end"]
JMP_FORMS = [f for f in FORMS if f.kind == "jmp"]
LDX_FORMS = [f for f in FORMS if f.kind == "ldx"]
ST_FORMS = {f.size: f for f in FORMS if f.kind == "st"}
STX_FORMS = {f.size: f for f in FORMS if f.kind == "stx"}
ATOMIC_RMW = [f for f in FORMS if f.kind == "atomic" and f.op not in ("load_acquire", "store_release")]
ACQ_REL = [f for f in FORMS if f.kind == "atomic" and f.op in ("load_acquire", "store_release")]
# Forms the generator can emit: the kernel's whole ISA except what needs another program type (legacy packet
# loads), BTF/kfuncs/arenas, other functions (bpf-to-bpf calls, callx) or other map kinds.
OUT_OF_SCOPE_KINDS = {"ld_abs", "ld_ind", "callx", "as_cast"}
IN_SCOPE = frozenset(f.name for f in FORMS if f.kernel and f.kind not in OUT_OF_SCOPE_KINDS
                     and f.name not in ("call_local", "call_kfunc")
                     and not (f.kind == "lddw" and f.name not in ("lddw", "lddw_map_fd")))

INTERESTING32 = (0, 1, -1, 2, 7, 8, 31, 32, 63, 64, 0xFF, 0x80, 0x7F, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
                 0x7FFFFFFF, -0x80000000, -2, -0x8000, -0x80, 0x55555555, -0x55555556, 0x12345678)
INTERESTING64 = (0, 1, -1, 0x7FFFFFFFFFFFFFFF, -0x8000000000000000, 0xFFFFFFFF, 0x100000000, 0x80000000,
                 0xFFFFFFFF00000000, 0x0123456789ABCDEF, 0x8000000000000001, 0x00000000FFFF0000,
                 -0x100000000, 0x7FFFFFFF)
HELPER_LOOKUP, HELPER_UPDATE, HELPER_DELETE = (helper_id(n) for n in ("map_lookup_elem", "map_update_elem",
                                                                      "map_delete_elem"))
HELPER_CPU = helper_id("get_smp_processor_id")
BRANCHING = frozenset({"if", "ifelse", "packet", "may_goto"})
LOOP_BRANCHES = 2


def s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


# ---- decisions -------------------------------------------------------------------------------------------------

class Choices:
    """The generator's one source of decisions: each is an int drawn in [0, n). Drawn from a seeded
    random.Random, or replayed from a list (past its end every draw is 0, the simplest choice). The draws
    made are kept in `drawn`: editing that list and generating again is how a failing program shrinks, and
    every program generated from any list is as valid as one generated from a seed."""

    def __init__(self, seed: int | None = None, replay: list[int] | None = None) -> None:
        self._rng = random.Random(seed) if replay is None else None
        self._replay = replay
        self._at = 0
        self.drawn: list[int] = []

    def draw(self, n: int) -> int:
        if n <= 1:
            return 0
        if self._replay is None:
            value = self._rng.randrange(n)
        else:
            value = self._replay[self._at] % n if self._at < len(self._replay) else 0
            self._at += 1
        self.drawn.append(value)
        return value

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        if stop is None:
            start, stop = 0, start
        count = (stop - start + step - 1) // step
        if count <= 0:
            raise ValueError(f"empty range ({start}, {stop}, {step})")
        return start + step * self.draw(count)

    def randint(self, a: int, b: int) -> int:
        return a + self.draw(b - a + 1)

    def choice(self, seq):
        return seq[self.draw(len(seq))]

    def random(self) -> float:
        return self.draw(1 << 53) / (1 << 53)

    def getrandbits(self, k: int) -> int:
        return self.draw(1 << k)

    def weighted(self, items, weights):
        x = self.random() * sum(weights)
        for item, weight in zip(items, weights):
            if x < weight:
                return item
            x -= weight
        return items[-1]

    def shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.draw(i + 1)
            items[i], items[j] = items[j], items[i]

    def sample(self, population, k: int) -> list:
        pool = list(population)
        for i in range(k):
            j = i + self.draw(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


# ---- emitting with labels ----------------------------------------------------------------------------------

class Emitter:
    """Instructions and forward/backward jumps to labels, resolved to slot offsets at the end."""

    def __init__(self) -> None:
        self.items: list[Insn | tuple[str, dict, str]] = []
        self.labels: dict[str, int] = {}
        self.count = 0
        self.used: Counter[str] = Counter()

    def emit(self, form: str, **fields: int) -> None:
        self.items.append(Insn.make(form, **fields))
        self.used[form] += 1

    def new_label(self) -> str:
        self.count += 1
        return f"L{self.count}"

    def place(self, label: str) -> None:
        self.labels[label] = len(self.items)

    def jump(self, form: str, label: str, **fields: int) -> None:
        self.items.append((form, fields, label))
        self.used[form] += 1

    def finish(self) -> list[Insn]:
        starts, slot = [], 0
        for item in self.items:
            starts.append(slot)
            slot += item.slots if isinstance(item, Insn) else 1
        starts.append(slot)
        out: list[Insn] = []
        for i, item in enumerate(self.items):
            if isinstance(item, Insn):
                out.append(item)
                continue
            form, fields, label = item
            delta = starts[self.labels[label]] - starts[i] - 1
            out.append(Insn.make(form, **fields, **{FORMS_BY_NAME[form].target_field: delta}))
        return out


# ---- what the generator knows about the machine state ---------------------------------------------------------

@dataclass
class State:
    scalars: set[int]
    stack: int = 0  # bitmask of initialised stack bytes

    def copy(self) -> State:
        return State(set(self.scalars), self.stack)

    def meet(self, other: State) -> None:
        self.scalars &= other.scalars
        self.stack &= other.stack

    @staticmethod
    def mask(off: int, size: int) -> int:
        return ((1 << size) - 1) << (off + STACK_BASE)

    def initialised(self, off: int, size: int) -> bool:
        m = self.mask(off, size)
        return self.stack & m == m


@dataclass(frozen=True)
class Where:
    """Where a block is being generated: registers it must not write, what it may do."""

    protected: frozenset[int] = frozenset()
    depth: int = 0
    in_loop: bool = False
    may_exit: bool = False
    packet: tuple[int, int] | None = None  # (register holding data, bytes known to be in bounds)
    value: tuple[int, int] | None = None  # (register holding a map value pointer, value size)
    # Branches a loop body may still add (shared by the body's nested blocks): each one can double the
    # states the verifier walks per iteration, so a body gets only a few.
    loop_branches: list[int] | None = None

    @property
    def may_call(self) -> bool:
        return not self.in_loop and self.packet is None and self.value is None


@dataclass
class Generated:
    program: DiffProgram
    used: Counter = field(default_factory=Counter)  # form name -> count
    features: Counter = field(default_factory=Counter)  # statement kinds
    choices: list[int] = field(default_factory=list)  # the decisions that made it (replay them: same program)


class Generator:
    def __init__(self, seed: int | None, *, replay: list[int] | None = None, max_statements: int | None = None) -> None:
        self.seed = seed
        self.rng = Choices(seed, replay)
        self.e = Emitter()
        self.features: Counter[str] = Counter()
        self.branchy_loops = 0
        rng = self.rng
        self.area = rng.choice((32, 64, 64, 128, 256))
        # 8..48 statements; a few very short programs (and the shortest when shrinking replays zeros)
        self.statements_left = max_statements or (rng.randint(1, 7) if rng.random() < 0.03 else rng.randint(8, 48))
        self.maps: list[MapSpec] = []
        for i in range(rng.choice((0, 1, 1, 2, 2, 3))):
            kind = rng.choice(("array", "hash"))
            key_size = 4 if kind == "array" else rng.choice((4, 8))
            self.maps.append(MapSpec(f"m{i}_{kind}", MAP_TYPE_IDS[kind], key_size, rng.choice((8, 16, 24, 32)),
                                     rng.randint(1, 6)))

    # ---- values ---------------------------------------------------------------------------------------

    def imm32(self) -> int:
        r = self.rng.random()
        if r < 0.35:
            return self.rng.randint(-4, 20)
        if r < 0.7:
            return self.rng.choice(INTERESTING32)
        return s32(self.rng.getrandbits(32))

    def imm64(self) -> int:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(INTERESTING64)
        if r < 0.6:
            return self.imm32() << self.rng.choice((8, 16, 32, 40))
        return self.rng.getrandbits(64)

    def imm_for(self, form) -> int:
        if form.op in ("lsh", "rsh", "arsh"):
            return self.rng.randrange(form.width) if self.rng.random() < 0.8 else self.rng.choice((0, form.width - 1))
        if form.op in ("div", "mod", "sdiv", "smod"):
            if self.rng.random() < 0.3:
                return self.rng.choice((1, -1, 2, 3, -2, 10, 0x7FFFFFFF, -0x80000000))
            return self.imm32() or 1
        return self.imm32()

    # ---- register choices ----------------------------------------------------------------------------------

    def writable(self, where: Where) -> list[int]:
        return [r for r in POOL if r not in where.protected]

    def pick_dst(self, st: State, where: Where, *, need_scalar: bool) -> int | None:
        choices = [r for r in self.writable(where) if r in st.scalars or not need_scalar]
        return self.rng.choice(choices) if choices else None

    def pick_src(self, st: State) -> int | None:
        return self.rng.choice(sorted(st.scalars)) if st.scalars else None

    def define(self, st: State, reg: int) -> None:
        """Give `reg` a fresh scalar value (an immediate of some width)."""
        r = self.rng.random()
        if r < 0.55:
            self.e.emit("mov64_imm", dst=reg, imm=self.imm32())
        elif r < 0.85:
            self.e.emit("mov32_imm", dst=reg, imm=self.imm32())
        else:
            self.e.emit("lddw", dst=reg, imm64=self.imm64())
        st.scalars.add(reg)

    def ensure_scalar(self, st: State, where: Where) -> int | None:
        """A register holding a scalar, defining one if there is none."""
        if st.scalars and self.rng.random() < 0.9:
            return self.pick_src(st)
        dst = self.pick_dst(st, where, need_scalar=False)
        if dst is None:
            return self.pick_src(st)
        self.define(st, dst)
        return dst

    # ---- blocks ------------------------------------------------------------------------------------------

    def block(self, st: State, where: Where, count: int) -> bool:
        """Emit up to `count` statements; True when the block ends in an exit (control never falls out)."""
        for _ in range(count):
            if self.statements_left <= 0:
                break
            self.statements_left -= 1
            if self.statement(st, where):
                return True
        return False

    def statement(self, st: State, where: Where) -> bool:
        rng = self.rng
        table: list[tuple[str, float]] = [
            ("alu", 30), ("end", 4), ("lddw", 3), ("store", 8), ("load", 7), ("atomic", 7), ("acqrel", 1),
            ("ctx", 1.5),
        ]
        if where.depth < 4:
            table += [("if", 7), ("ifelse", 4)]
        if not where.in_loop and where.depth < 3:
            table.append(("loop", 3))
        if where.in_loop:
            table.append(("may_goto", 1))
        if where.packet is None and where.value is None and where.depth < 4:
            table.append(("packet", 5))
        if where.packet is not None:
            table += [("pkt_load", 10), ("pkt_store", 6)]
        if where.value is not None:
            table += [("val_load", 8), ("val_store", 6), ("val_atomic", 5)]
        if where.may_call:
            if self.maps:
                table.append(("map", 8))
            table.append(("cpu", 0.5))
        if where.may_exit and where.depth > 0:
            table.append(("exit", 1))
        if where.loop_branches is not None and where.loop_branches[0] <= 0:
            table = [(k, w) for k, w in table if k not in BRANCHING]
        names, weights = zip(*table)
        kind = rng.weighted(names, weights)
        if where.loop_branches is not None and kind in BRANCHING:
            where.loop_branches[0] -= 1
        self.features[kind] += 1
        return bool(getattr(self, "s_" + kind)(st, where))

    # ---- straight-line statements -----------------------------------------------------------------------------

    def s_alu(self, st: State, where: Where) -> None:
        form = self.rng.choice(ALU_FORMS)
        defines = form.op in ("mov", "movsx")
        dst = self.pick_dst(st, where, need_scalar=not defines)
        if dst is None:
            dst = self.pick_dst(st, where, need_scalar=False)
            if dst is None:
                return
            self.define(st, dst)
        if form.op in ("sdiv", "smod") and self.rng.random() < 0.2:  # INT_MIN / -1 overflows
            if form.width == 64:
                self.e.emit("lddw", dst=dst, imm64=-(1 << 63))
            else:
                self.e.emit("mov32_imm", dst=dst, imm=-(1 << 31))
        if form.source == "reg":
            src = self.ensure_scalar(st, where)
            if src is None:
                return
            if form.op in ("div", "mod", "sdiv", "smod") and src not in where.protected and self.rng.random() < 0.3:
                # a divisor that is 0 or -1 when the division runs (the kernel rewrites both cases)
                self.e.emit(self.rng.choice(("mov64_imm", "mov32_imm")), dst=src, imm=self.rng.choice((0, -1)))
            self.e.emit(form.name, dst=dst, src=src)
        elif form.kind == "neg":
            self.e.emit(form.name, dst=dst)
        else:
            self.e.emit(form.name, dst=dst, imm=self.imm_for(form))
        st.scalars.add(dst)

    def s_end(self, st: State, where: Where) -> None:
        dst = self.pick_dst(st, where, need_scalar=True)
        if dst is not None:
            self.e.emit(self.rng.choice(END_FORMS).name, dst=dst)

    def s_lddw(self, st: State, where: Where) -> None:
        dst = self.pick_dst(st, where, need_scalar=False)
        if dst is not None:
            self.e.emit("lddw", dst=dst, imm64=self.imm64())
            st.scalars.add(dst)

    def s_ctx(self, st: State, where: Where) -> None:
        dst = self.pick_dst(st, where, need_scalar=False)
        if dst is not None:
            self.e.emit("ldx32", dst=dst, src=CTX, off=self.rng.choice(XDP_MD_SCALARS))
            st.scalars.add(dst)

    def s_cpu(self, st: State, where: Where) -> None:
        self.e.emit("call", imm=HELPER_CPU)
        st.scalars -= CALLER_SAVED
        st.scalars.add(0)

    # ---- stack -------------------------------------------------------------------------------------------

    def stack_slot(self, size: int) -> int:
        return self.rng.randrange(-self.area, 0, size)

    def store_stack(self, st: State, where: Where, off: int, size: int) -> None:
        if self.rng.random() < 0.35 or not st.scalars:
            self.e.emit(ST_FORMS[size].name, dst=FP, off=off, imm=self.imm32())
        else:
            self.e.emit(STX_FORMS[size].name, dst=FP, src=self.pick_src(st), off=off)
        st.stack |= State.mask(off, size)

    def initialised_slot(self, st: State, where: Where, size: int, *, align: int | None = None) -> int:
        """An offset of `size` initialised bytes (aligned to `align`, default `size`), storing there first
        when there is none (or now and then anyway)."""
        align = align or size
        ready = [o for o in range(-self.area, 0, align) if o + size <= 0 and st.initialised(o, size)]
        if ready and self.rng.random() < 0.85:
            return self.rng.choice(ready)
        off = self.rng.randrange(-self.area, -size + 1, align)
        pieces = min(size, 8)
        for o in range(off, off + size, pieces):
            if not st.initialised(o, pieces):
                self.store_stack(st, where, o, pieces)
        return off

    def s_store(self, st: State, where: Where) -> None:
        size = self.rng.choice((1, 2, 4, 8))
        self.store_stack(st, where, self.stack_slot(size), size)

    def s_load(self, st: State, where: Where) -> None:
        form = self.rng.choice(LDX_FORMS)
        dst = self.pick_dst(st, where, need_scalar=False)
        if dst is None:
            return
        off = self.initialised_slot(st, where, form.size)
        self.e.emit(form.name, dst=dst, src=FP, off=off)
        st.scalars.add(dst)

    def atomic_at(self, st: State, where: Where, base: int, off: int, form) -> None:
        """One read-modify-write atomic at base + off (the bytes are initialised)."""
        if form.op == "cmpxchg":
            if 0 in where.protected or base == 0:
                return
            if 0 not in st.scalars or self.rng.random() < 0.3:
                self.define(st, 0)
        if form.fetch:  # writes its source register
            src = self.pick_dst(st, where, need_scalar=True)
            if src is None:
                src = self.pick_dst(st, where, need_scalar=False)
                if src is None:
                    return
                self.define(st, src)
        else:
            src = self.ensure_scalar(st, where)
            if src is None:
                return
        self.e.emit(form.name, dst=base, src=src, off=off)
        st.scalars.add(0 if form.op == "cmpxchg" else src)

    def s_atomic(self, st: State, where: Where) -> None:
        form = self.rng.choice(ATOMIC_RMW)
        off = self.initialised_slot(st, where, form.size)
        self.atomic_at(st, where, FP, off, form)

    def s_acqrel(self, st: State, where: Where) -> None:
        form = self.rng.choice(ACQ_REL)
        if form.op == "load_acquire":
            dst = self.pick_dst(st, where, need_scalar=False)
            if dst is None:
                return
            self.e.emit(form.name, dst=dst, src=FP, off=self.initialised_slot(st, where, form.size))
            st.scalars.add(dst)
        else:
            src = self.ensure_scalar(st, where)
            if src is None:
                return
            off = self.stack_slot(form.size)
            self.e.emit(form.name, dst=FP, src=src, off=off)
            st.stack |= State.mask(off, form.size)

    # ---- control flow ------------------------------------------------------------------------------------

    def condition(self, st: State, where: Where) -> tuple[str, dict] | None:
        form = self.rng.choice(JMP_FORMS)
        dst = self.ensure_scalar(st, where)
        if dst is None:
            return None
        if form.source == "reg":
            src = self.ensure_scalar(st, where)
            if src is None:
                return None
            return form.name, {"dst": dst, "src": src}
        if form.op == "jset":
            imm = s32(1 << self.rng.randrange(32)) if self.rng.random() < 0.6 else self.imm32()
        else:
            imm = self.imm32()
        return form.name, {"dst": dst, "imm": imm}

    def sub_count(self) -> int:
        return self.rng.randint(1, 5)

    def s_if(self, st: State, where: Where) -> None:
        cond = self.condition(st, where)
        if cond is None:
            return
        skip = self.e.new_label()
        self.e.jump(cond[0], skip, **cond[1])
        inner = st.copy()
        ended = self.block(inner, replace(where, depth=where.depth + 1, may_exit=True), self.sub_count())
        self.e.place(skip)
        if not ended:
            st.meet(inner)

    def s_ifelse(self, st: State, where: Where) -> bool:
        cond = self.condition(st, where)
        if cond is None:
            return False
        other, end = self.e.new_label(), self.e.new_label()
        self.e.jump(cond[0], other, **cond[1])
        then = st.copy()
        deeper = replace(where, depth=where.depth + 1, may_exit=True)
        then_ended = self.block(then, deeper, self.sub_count())
        if not then_ended:
            self.e.jump("gotol" if self.rng.random() < 0.3 else "ja", end)
        self.e.place(other)
        els = st.copy()
        # both arms ending in exit would leave the code after the if-else unreachable, which the verifier refuses
        else_ended = self.block(els, replace(deeper, may_exit=not then_ended), self.sub_count())
        self.e.place(end)
        if then_ended and else_ended:
            return True
        arms = [s for s, ended in ((then, then_ended), (els, else_ended)) if not ended]
        st.scalars, st.stack = set(arms[0].scalars), arms[0].stack
        for arm in arms[1:]:
            st.meet(arm)
        return False

    def s_exit(self, st: State, where: Where) -> bool:
        if 0 in where.protected:
            return False
        if self.rng.random() < 0.5 and st.scalars:
            self.e.emit("mov64_reg", dst=0, src=self.pick_src(st))
        else:
            self.e.emit("mov64_imm", dst=0, imm=self.imm32())
        self.e.emit("exit")
        return True

    def s_loop(self, st: State, where: Where) -> None:
        free = [r for r in self.writable(where) if r not in st.scalars] or self.writable(where)
        if not free:
            return
        counter = self.rng.choice(free)
        init = len(self.e.items)
        self.e.emit(self.rng.choice(("mov64_imm", "mov32_imm")), dst=counter, imm=1)  # trip count set below
        st.scalars.add(counter)
        head = self.e.new_label()
        self.e.place(head)
        # Branches in loop bodies multiply the paths the verifier walks (per iteration, and across
        # consecutive loops): one loop per program may branch, at most LOOP_BRANCHES times, 8 trips at most.
        budget = [0 if self.branchy_loops else LOOP_BRANCHES]
        body = replace(where, protected=where.protected | {counter}, depth=where.depth + 1, in_loop=True,
                       may_exit=False, loop_branches=budget)
        self.block(st, body, self.rng.randint(1, 6))
        branchy = budget[0] < LOOP_BRANCHES and not self.branchy_loops
        self.branchy_loops += branchy
        trips = self.rng.randint(1, 8 if branchy else 16)
        self.e.items[init] = self.e.items[init].replace(imm=trips)
        step = self.rng.choice((("add64_imm", -1), ("sub64_imm", 1), ("add32_imm", -1), ("sub32_imm", 1)))
        self.e.emit(step[0], dst=counter, imm=step[1])
        self.e.jump(self.rng.choice(("jne_imm", "jsgt_imm", "jgt_imm", "jne32_imm", "jsgt32_imm")), head,
                    dst=counter, imm=0)

    def s_may_goto(self, st: State, where: Where) -> None:
        skip = self.e.new_label()
        self.e.jump("may_goto", skip)
        inner = st.copy()
        self.block(inner, replace(where, depth=where.depth + 1), 1)
        self.e.place(skip)
        st.meet(inner)

    # ---- pointer blocks ------------------------------------------------------------------------------------

    def borrow(self, st: State, where: Where, count: int) -> list[int] | None:
        """`count` writable registers for pointers, preferring ones that hold nothing."""
        regs = self.writable(where)
        if len(regs) < count:
            return None
        self.rng.shuffle(regs)
        regs.sort(key=lambda r: r in st.scalars)
        return regs[:count]

    def give_back(self, st: State, before: set[int], borrowed: list[int], where: Where) -> None:
        """After a pointer block: borrowed registers are not scalars; in loops (always) and now and then
        elsewhere, the ones that were get a scalar again."""
        for reg in borrowed:
            st.scalars.discard(reg)
            if reg in before and (where.in_loop or self.rng.random() < 0.5):
                self.define(st, reg)

    def s_packet(self, st: State, where: Where) -> None:
        regs = self.borrow(st, where, 3)
        if regs is None:
            return
        data, end, cursor = regs
        span = self.rng.choice((self.rng.randint(1, 16), self.rng.randint(1, 40), self.rng.randint(1, 96)))
        before = set(st.scalars)
        self.e.emit("ldx32", dst=data, src=CTX, off=0)
        self.e.emit("ldx32", dst=end, src=CTX, off=4)
        self.e.emit("mov64_reg", dst=cursor, src=data)
        self.e.emit("add64_imm", dst=cursor, imm=span)
        skip = self.e.new_label()
        if self.rng.random() < 0.5:
            self.e.jump("jgt_reg", skip, dst=cursor, src=end)
        else:
            self.e.jump("jlt_reg", skip, dst=end, src=cursor)
        inner = st.copy()
        inner.scalars -= set(regs)
        body = replace(where, protected=where.protected | set(regs), depth=where.depth + 1, packet=(data, span),
                       may_exit=True)
        ended = self.block(inner, body, self.rng.randint(1, 6))
        self.e.place(skip)
        if not ended:
            st.meet(inner)
        self.give_back(st, before, regs, where)

    def s_pkt_load(self, st: State, where: Where) -> None:
        data, span = where.packet
        forms = [f for f in LDX_FORMS if f.size <= span]
        form = self.rng.choice(forms)
        dst = self.pick_dst(st, where, need_scalar=False)
        if dst is None:
            return
        self.e.emit(form.name, dst=dst, src=data, off=self.rng.randint(0, span - form.size))
        st.scalars.add(dst)

    def s_pkt_store(self, st: State, where: Where) -> None:
        data, span = where.packet
        size = self.rng.choice([s for s in (1, 2, 4, 8) if s <= span])
        off = self.rng.randint(0, span - size)
        if self.rng.random() < 0.3 or not st.scalars:
            self.e.emit(ST_FORMS[size].name, dst=data, off=off, imm=self.imm32())
        else:
            self.e.emit(STX_FORMS[size].name, dst=data, src=self.pick_src(st), off=off)

    def s_val_load(self, st: State, where: Where) -> None:
        ptr, size = where.value
        form = self.rng.choice(LDX_FORMS)
        dst = self.pick_dst(st, where, need_scalar=False)
        if dst is None:
            return
        self.e.emit(form.name, dst=dst, src=ptr, off=self.rng.randint(0, size - form.size))
        st.scalars.add(dst)

    def s_val_store(self, st: State, where: Where) -> None:
        ptr, size = where.value
        width = self.rng.choice((1, 2, 4, 8))
        off = self.rng.randint(0, size - width)
        if self.rng.random() < 0.3 or not st.scalars:
            self.e.emit(ST_FORMS[width].name, dst=ptr, off=off, imm=self.imm32())
        else:
            self.e.emit(STX_FORMS[width].name, dst=ptr, src=self.pick_src(st), off=off)

    def s_val_atomic(self, st: State, where: Where) -> None:
        ptr, size = where.value
        form = self.rng.choice(ATOMIC_RMW)
        self.atomic_at(st, where, ptr, self.rng.randrange(0, size - form.size + 1, form.size), form)

    # ---- maps ------------------------------------------------------------------------------------------------

    def stage_key(self, st: State, where: Where, m: MapSpec) -> int:
        """Write a key on the stack (mostly in 0..max_entries+1, so lookups hit and miss); its offset."""
        off = self.rng.randrange(-self.area, -m.key_size + 1, 8)
        r = self.rng.random()
        if r < 0.1 and st.initialised(off, m.key_size):
            return off  # whatever is there already
        size = m.key_size
        if r < 0.55:
            self.e.emit(ST_FORMS[size].name, dst=FP, off=off, imm=self.rng.randint(0, m.max_entries + 1))
        else:
            src = self.ensure_scalar(st, where)
            tmp = self.pick_dst(st, where, need_scalar=False)
            if src is None or tmp is None:
                self.e.emit(ST_FORMS[size].name, dst=FP, off=off, imm=self.rng.randint(0, m.max_entries + 1))
            else:
                self.e.emit("mov64_reg", dst=tmp, src=src)
                self.e.emit("and64_imm", dst=tmp, imm=self.rng.choice((3, 7)))
                self.e.emit(STX_FORMS[size].name, dst=FP, src=tmp, off=off)
                st.scalars.add(tmp)
        st.stack |= State.mask(off, size)
        return off

    def s_map(self, st: State, where: Where) -> None:
        index = self.rng.randrange(len(self.maps))
        m = self.maps[index]
        op = self.rng.weighted(("lookup", "update", "delete"), (5, 3, 1.5))
        key = self.stage_key(st, where, m)
        value = None
        if op == "update":
            value = self.initialised_slot(st, where, m.value_size, align=8)
        self.e.emit("lddw_map_fd", dst=1, imm=index)
        self.e.emit("mov64_reg", dst=2, src=FP)
        self.e.emit("add64_imm", dst=2, imm=key)
        if op == "update":
            self.e.emit("mov64_reg", dst=3, src=FP)
            self.e.emit("add64_imm", dst=3, imm=value)
            self.e.emit("mov64_imm", dst=4, imm=self.rng.weighted((0, 1, 2), (3, 1, 1)))
        self.e.emit("call", imm={"lookup": HELPER_LOOKUP, "update": HELPER_UPDATE, "delete": HELPER_DELETE}[op])
        st.scalars -= CALLER_SAVED
        self.features["map_" + op] += 1
        if op != "lookup":
            st.scalars.add(0)  # 0 or a negative errno
            return
        ptr = self.rng.choice([r for r in (0, 7, 8, 9) if r not in where.protected] or [0])
        if ptr != 0:
            self.e.emit("mov64_reg", dst=ptr, src=0)
        before = set(st.scalars)
        st.scalars.discard(ptr)
        skip = self.e.new_label()
        if self.rng.random() < 0.7:
            self.e.jump("jeq_imm", skip, dst=ptr, imm=0)
        else:
            use = self.e.new_label()
            self.e.jump("jne_imm", use, dst=ptr, imm=0)
            self.e.jump("ja", skip)
            self.e.place(use)
        inner = st.copy()
        body = replace(where, protected=where.protected | {ptr}, depth=where.depth + 1, value=(ptr, m.value_size),
                       may_exit=True)
        ended = self.block(inner, body, self.rng.randint(1, 6))
        self.e.place(skip)
        if not ended:
            st.meet(inner)
        self.give_back(st, before | {ptr}, [ptr], where)

    # ---- the whole program --------------------------------------------------------------------------------------

    def prologue(self, st: State) -> None:
        self.e.emit("mov64_reg", dst=CTX, src=1)
        for reg in self.rng.sample([r for r in POOL if r != 1], self.rng.randint(2, 6)):
            self.define(st, reg)
        if self.rng.random() < 0.7:  # values from the packet, unknown to the verifier
            regs = self.borrow(st, Where(), 3)
            data, end, cursor = regs
            span = self.rng.choice((8, 14, 16))
            self.e.emit("ldx32", dst=data, src=CTX, off=0)
            self.e.emit("ldx32", dst=end, src=CTX, off=4)
            self.e.emit("mov64_reg", dst=cursor, src=data)
            self.e.emit("add64_imm", dst=cursor, imm=span)
            skip = self.e.new_label()
            self.e.jump("jgt_reg", skip, dst=cursor, src=end)
            targets = sorted(r for r in st.scalars if r not in regs)
            for reg in self.rng.sample(targets, min(len(targets), self.rng.randint(1, 3))):
                form = self.rng.choice(LDX_FORMS)
                self.e.emit(form.name, dst=reg, src=data, off=self.rng.randint(0, span - form.size))
            self.e.place(skip)
            st.scalars -= set(regs)

    def epilogue(self, st: State) -> None:
        e = self.e
        if 0 not in st.scalars:
            self.define(st, 0)
        mult = self.rng.choice((0x9E3779B1 - (1 << 32), 0x01000193, 31))
        for reg in sorted(st.scalars - {0}):
            e.emit("mul64_imm", dst=0, imm=mult)
            e.emit(self.rng.choice(("xor64_reg", "add64_reg")), dst=0, src=reg)
        def fold(off: int, size: int) -> None:  # every initialised stack byte, in the widest aligned pieces
            if st.initialised(off, size):
                e.emit(f"ldx{size * 8}", dst=1, src=FP, off=off)
                e.emit("mul64_imm", dst=0, imm=mult)
                e.emit("xor64_reg", dst=0, src=1)
            elif size > 1 and st.stack & State.mask(off, size):
                fold(off, size // 2)
                fold(off + size // 2, size // 2)

        for base in range(-self.area, 0, 8):
            fold(base, 8)
        e.emit("ldx32", dst=1, src=CTX, off=0)
        e.emit("ldx32", dst=2, src=CTX, off=4)
        e.emit("mov64_reg", dst=3, src=1)
        e.emit("add64_imm", dst=3, imm=8)
        done = e.new_label()
        e.jump("jgt_reg", done, dst=3, src=2)
        e.emit("ldx64", dst=4, src=1, off=0)
        e.emit("xor64_reg", dst=4, src=0)
        e.emit("stx64", dst=1, src=4, off=0)
        e.place(done)
        e.emit("mov64_reg", dst=2, src=0)
        e.emit("rsh64_imm", dst=2, imm=32)
        e.emit("xor64_reg", dst=0, src=2)
        e.emit("exit")

    def generate(self) -> Generated:
        st = State(set())
        self.prologue(st)
        while self.statements_left > 0:
            self.block(st, Where(), self.statements_left)
        self.epilogue(st)
        insns = self.e.finish()
        name = f"gen{self.seed}" if self.seed is not None else "shrunk"
        program = DiffProgram(name, insns, list(self.maps), "xdp", seed=self.seed)
        return Generated(program, self.e.used, self.features, self.rng.drawn)


def generate(seed: int, **options) -> Generated:
    return Generator(seed, **options).generate()


def replay(choices: list[int], **options) -> Generated:
    """The program these decisions make (any list makes a valid program; see Choices)."""
    return Generator(None, replay=choices, **options).generate()


def random_packet(rng: random.Random) -> bytes:
    """A random frame of 14..128 bytes (XDP needs an Ethernet header's worth)."""
    size = rng.choice((14, 15, 16, 20, 24, 32, 40, 48, 64, 96, 128, rng.randint(14, 128)))
    fill = rng.random()
    if fill < 0.1:
        return bytes(size)
    if fill < 0.2:
        return b"\xff" * size
    return rng.randbytes(size)
