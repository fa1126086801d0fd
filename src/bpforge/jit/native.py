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

from ..isa.ops import Load, decode_ops
from ..vm.context import Input
from ..vm.interp import Machine, RunResult, repeat_runs
from ..vm.program import VmProgram
from . import abi
from .image import Image
from .lower import lower
from .serve import JitError, RunBase
from .x86_64.select import compile_x86_64

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_uint64, *[ctypes.c_uint64] * 6)
_ENTRY = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p)
_CALL_FUNCTION = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64)
_REPEAT = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64)
_PROT_READ, _PROT_EXEC = 1, 4


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
        reason = self.unavailable()
        if reason is not None:
            raise JitError(reason)
        self.sandbox = sandbox
        self.facts = facts
        self.blind = blind
        self.images: list[LoadedImage] = []
        self._by_program: dict[int, LoadedImage] = {}
        self.next_cell = abi.CELLS

    @staticmethod
    def unavailable() -> str | None:
        return native_available()

    def load(self, image: Image, program: VmProgram):
        """The compiled image where its code runs."""
        return LoadedImage(image, program)

    def compile(self, lowered) -> Image:
        return compile_x86_64(lowered, blind=self.blind)

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
        loaded = self.load(self.compile(lowered), program)
        self.images.append(loaded)
        self._by_program[id(program)] = loaded
        return loaded


class NativeRun(RunBase):
    """One input's runs of native code: the control block in this process's memory, the VM's buffers
    reached where they are."""

    def __init__(self, session: JitSession, machine: Machine, inp: Input) -> None:
        self._block = (ctypes.c_uint64 * (abi.SIZE // abi.CELL))()
        super().__init__(session, machine, inp, self._block)
        self.ctl_address = ctypes.addressof(self._block)
        self._callback = _CALLBACK(self._call_back)  # kept alive as long as the run
        self._tables: list = []  # the ctypes arrays behind the array-lookup tables, kept alive
        self._start(ctypes.cast(self._callback, ctypes.c_void_p).value)

    def _bytes_address(self, region) -> int:
        return _address_of(region.buf)

    def _new_table(self, entries: int) -> int:
        table = (ctypes.c_uint64 * entries)()
        self._tables.append(table)
        return ctypes.addressof(table)

    def _table_store(self, table: int, index: int, value: int) -> None:
        ctypes.c_uint64.from_address(table + 8 * index).value = value

    def _table_clear(self, table: int, entries: int) -> None:
        ctypes.memset(table, 0, 8 * entries)

    def _enter(self) -> int:
        return self.main.entry(self.ctl_address)

    def _enter_function(self, loaded, address: int) -> int:
        return loaded.call_function(self.ctl_address, address)

    def repeat(self, n: int) -> int:
        """n runs in native code (test_run's loop); r0 of the last."""
        self._refresh_context()
        retval = self.main.repeat(self.ctl_address, n)
        self._raise_failure()
        return retval


def _address_of(buf) -> int:
    """The native address of a region's bytes (valid until the buffer is resized, which only packet
    helpers do: the tables are synced after them)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))
    except (TypeError, ValueError) as err:
        raise JitError(f"memory of type {type(buf).__name__} cannot be reached from native code: {err}") from None


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
