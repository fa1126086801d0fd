"""Running x86-64 images in this process: code in mmap'd memory (written, then made read+execute, never
both), called through ctypes, with the VM's machine behind it.

The VM's `Machine` keeps what it keeps for the interpreter: memory regions, maps, the input, the clock. Native
code computes with the VM's addresses and reaches the bytes through the region tables of the control block
(`abi`), which `NativeRun` keeps in step with `Memory` after every call-back. Helpers, kfuncs and whatever
native code leaves to the run (faults, sandboxed accesses that are not plain bytes, LD_ABS) are the VM's
own functions called from one ctypes call-back, so every helper and map type the VM has works natively,
and a fault is the interpreter's fault, with its message.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import time
from collections.abc import Callable

from ..errors import BpforgeError
from ..isa.helpers import CHANGES_PACKET_DATA
from ..isa.numbers import M64, s32
from ..isa.ops import Load, decode_ops
from ..vm.context import Input
from ..vm.helpers import TailCall, call_helper, legacy_load
from ..vm.helpers.skb import LEGACY_LOAD_TYPES
from ..vm.interp import (
    KERNEL_OBJECT_REFUSAL, MAX_CALL_FRAMES, STACK_SIZE, Clock, Machine, RunResult, repeat_runs,
)
from ..vm.kfuncs import call_kfunc
from ..vm.maps.arena import addr_space_cast
from ..vm.memory import VmFault
from ..vm.program import VmProgram
from . import abi
from .image import Image
from .lower import CACHE_SLOTS, MAP_LOOKUP_ELEM, MAP_NEUTRAL_HELPERS, cache_hash, lower
from .x86_64.select import compile_x86_64

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_uint64, *[ctypes.c_uint64] * 6)
_ENTRY = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p)
_CALL_FUNCTION = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64)
_REPEAT = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64)
_PROT_READ, _PROT_EXEC = 1, 4


class JitError(BpforgeError):
    """The JIT cannot run this program here."""


def native_available() -> str | None:
    """None when x86-64 images can run in this process, else why not."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"native JIT code runs on x86-64 hosts; this one is {machine}"
    return None


class ExecutableCode:
    """Bytes in their own mapping: written while writable, then read+execute."""

    def __init__(self, code: bytes) -> None:
        size = max(mmap.PAGESIZE, -(-len(code) // mmap.PAGESIZE) * mmap.PAGESIZE)
        self._map = mmap.mmap(-1, size, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._map.write(code)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        if libc.mprotect(self.address, size, _PROT_READ | _PROT_EXEC) != 0:
            raise JitError(f"mprotect refused to make JIT code executable (errno {ctypes.get_errno()})")


class LoadedImage:
    def __init__(self, image: Image, program: VmProgram) -> None:
        self.image = image
        self.program = program
        self.memory = ExecutableCode(image.code)
        base = self.memory.address
        self.entry = _ENTRY(base + image.entry)
        self.call_function = _CALL_FUNCTION(base + image.call_function)
        self.repeat = _REPEAT(base + image.repeat)

    def function(self, slot: int) -> int:
        return self.memory.address + self.image.functions[slot]


class JitSession:
    """The images of a program and of every program it tail-calls, compiled on first use, sharing one
    layout of control-block cells. `facts(program)`: (ctx_fields, checked) for a verified program's loads,
    or None to check every load; ignored in sandbox mode."""

    def __init__(self, sandbox: bool, facts: Callable[[VmProgram], tuple[dict, frozenset] | None], *,
                 blind: bool = False) -> None:
        reason = native_available()
        if reason is not None:
            raise JitError(reason)
        self.sandbox = sandbox
        self.facts = facts
        self.blind = blind
        self.images: list[LoadedImage] = []
        self._by_program: dict[int, LoadedImage] = {}
        self.next_cell = abi.CELLS

    @classmethod
    def of(cls, main: VmProgram, facts, *, blind: bool = False) -> "JitSession":
        """A session for `main` with our verifier's `facts` (`jit.facts.Facts`; None or not accepted:
        sandboxed). Other programs (tail-call targets) are compiled with every load checked. `blind`: every
        image's constants blinded."""
        if facts is None or not facts.accepted:
            return cls(True, lambda program: None, blind=blind)
        return cls(False, lambda program: (facts.ctx_fields, facts.checked) if program is main else None,
                   blind=blind)

    def image(self, program: VmProgram) -> LoadedImage:
        loaded = self._by_program.get(id(program))
        if loaded is not None and loaded.program is program:
            return loaded
        ctx_fields, checked = {}, frozenset()
        if not self.sandbox:
            found = self.facts(program)
            if found is None:  # no facts: every load checked, as a context load may need the run
                checked = frozenset(s for s, op in enumerate(decode_ops(program.insns)) if isinstance(op, Load))
            else:
                ctx_fields, checked = found
        lowered = lower(program, sandbox=self.sandbox, ctx_fields=ctx_fields, checked=checked,
                        image=len(self.images), first_cell=self.next_cell)
        self.next_cell = lowered.cells.next
        loaded = LoadedImage(compile_x86_64(lowered, blind=self.blind), program)
        self.images.append(loaded)
        self._by_program[id(program)] = loaded
        return loaded


class _Aborted(Exception):
    """A run ended early without an error (a failed LD_ABS: r0 = 0)."""


class NativeRun:
    """One input's runs of native code: the control block, the region tables, and the `vm` the VM's
    helpers receive (.machine, .input, .tail_calls, .call_function)."""

    def __init__(self, session: JitSession, machine: Machine, inp: Input) -> None:
        self.session = session
        self.machine = machine
        self.input = inp
        self.main = session.image(machine.program)
        self.clock = Clock(machine.budget, machine.program)
        self.ctl = (ctypes.c_uint64 * (abi.SIZE // abi.CELL))()
        self.ctl_address = ctypes.addressof(self.ctl)
        self.error: BaseException | None = None
        self.aborted = False
        self._mapped = 0  # regions the tables hold
        self._callback = _CALLBACK(self._call_back)  # kept alive as long as the run
        self._calling_program = machine.program
        self._array_tables: dict[int, tuple] = {}  # map handle -> (its table of value addresses, the map)
        self._caches: dict[int, tuple] = {}  # map handle -> (its lookup cache, lower.InlineLookup)
        ctl = self.ctl
        ctl[abi.CALLBACK // 8] = ctypes.cast(self._callback, ctypes.c_void_p).value
        ctl[abi.R1_IN // 8], ctl[abi.R2_IN // 8] = inp.r1 & M64, inp.r2 & M64
        for depth in range(MAX_CALL_FRAMES):
            ctl[abi.STACK_TOP // 8 + depth] = machine.stack(depth).base + STACK_SIZE
        ctl[abi.LIMIT // 8] = ctl[abi.BUDGET // 8] = machine.budget
        for loaded in session.images:
            self._fill_cells(loaded)
        self._sync(full=True)

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
        result = loaded.call_function(self.ctl_address, loaded.function(slot))
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
        retval = self.main.entry(self.ctl_address)
        self._raise_failure()
        return retval, ctl[abi.EXECUTED // 8]

    def repeat(self, n: int) -> int:
        """n runs in native code (test_run's loop); r0 of the last."""
        self._refresh_context()
        retval = self.main.repeat(self.ctl_address, n)
        self._raise_failure()
        return retval

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
        except BaseException as err:  # Ctrl-C and the like: native code unwinds, the run re-raises
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
            ctl[abi.VALUE // 8] = _address_of(region.buf) + offset
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
            raise VmFault(_fault_message(argument, a1))
        return abi.CONTINUE

    def _remember_lookup(self, handle: int, key_ptr: int, result: int) -> None:
        """What an inlined lookup finds natively next time: an array index's value address, or a hash-like
        map's result for this key (0 included) in its cache."""
        memory = self.machine.memory
        if handle in self._array_tables:
            table, _ = self._array_tables[handle]
            index = int.from_bytes(memory.read(key_ptr, 4), "little")
            if result and index < len(table):
                table[index] = result
        elif handle in self._caches:
            cache, inline = self._caches[handle]
            key = memory.read(key_ptr, inline.key_size)
            words, at = [], 0
            for size in inline.key_words:
                words.append(int.from_bytes(key[at:at + size], "little"))
                at += size
            base = cache_hash(words) * inline.slot_size // 8
            cache[base:base + 2 + len(words)] = [1, *words, result]

    def _empty_caches(self) -> None:
        for cache, _ in self._caches.values():
            ctypes.memset(cache, 0, ctypes.sizeof(cache))

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

    def _cell_value(self, loaded: LoadedImage, cell: int) -> int:
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

    def _fill_cells(self, loaded: LoadedImage) -> None:
        """Every cell whose value can be had now; the others stay 0 and are resolved (or fault, as the VM
        would) when code first reads them."""
        cells = loaded.image.cells
        for ref, cell in cells.array_tables.items():
            vm_map = loaded.program.map_at(ref)
            handle = self.machine.map_handle(vm_map)
            if handle not in self._array_tables:
                self._array_tables[handle] = ((ctypes.c_uint64 * vm_map.max_entries)(), vm_map)
            self.ctl[cell // 8] = ctypes.addressof(self._array_tables[handle][0])
        for slot, inline in loaded.image.lowered.lookups.items():
            if inline.kind != "cache":
                continue
            handle = self.machine.map_handle(loaded.program.map_at(inline.ref))
            if handle not in self._caches:
                words = CACHE_SLOTS * inline.slot_size // 8
                self._caches[handle] = ((ctypes.c_uint64 * words)(), inline)
            self.ctl[cells.lookup_caches[inline.ref] // 8] = ctypes.addressof(self._caches[handle][0])
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
            ctl[abi.PKT_DATA // 8] = _address_of(packet.region.buf) + packet.data
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
            buf = region.buf
            special = bool(region.pointers or region.computed) or not len(buf)
            native = _address_of(buf) if len(buf) else 0
            ctl[abi.DELTA // 8 + i] = (native - region.base) & M64
            ctl[abi.LO // 8 + i] = region.lo
            ctl[abi.HI // 8 + i] = region.limit()
            ctl[abi.FLAGS // 8 + i] = (abi.FLAG_SPECIAL if special else 0) | (0 if region.writable else abi.FLAG_READONLY)
        self._mapped = len(regions)
        ctl[abi.NREGIONS // 8] = len(regions)
        if full:
            self._refresh_context()


def _address_of(buf) -> int:
    """The native address of a region's bytes (valid until the buffer is resized, which only packet
    helpers do: the tables are synced after them)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))
    except (TypeError, ValueError) as err:
        raise JitError(f"memory of type {type(buf).__name__} cannot be reached from native code: {err}") from None


def _fault_message(what: int, value: int) -> str:
    if what == abi.FAULT_DEPTH:
        return f"call depth exceeds {MAX_CALL_FRAMES} frames"
    if what == abi.FAULT_CONTROL:
        return f"control reached slot {value}, which is not an instruction of this function"
    if what == abi.FAULT_KERNEL_OBJECT:
        return KERNEL_OBJECT_REFUSAL
    return f"native code fault {what}"


def run_native(machine: Machine, session: JitSession, data: bytes = b"", prog_type: str = "xdp",
               ctx_in: bytes | None = None, repeat: int = 1, stop=None, native_loop: bool = False) -> RunResult:
    """Run `machine.program` natively: the same results and faults as `Machine.run`. With `native_loop`,
    the repeat loop runs in native code as test_run's does (for timing), in growing chunks between which
    `stop(runs done)` may end it; a Ctrl-C between chunks keeps what was done."""
    inp = machine.start(data, prog_type, ctx_in)
    run = NativeRun(session, machine, inp)
    if not native_loop or repeat == 1 or inp.before_run is not None or inp.after_run is not None:
        return repeat_runs(machine, inp, run.once, repeat, stop)
    done, chunk, retval, stopped, loop_ns = 0, 1, 0, None, 0
    try:
        while done < repeat:
            n = min(chunk, repeat - done)
            started = time.perf_counter_ns()
            retval = run.repeat(n)
            loop_ns += time.perf_counter_ns() - started
            done += n
            if done < repeat and stop is not None and stop(done):
                stopped = "budget"
                break
            chunk = min(chunk * 2, 1 << 20)
    except KeyboardInterrupt:
        if not done:
            raise
        stopped = "interrupted"
    return RunResult(retval, inp.data_out(), inp.ctx_out(), run.ctl[abi.EXECUTED // 8], machine.trace, done, stopped,
                     loop_ns)
