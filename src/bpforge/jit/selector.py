"""What every backend's instruction selection shares, whatever its encodings: walking a lowered program's
functions slot by slot, labels for jump targets (a fault stub where the VM would fault on reaching one),
out-of-line stubs emitted after each function, the per-instruction walk over the MIR effects, scratch
registers, and the dispatch of calls (helpers, kfuncs, indirect and BPF-to-BPF calls).

A backend subclasses `Selector` and supplies the machine side: `_jmp`, `_call_label`, `_branch_if`,
`_callout`, `_fault`, `_charge`, `_fetch`, `_store`, `_atomic`, `_local_call`, `_arg`, `_extend`,
`_set_reg`, `_may_goto`, `_exit`, and any helper it inlines (`_inline_helper`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager

from ..isa.numbers import s64
from . import abi
from .emit import Assembler, Label
from .image import Image
from .lower import Lowered
from .mir import AtomicRmw, Branch, Call, Exit, Fetch, MayGoto, Node, SetReg, Store


class Selector(ABC):
    def __init__(self, lowered: Lowered, bpf_regs, scratch) -> None:
        self.lw = lowered
        self.H = bpf_regs  # the native register of each BPF register
        self.scratch_regs = tuple(scratch)
        self.asm = Assembler()
        self.labels: dict[int, Label] = {}
        self.functions: dict[int, Label] = {entry: Label(f"function {entry}") for entry in lowered.entries}
        self.epilogue = Label("epilogue")
        self.dispatch = Label("dispatch")
        self.stubs: list = []
        self.free: list[int] = list(self.scratch_regs)
        self.fetched: dict[Node, int] = {}
        self.slot = -1

    # ---- the image -------------------------------------------------------------------------------------

    def _image(self, arch: str, entry: Label, callfn: Label, repeat: Label) -> Image:
        """Every function's code after the image's own (entry, call_function, repeat), assembled."""
        for sc in self.lw.code:
            self.labels[sc.slot] = Label(f"slot {sc.slot}")
        for entry_slot in self.lw.entries:
            self._function(entry_slot)
        code = self.asm.assemble()
        return Image(arch, self.lw.name, code.data, code.labels[entry], code.labels[callfn], code.labels[repeat],
                     {slot: code.labels[label] for slot, label in self.functions.items()}, code.origins,
                     self.lw.cells, self.lw)

    def _function(self, entry: int) -> None:
        lo, hi = self.lw.bounds[entry]
        asm = self.asm
        asm.slot = entry
        asm.label(self.functions[entry])
        for sc in self.lw.code:
            if not lo <= sc.slot < hi:
                continue
            self.slot = asm.slot = sc.slot
            asm.label(self.labels[sc.slot])
            if self.lw.count and sc.slot in self.lw.leaders:
                self._charge(self.lw.leaders[sc.slot])
            self._instruction(sc)
        self.slot, asm.slot = hi, -1  # the image's own code, at no instruction
        self._fault(abi.FAULT_CONTROL, hi)  # falling off the end of the function
        stubs, self.stubs = self.stubs, []
        for stub in stubs:
            stub()

    # ---- labels and stubs --------------------------------------------------------------------------------

    def _target(self, slot: int, function: int) -> Label:
        """The label of a jump target: the slot's, or a fault where the VM would fault on reaching it."""
        lo, hi = self.lw.bounds[function]
        if lo <= slot < hi and slot in self.labels:
            return self.labels[slot]
        return self._control_fault(slot)

    def _control_fault(self, slot: int) -> Label:
        label = Label(f"control reaches {slot}")

        def stub() -> None:
            self.slot = self.asm.slot = slot  # the interpreter faults at the slot control reached
            self.asm.label(label)
            self._fault(abi.FAULT_CONTROL, slot)
        self.stubs.append(stub)
        return label

    def _stub(self, body, resume: Label | None = None) -> Label:
        """Out-of-line code: `body()` emitted after the function, then a jump back to `resume`."""
        label = Label("stub")
        at = self.slot

        def emit() -> None:
            self.slot = self.asm.slot = at
            self.asm.label(label)
            body()
            if resume is not None:
                self._jmp(resume)
        self.stubs.append(emit)
        return label

    def _kind(self, category: int, argument: int) -> int:
        return abi.kind(category, argument, self.lw.image)

    @contextmanager
    def _scratch(self):
        if not self.free:
            raise ValueError("expression too deep for the scratch registers")
        reg = self.free.pop(0)
        try:
            yield reg
        finally:
            self.free.insert(0, reg)

    # ---- instructions ------------------------------------------------------------------------------------

    def _instruction(self, sc) -> None:
        effects = sc.effects
        self.fetched.clear()
        self.free = list(self.scratch_regs)
        function = self.lw.function_of(sc.slot)
        skip: set[int] = set()
        for i, effect in enumerate(effects):
            if i in skip:
                continue
            if isinstance(effect, Fetch):
                target = self._fused_target(effects, i)
                if target is not None:
                    reg, index, extend = target
                    self._fetch(effect.node, reg)
                    if extend is not None:
                        self._extend(reg, extend)
                    skip.add(index)
                else:
                    reg = self.free.pop(0)
                    self._fetch(effect.node, reg)
                    self.fetched[effect.node] = reg
            elif isinstance(effect, SetReg):
                self._set_reg(effect.n, effect.value)
            elif isinstance(effect, Store):
                self._store(effect)
            elif isinstance(effect, AtomicRmw):
                self._atomic(effect)
            elif isinstance(effect, Branch):
                target = self._target(effect.target, function)
                if effect.cond is None:
                    self._jmp(target)
                else:
                    self._branch_if(effect.cond, target)
            elif isinstance(effect, MayGoto):
                self._may_goto(self._target(effect.target, function))
            elif isinstance(effect, Call):
                self._call(effect)
            elif isinstance(effect, Exit):
                self._exit()
            else:  # pragma: no cover - every effect type is handled above
                raise TypeError(effect)

    def _fused_target(self, effects, i):
        """A fetched value that only the next effect uses, to set a register (possibly sign-extended):
        fetch it straight into that register."""
        node = effects[i].node
        if i + 1 >= len(effects) or not isinstance(effects[i + 1], SetReg):
            return None
        nxt = effects[i + 1]
        if any(_uses(e, node) for e in effects[i + 2:]):
            return None
        if nxt.value == node:
            return self.H[nxt.n], i + 1, None
        if nxt.value.op == "sext" and nxt.value.args[0] == node and nxt.value.width == 64:
            return self.H[nxt.n], i + 1, nxt.value.value
        return None

    @staticmethod
    def _base_offset(addr: Node) -> tuple[int, int]:
        """A memory address as (BPF register, signed offset): the only shape the lowering produces."""
        if addr.op == "reg":
            return addr.value, 0
        if addr.op == "add" and addr.args[0].op == "reg" and addr.args[1].is_const:
            return addr.args[0].value, s64(addr.args[1].value)
        raise ValueError("a memory address that is not register + offset")

    # ---- calls -----------------------------------------------------------------------------------------

    def _call(self, effect: Call) -> None:
        if effect.kind == "helper":
            if not self._inline_helper(effect):
                self._callout(self._kind(abi.HELPER, effect.target))
        elif effect.kind == "kfunc":
            index = self.lw.cells.kfuncs.index((effect.target, effect.module))
            self._callout(self._kind(abi.KFUNC, index))
        elif effect.kind == "indirect":
            reg = self._leaf_reg(effect.addr)
            self._callout(self._kind(abi.RESOLVE, abi.RESOLVE_CALLX), lambda: self._arg(0, reg))
            self._local_call(None)
        else:
            self._local_call(effect.target)

    def _inline_helper(self, effect: Call) -> bool:
        """Emit the helper call `effect` as native code where the backend can (an array lookup and so
        on); False: it goes to the run as a call-back."""
        return False

    # ---- the machine side --------------------------------------------------------------------------------

    @abstractmethod
    def _jmp(self, label: Label) -> None: ...

    @abstractmethod
    def _branch_if(self, cond, label: Label) -> None:
        """Branch to `label` when the MIR condition `cond` holds."""

    @abstractmethod
    def _callout(self, kind: int, setup=None) -> None:
        """Call the run with `kind`, r1-r5 preserved; `setup()` puts the C arguments in place."""

    @abstractmethod
    def _arg(self, i: int, reg: int) -> None:
        """The C argument `i` from native register `reg` (inside a call-out's setup)."""

    @abstractmethod
    def _fault(self, what: int, value: int = 0) -> None: ...

    @abstractmethod
    def _charge(self, n: int) -> None:
        """Count `n` instructions against the run's budget (sandboxed code)."""

    @abstractmethod
    def _leaf_reg(self, node: Node) -> int | None: ...

    @abstractmethod
    def _fetch(self, node: Node, target: int) -> None: ...

    @abstractmethod
    def _extend(self, reg: int, from_width: int) -> None:
        """Sign-extend `reg`'s low `from_width` bits to 64."""

    @abstractmethod
    def _set_reg(self, n: int, value: Node) -> None: ...

    @abstractmethod
    def _store(self, effect: Store) -> None: ...

    @abstractmethod
    def _atomic(self, effect: AtomicRmw) -> None: ...

    @abstractmethod
    def _may_goto(self, target: Label) -> None:
        """may_goto: to `target` when the count is spent or the run's loop expired, else count one down."""

    @abstractmethod
    def _local_call(self, target: int | None) -> None: ...

    @abstractmethod
    def _exit(self) -> None: ...


def _uses(effect, node: Node) -> bool:
    def within(n) -> bool:
        return n == node or isinstance(n, Node) and any(within(a) for a in n.args)

    if isinstance(effect, SetReg):
        return within(effect.value)
    if isinstance(effect, Store):
        return within(effect.addr) or within(effect.value)
    if isinstance(effect, Branch) and effect.cond is not None:
        return within(effect.cond.lhs) or within(effect.cond.rhs)
    if isinstance(effect, Call) and effect.addr is not None:
        return within(effect.addr)
    return False
