"""Serving JIT code's call-backs with the VM's machine: one implementation for every place code runs (native
x86-64 in this process, arm64/riscv64 on an emulated device).

`RunBase` is one input's runs: the control block (`ctl`, indexed by cell, whatever memory holds it), the
region tables kept in step with the VM's `Memory`, and the call-back that serves every category (`abi`:
helpers, kfuncs, sandboxed loads and stores, LD_ABS, arena casts, cell resolution, the instruction budget,
faults) with the VM's own helpers, kfuncs and memory, so a helper or fault is the interpreter's, with its
message. A subclass says where things live: the address code uses for a region's bytes, the tables of
inlined array lookups, and how to enter code (`_enter`, `_enter_function`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..errors import BpforgeError
from ..isa.helpers import CHANGES_PACKET_DATA
from ..isa.numbers import M64, s32
from ..vm.context import Input
from ..vm.helpers import TailCall, call_helper, legacy_load
from ..vm.helpers.skb import LEGACY_LOAD_TYPES
from ..vm.interp import KERNEL_OBJECT_REFUSAL, MAX_CALL_FRAMES, STACK_SIZE, Clock, Machine
from ..vm.kfuncs import call_kfunc
from ..vm.maps.arena import addr_space_cast
from ..vm.memory import Region, VmFault
from ..vm.program import VmProgram
from . import abi
from .lower import MAP_LOOKUP_ELEM, MAP_NEUTRAL_HELPERS, cache_hash


class JitError(BpforgeError):
    """The JIT cannot run this program here."""


class _Aborted(Exception):
    """A run ended early without an error (a failed LD_ABS: r0 = 0)."""


class RunBase(ABC):
    """One input's runs of JIT code: the `vm` the VM's helpers receive (.machine, .input, .tail_calls,
    .call_function). `session.image(program)` gives a loaded image with `.image`, `.program` and
    `.function(slot)` (the address code calls a function at)."""

    cached_lookups = True  # the images look hash-like maps up through caches the run fills and empties

    def __init__(self, session, machine: Machine, inp: Input, ctl) -> None:
        self.session = session
        self.machine = machine
        self.input = inp
        self.ctl = ctl
        self.main = session.image(machine.program)
        self.clock = Clock(machine.budget, machine.program)
        self.error: BaseException | None = None
        self.aborted = False
        self._mapped = 0  # regions the tables hold
        self._calling_program = machine.program
        self._array_tables: dict[int, tuple[int, int]] = {}  # map handle -> (its table's address, entries)
        self._caches: dict[int, tuple] = {}  # map handle -> (its lookup cache's address, lower.InlineLookup)

    def _start(self, callback: int) -> None:
        """The cells every run starts from; `callback`: the address code calls the run at."""
        ctl, inp, machine = self.ctl, self.input, self.machine
        ctl[abi.CALLBACK // 8] = callback
        ctl[abi.R1_IN // 8], ctl[abi.R2_IN // 8] = inp.r1 & M64, inp.r2 & M64
        for depth in range(MAX_CALL_FRAMES):
            ctl[abi.STACK_TOP // 8 + depth] = machine.stack(depth).base + STACK_SIZE
        ctl[abi.LIMIT // 8] = ctl[abi.BUDGET // 8] = machine.budget
        for loaded in self.session.images:
            self._fill_cells(loaded)
        self._sync(full=True)

    # ---- where things live (subclasses) ---------------------------------------------------------------

    @abstractmethod
    def _bytes_address(self, region: Region) -> int:
        """The address code reaches `region`'s bytes at (valid until the tables are synced again)."""

    @abstractmethod
    def _new_table(self, entries: int) -> int:
        """A zeroed table of `entries` u64 (an inlined array lookup's value addresses): its address."""

    @abstractmethod
    def _table_store(self, table: int, index: int, value: int) -> None:
        ...

    @abstractmethod
    def _table_clear(self, table: int, entries: int) -> None:
        ...

    @abstractmethod
    def _enter(self) -> int:
        """Run the main image's entry once: r0."""

    @abstractmethod
    def _enter_function(self, loaded, address: int) -> int:
        """Run `loaded`'s call_function for the function at `address`: its r0."""

    # ---- the helpers' view -------------------------------------------------------------------------------

    @property
    def tail_calls(self) -> int:
        return self.ctl[abi.TAIL_CALLS // 8]

    @tail_calls.setter
    def tail_calls(self, value: int) -> None:
        self.ctl[abi.TAIL_CALLS // 8] = value

    def call_function(self, addr: int, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
        """A helper's call of a BPF function (bpf_loop's callback), as `Interpreter.call_function`."""
        program, slot = self.machine.code_at(addr)
        if program is not self._calling_program or slot not in program.entries:
            raise VmFault(f"callback to slot {slot}, which is not a function of this program")
        ctl = self.ctl
        if ctl[abi.DEPTH // 8] + 1 >= MAX_CALL_FRAMES:
            raise VmFault(f"call depth exceeds {MAX_CALL_FRAMES} frames")
        saved = ctl[abi.R0 // 8], ctl[abi.SLOT // 8], ctl[abi.VALUE // 8]
        for i, value in enumerate((r1, r2, r3, r4, r5)):
            ctl[abi.ARGS // 8 + i] = value & M64
        loaded = self.session.image(program)
        result = self._enter_function(loaded, loaded.function(slot))
        ctl[abi.R0 // 8], ctl[abi.SLOT // 8], ctl[abi.VALUE // 8] = saved
        if self.error is not None:
            raise self.error
        if self.aborted:
            raise _Aborted()
        return result

    # ---- running -------------------------------------------------------------------------------------

    def once(self) -> tuple[int, int]:
        """One run from the program's first instruction: (r0, instructions counted)."""
        ctl = self.ctl
        self.clock.reset()
        for cell in (abi.EXECUTED, abi.TAIL_CALLS, abi.EXPIRED, abi.ERROR):
            ctl[cell // 8] = 0
        ctl[abi.BUDGET // 8] = self.clock.budget
        self._refresh_context()
        retval = self._enter()
        self._raise_failure()
        return retval, ctl[abi.EXECUTED // 8]

    def _raise_failure(self) -> None:
        error, self.error, self.aborted = self.error, None, False
        if error is not None:
            raise error

    # ---- the call-back -------------------------------------------------------------------------------

    def _call_back(self, a1, a2, a3, a4, a5, kind) -> int:
        ctl = self.ctl
        category, argument, image = kind >> 32 & 0xFFFF, kind & 0xFFFFFFFF, kind >> 48
        program = self.session.images[image].program
        try:
            status = self._serve(category, argument, program, a1, a2, a3, a4, a5)
            # Only packet helpers, kfuncs and arena casts move or resize memory; the rest can only map more.
            self._sync(full=category in (abi.KFUNC, abi.CAST) or
                       category == abi.HELPER and argument in CHANGES_PACKET_DATA)
            return status
        except _Aborted:
            self.aborted = True
        except BpforgeError as err:
            self.error = err.at(insn=ctl[abi.SLOT // 8])
        except BaseException as err:  # Ctrl-C and the like: code unwinds, the run re-raises
            self.error = err
        ctl[abi.ERROR // 8] = 1
        return abi.ABORT

    def _serve(self, category, argument, program, a1, a2, a3, a4, a5) -> int:
        ctl, memory = self.ctl, self.machine.memory
        if category == abi.HELPER:
            self._calling_program = program
            result = call_helper(self, argument, a1, a2, a3, a4, a5)
            if isinstance(result, TailCall):
                target = self.session.image(result.program)
                self._fill_cells(target)
                ctl[abi.TAIL_TARGET // 8] = target.function(0)
                return abi.TAIL_CALL
            if argument != MAP_LOOKUP_ELEM and argument not in MAP_NEUTRAL_HELPERS:
                self._empty_caches()  # the helper may have added, removed or replaced map elements
            if result is not None:
                ctl[abi.R0 // 8] = result
                if argument == MAP_LOOKUP_ELEM:
                    self._remember_lookup(a1, a2, result)
        elif category == abi.KFUNC:
            self._empty_caches()
            btf_id, module = self.session.image(program).image.cells.kfuncs[argument]
            ctl[abi.R0 // 8] = call_kfunc(self, btf_id, module, a1, a2, a3, a4, a5) & M64
        elif category == abi.LOAD:
            ctl[abi.VALUE // 8] = memory.load(a1, argument)
        elif category == abi.STORE:
            memory.store(a1, argument, a2)
        elif category == abi.ATOMIC:
            memory.translate(a1, argument)
            region, offset = memory.translate(a1, argument, write=True)
            ctl[abi.VALUE // 8] = self._bytes_address(region) + offset
        elif category == abi.LEGACY:
            value = legacy_load(self.input, argument, s32(a1))
            if value is None:
                raise _Aborted()
            ctl[abi.VALUE // 8] = value
        elif category == abi.CAST:
            ctl[abi.VALUE // 8] = addr_space_cast(self.machine, argument, a1) & M64
        elif category == abi.RESOLVE:
            self._resolve(argument, program, a1)
        elif category == abi.TICK:
            clock = self.clock
            clock.executed = ctl[abi.EXECUTED // 8]
            while clock.executed > clock.budget:
                clock.exhausted()
            ctl[abi.BUDGET // 8], ctl[abi.EXPIRED // 8] = clock.budget, int(clock.expired)
        elif category == abi.FAULT:
            raise VmFault(fault_message(argument, a1))
        return abi.CONTINUE

    def _remember_lookup(self, handle: int, key_ptr: int, result: int) -> None:
        """What an inlined lookup finds next time without the helper: an array index's value address, or a
        hash-like map's result for this key (0 included) in its cache."""
        memory = self.machine.memory
        if handle in self._array_tables:
            table, entries = self._array_tables[handle]
            index = int.from_bytes(memory.read(key_ptr, 4), "little")
            if result and index < entries:
                self._table_store(table, index, result)
        elif handle in self._caches:
            cache, inline = self._caches[handle]
            key = memory.read(key_ptr, inline.key_size)
            words, at = [], 0
            for size in inline.key_words:
                words.append(int.from_bytes(key[at:at + size], "little"))
                at += size
            base = cache_hash(words) * inline.slot_size // 8
            for i, value in enumerate([1, *words, result]):
                self._table_store(cache, base + i, value)

    def _empty_caches(self) -> None:
        for cache, inline in self._caches.values():
            self._table_clear(cache, inline.cache_words)

    def _resolve(self, what: int, program: VmProgram, value: int) -> None:
        ctl = self.ctl
        if what == abi.RESOLVE_CALLX:
            callee, slot = self.machine.code_at(value)
            if callee is not program or slot not in program.entries:
                raise VmFault(f"callx to slot {slot}, which is not a function of this program")
            ctl[abi.VALUE // 8] = self.session.image(program).function(slot)
            return
        loaded = self.session.image(program)
        ctl[value // 8] = self._cell_value(loaded, value)

    def _cell_value(self, loaded, cell: int) -> int:
        cells, program, machine = loaded.image.cells, loaded.program, self.machine
        for ref, at in cells.maps.items():
            if at == cell:
                return machine.map_handle(program.map_at(ref))
        for ref, at in cells.map_values.items():
            if at == cell:
                return machine.data_pointer(program.map_at(ref))
        for slot, at in cells.functions.items():
            if at == cell:
                return machine.code_pointer(program, slot)
        raise JitError(f"no value for control-block cell {cell}")

    def _fill_cells(self, loaded) -> None:
        """Every cell whose value can be had now; the others stay 0 and are resolved (or fault, as the VM
        would) when code first reads them."""
        cells = loaded.image.cells
        for ref, cell in cells.array_tables.items():
            vm_map = loaded.program.map_at(ref)
            handle = self.machine.map_handle(vm_map)
            if handle not in self._array_tables:
                self._array_tables[handle] = (self._new_table(vm_map.max_entries), vm_map.max_entries)
            self.ctl[cell // 8] = self._array_tables[handle][0]
        for inline in loaded.image.lowered.lookups.values():
            if inline.kind != "cache" or not self.cached_lookups:
                continue
            handle = self.machine.map_handle(loaded.program.map_at(inline.ref))
            if handle not in self._caches:
                self._caches[handle] = (self._new_table(inline.cache_words), inline)
            self.ctl[cells.lookup_caches[inline.ref] // 8] = self._caches[handle][0]
        for cell in [*cells.maps.values(), *cells.map_values.values(), *cells.functions.values()]:
            try:
                self.ctl[cell // 8] = self._cell_value(loaded, cell)
            except BpforgeError:
                self.ctl[cell // 8] = 0
        self._sync(full=False)

    def _refresh_context(self) -> None:
        """The context fields the VM computes, for the loads that read them through cells; where LD_ABS
        reads the packet."""
        packet, ctl = self.input.packet, self.ctl
        if packet is not None and self.input.prog_type in LEGACY_LOAD_TYPES:
            ctl[abi.PKT_DATA // 8] = self._bytes_address(packet.region) + packet.data
            ctl[abi.PKT_LEN // 8] = max(packet.end - packet.data, 0)
        ctx = self.input.ctx
        if ctx is None:
            return
        for loaded in self.session.images:
            lowered = loaded.image.lowered
            for slot, cell in lowered.cells.ctx_loads.items():
                offset, size = lowered.ctx_fields[slot]
                self.ctl[cell // 8] = self.machine.memory.load(ctx.base + offset, size)

    def _sync(self, full: bool) -> None:
        """The region tables after memory changed: regions mapped since (always), and with `full` every
        region's bytes, bounds and flags again (packet helpers move and resize the packet)."""
        regions = self.machine.memory.regions
        start = 0 if full else self._mapped
        ctl = self.ctl
        if len(regions) > abi.MAX_REGIONS:
            raise JitError(f"the run maps more than {abi.MAX_REGIONS} memory regions")
        for i in range(start, len(regions)):
            region = regions[i]
            special = bool(region.pointers or region.computed) or not len(region.buf)
            address = self._bytes_address(region) if len(region.buf) else 0
            ctl[abi.DELTA // 8 + i] = (address - region.base) & M64
            ctl[abi.LO // 8 + i] = region.lo
            ctl[abi.HI // 8 + i] = region.limit()
            ctl[abi.FLAGS // 8 + i] = (abi.FLAG_SPECIAL if special else 0) | (0 if region.writable else abi.FLAG_READONLY)
        self._mapped = len(regions)
        ctl[abi.NREGIONS // 8] = len(regions)
        if full:
            self._refresh_context()


def fault_message(what: int, value: int) -> str:
    if what == abi.FAULT_DEPTH:
        return f"call depth exceeds {MAX_CALL_FRAMES} frames"
    if what == abi.FAULT_CONTROL:
        return f"control reached slot {value}, which is not an instruction of this function"
    if what == abi.FAULT_KERNEL_OBJECT:
        return KERNEL_OBJECT_REFUSAL
    return f"native code fault {what}"
