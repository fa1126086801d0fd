"""arm64 and riscv64 images on an emulated device (unicorn): a core with its own memory map, and a small
"firmware" that serves the code's call-backs with the VM's machine.

The device's memory map (device addresses):
  FIRMWARE  the call-back routine (`ret`; a hook on its address serves the call first) and the return
            addresses runs are started with (emulation stops there)
  CONTROL   the control block (`abi`), read and written by code and by the run alike
  STACK     the native stack (saved registers and return addresses; BPF stacks are VM regions)
  CODE      the session's images, one after the other (a tail-call target compiled mid-run is added)
  TABLES    the inlined array lookups' value-address tables
  REGIONS   the VM's regions' bytes (packet, context, stacks, map values), each copied in when it is
            mapped: DELTA in the region tables is its device address minus its VM base, as natively.

The VM keeps its own `Memory` (its helpers read and write it), so bytes are copied across: the device's
changes back into the VM before a call-back is served and after a run, the VM's changes onto the device
after a call-back and before a run. Only regions whose bytes differ from the last copy are written, and a
region that moved or grew is mapped afresh (the tables synced). Serving is `serve.RunBase`'s, the same as
native x86-64's; so are the faults and their messages.
"""

from __future__ import annotations

from ..isa.numbers import M64
from ..vm.context import Input
from ..vm.interp import Machine, RunResult, repeat_runs
from ..vm.program import VmProgram
from . import abi
from .backends import compile_lowered
from .image import Image
from .native import JitSession
from .serve import JitError, RunBase

FIRMWARE = 0x0010_0000
CONTROL = 0x0100_0000
STACK, STACK_SIZE = 0x0800_0000, 1 << 20
CODE, CODE_SIZE = 0x1000_0000, 16 << 20
TABLES, TABLES_SIZE = 0x2000_0000, 64 << 20
REGIONS, REGIONS_SIZE = 0x4000_0000, 512 << 20
PAGE = 0x1000
_CONTROL_SIZE = -(-abi.SIZE // PAGE) * PAGE
_RETURN = FIRMWARE + 0x100  # + 4 * nesting depth: where a run started from the host returns to
DEVICE_ARCHES = ("arm64", "riscv64")


def unicorn_available() -> str | None:
    """None when the device backends can run here, else why not."""
    try:
        import unicorn  # noqa: F401
    except ImportError:
        return "the arm64 and riscv64 JITs run on an emulated device, which needs unicorn (pip install 'bpforge[jit]')"
    return None


def _align(n: int, to: int = 16) -> int:
    return -(-n // to) * to


class _Arch:
    """What the emulator needs of an architecture: its unicorn constants, argument/return/link/stack
    registers and the firmware's instructions."""

    def __init__(self, arch: str) -> None:
        import unicorn

        if arch == "arm64":
            from unicorn import arm64_const as c

            from .arm64 import encode as A
            self.uc = unicorn.Uc(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM)
            self.uc.ctl_set_cpu_model(c.UC_CPU_ARM64_MAX)  # ARMv8.1+ for the LSE atomics
            self.args = tuple(c.UC_ARM64_REG_X0 + i for i in range(6))
            self.lr, self.sp, self.pc = c.UC_ARM64_REG_X30, c.UC_ARM64_REG_SP, c.UC_ARM64_REG_PC
            self.ret, self.trap = A.ret(), A.brk(2)
        elif arch == "riscv64":
            from unicorn import riscv_const as c

            from .riscv64 import encode as R
            self.uc = unicorn.Uc(unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV64)
            self.args = tuple(c.UC_RISCV_REG_A0 + i for i in range(6))
            self.lr, self.sp, self.pc = c.UC_RISCV_REG_RA, c.UC_RISCV_REG_SP, c.UC_RISCV_REG_PC
            self.ret, self.trap = R.ret(), R.ebreak()
        else:
            raise JitError(f"no emulated device for {arch} (devices: {', '.join(DEVICE_ARCHES)})")


class Device:
    """One emulated core and its memory. Code stays for the device's life; regions, tables and the
    control block's cells are per run (`begin`)."""

    def __init__(self, arch: str) -> None:
        import unicorn

        self.arch = arch
        self._unicorn = unicorn
        a = _Arch(arch)
        self.uc, self.args, self.lr, self.sp, self.pc = a.uc, a.args, a.lr, a.sp, a.pc
        uc = self.uc
        for base, size in ((FIRMWARE, PAGE), (CONTROL, _CONTROL_SIZE), (STACK, STACK_SIZE), (CODE, CODE_SIZE),
                           (TABLES, TABLES_SIZE), (REGIONS, REGIONS_SIZE)):
            uc.mem_map(base, size)
        uc.mem_write(FIRMWARE, a.ret)
        uc.mem_write(_RETURN, a.trap * 16)
        uc.hook_add(unicorn.UC_HOOK_CODE, self._firmware, begin=FIRMWARE, end=FIRMWARE)
        uc.hook_add(unicorn.UC_HOOK_BLOCK, self._count)
        self.code_next = CODE
        self.executed = 0  # device instructions of the current run (a block hook adds each block's)
        # Where each BPF instruction's code starts (address -> (image, slot)), and how often each started in
        # the current run: what a profile's per-instruction costs are charged on (`offload`).
        self.starts: dict[int, tuple[int, int]] = {}
        self.slot_counts: dict[tuple[int, int], int] | None = None
        self._block_starts: dict[tuple[int, int], tuple] = {}
        self.run: DeviceRun | None = None
        self.depth = 0
        self._regions: dict[int, list] = {}  # region index -> [address, capacity, buf, last copy]
        self._region_next = REGIONS
        self._table_next = TABLES

    # ---- memory ------------------------------------------------------------------------------------------

    def place(self, code: bytes) -> int:
        address = self.code_next
        if address + len(code) > CODE + CODE_SIZE:
            raise JitError(f"the device's code memory ({CODE_SIZE >> 20} MiB) is full")
        self.uc.mem_write(address, code)
        self.code_next = _align(address + len(code), 64)
        return address

    def count_slots(self, image: Image, address: int, index: int) -> None:
        """Count the BPF instructions of `image` (placed at `address`, the session's image `index`) as
        they start, from the next run on."""
        first: dict[int, int] = {}
        for offset, _, slot in image.origins:
            if slot >= 0:
                first[slot] = min(offset, first.get(slot, offset))
        self.starts.update({address + offset: (index, slot) for slot, offset in first.items()})
        self._block_starts.clear()
        if self.slot_counts is None:
            self.slot_counts = {}

    def begin(self, run: "DeviceRun") -> None:
        self.run = run
        self.executed = 0
        if self.slot_counts is not None:
            self.slot_counts = {}
        self._regions.clear()
        self._region_next, self._table_next = REGIONS, TABLES
        self.uc.mem_write(CONTROL, bytes(abi.DELTA))  # the cells; the region tables are written as mapped

    def read_cell(self, index: int) -> int:
        return int.from_bytes(self.uc.mem_read(CONTROL + 8 * index, 8), "little")

    def write_cell(self, index: int, value: int) -> None:
        self.uc.mem_write(CONTROL + 8 * index, (value & M64).to_bytes(8, "little"))

    def table(self, entries: int) -> int:
        address = self._table_next
        if address + 8 * entries > TABLES + TABLES_SIZE:
            raise JitError("the device's table memory is full")
        self.uc.mem_write(address, bytes(8 * entries))
        self._table_next = _align(address + 8 * entries)
        return address

    def region_address(self, region) -> int:
        """The device address of `region`'s bytes, mapping it (and copying them in) when it is new, moved
        to another buffer or grew past its room."""
        index = (region.base >> 32) - 1
        buf = region.buf
        known = self._regions.get(index)
        if known is not None and known[2] is buf and len(buf) <= known[1]:
            return known[0]
        address, room = self._region_next, _align(max(len(buf), 1))
        if address + room > REGIONS + REGIONS_SIZE:
            raise JitError(f"the device's region memory ({REGIONS_SIZE >> 20} MiB) is full")
        self._region_next = address + room
        data = bytes(buf)
        self.uc.mem_write(address, data)
        self._regions[index] = [address, room, buf, data]
        return address

    def pull(self) -> None:
        """The device's changes to writable regions into the VM's buffers."""
        regions = self.run.machine.memory.regions
        for index, known in self._regions.items():
            address, _, buf, last = known
            if not regions[index].writable or not len(buf):
                continue
            data = bytes(self.uc.mem_read(address, len(buf)))
            if data != last:
                buf[:len(data)] = data
                known[3] = data

    def push(self) -> bool:
        """The VM's changes onto the device; True when a region must be mapped afresh (the caller syncs
        the tables)."""
        regions = self.run.machine.memory.regions
        moved = False
        for index, known in self._regions.items():
            address, room, buf, last = known
            region = regions[index]
            if region.buf is not buf or len(buf) > room:
                moved = True
                continue
            data = bytes(buf)
            if data != last:
                self.uc.mem_write(address, data)
                known[3] = data
        return moved

    # ---- running -----------------------------------------------------------------------------------------

    def call(self, address: int, *args: int) -> int:
        """Run the code at `address` with C arguments `args` until it returns: its first result register.
        Nested in a call-back (bpf_loop's callback), the interrupted run's registers are kept and its
        stack is left alone."""
        uc = self.uc
        saved = uc.context_save() if self.depth else None
        sp = STACK + STACK_SIZE if not self.depth else (uc.reg_read(self.sp) - 256) & ~15
        for reg, value in zip(self.args, args):
            uc.reg_write(reg, value & M64)
        back = _RETURN + 4 * self.depth
        uc.reg_write(self.lr, back)
        uc.reg_write(self.sp, sp)
        self.depth += 1
        try:
            uc.emu_start(address, back)
        except self._unicorn.UcError as err:
            raise JitError(f"the {self.arch} device stopped at {uc.reg_read(self.pc):#x}: {err}") from None
        finally:
            self.depth -= 1
        result = uc.reg_read(self.args[0])
        if saved is not None:
            uc.context_restore(saved)
        return result

    def _count(self, uc, address, size, user) -> None:
        self.executed += size // 4
        if self.slot_counts is not None:
            started = self._block_starts.get((address, size))
            if started is None:  # the instructions whose code starts in this block, once per block
                started = tuple(self.starts[a] for a in range(address, address + size, 4) if a in self.starts)
                self._block_starts[(address, size)] = started
            counts = self.slot_counts
            for key in started:
                counts[key] = counts.get(key, 0) + 1

    def _firmware(self, uc, address, size, user) -> None:
        """The call-back: the run serves it with the six C arguments; the status goes back in the first
        argument register, and the routine's `ret` returns to the code."""
        run = self.run
        status = run.serve_device(*(uc.reg_read(r) for r in self.args))
        uc.reg_write(self.args[0], status)


class DeviceCells:
    """The control block as `RunBase` indexes it (by cell), in the device's memory."""

    def __init__(self, device: Device) -> None:
        self._device = device

    def __getitem__(self, index: int) -> int:
        return self._device.read_cell(index)

    def __setitem__(self, index: int, value: int) -> None:
        self._device.write_cell(index, value)


class DeviceImage:
    """An image placed in a device's code memory."""

    def __init__(self, image: Image, program: VmProgram, address: int) -> None:
        self.image, self.program, self.address = image, program, address

    def function(self, slot: int) -> int:
        return self.address + self.image.functions[slot]


class DeviceSession(JitSession):
    """`JitSession` for an emulated device: images compiled for `arch` and placed in the device's code
    memory; one device for the session's runs."""

    def __init__(self, sandbox: bool, facts, arch: str = "arm64", *, count_slots: bool = False) -> None:
        if arch not in DEVICE_ARCHES:
            raise JitError(f"no emulated device for {arch} (devices: {', '.join(DEVICE_ARCHES)})")
        self.arch = arch
        super().__init__(sandbox, facts)
        self.device = Device(arch)
        self.count_slots = count_slots
        self.last_executed = 0  # device instructions of the last run (what a cycle model would start from)
        self.last_counts: dict[tuple[int, int], int] = {}  # (image index, slot) -> starts in the last run

    @staticmethod
    def unavailable() -> str | None:
        return unicorn_available()

    def compile(self, lowered) -> Image:
        return compile_lowered(lowered, self.arch)

    def load(self, image: Image, program: VmProgram) -> DeviceImage:
        address = self.device.place(image.code)
        if self.count_slots:
            self.device.count_slots(image, address, len(self.images))
        return DeviceImage(image, program, address)

    @classmethod
    def of(cls, main: VmProgram, facts, arch: str = "arm64", *, count_slots: bool = False) -> "DeviceSession":
        """A session for `main` (see `JitSession.of`); `count_slots`: how often each BPF instruction ran
        in the last run (`last_counts`)."""
        if facts is None or not facts.accepted:
            return cls(True, lambda program: None, arch, count_slots=count_slots)
        return cls(False, lambda program: (facts.ctx_fields, facts.checked) if program is main else None, arch,
                   count_slots=count_slots)


class DeviceRun(RunBase):
    """One input's runs on the device."""

    cached_lookups = False  # the RISC selector inlines array lookups only so far

    def __init__(self, session: DeviceSession, machine: Machine, inp: Input) -> None:
        self.device = session.device
        self.device.begin(self)
        super().__init__(session, machine, inp, DeviceCells(self.device))
        self._start(FIRMWARE)

    def _bytes_address(self, region) -> int:
        return self.device.region_address(region)

    def _new_table(self, entries: int) -> int:
        return self.device.table(entries)

    def _table_store(self, table: int, index: int, value: int) -> None:
        self.device.uc.mem_write(table + 8 * index, (value & M64).to_bytes(8, "little"))

    def _table_clear(self, table: int, entries: int) -> None:
        self.device.uc.mem_write(table, bytes(8 * entries))

    def _push(self) -> None:
        if self.device.push():
            self._sync(full=True)

    def _enter(self) -> int:
        self._push()  # what the VM changed since (a run's before_run, the previous run's helpers)
        self.device.executed = 0
        try:
            return self.device.call(self.main.address + self.main.image.entry, CONTROL)
        finally:
            self.device.pull()
            self.session.last_executed = self.device.executed
            self.session.last_counts = dict(self.device.slot_counts or {})

    def _enter_function(self, loaded, address: int) -> int:
        self._push()
        try:
            return self.device.call(loaded.address + loaded.image.call_function, CONTROL, address)
        finally:
            self.device.pull()

    def serve_device(self, a1, a2, a3, a4, a5, kind) -> int:
        """A call-back from the device: its bytes into the VM, served, the VM's changes back."""
        try:
            self.device.pull()
        except BaseException as err:  # pragma: no cover - the emulator's memory is ours
            self.error = err
            self.ctl[abi.ERROR // 8] = 1
            return abi.ABORT
        status = self._call_back(a1, a2, a3, a4, a5, kind)
        try:
            self._push()
        except BaseException as err:
            self.error = err
            self.ctl[abi.ERROR // 8] = 1
            return abi.ABORT
        return status


def run_device(machine: Machine, session: DeviceSession, data: bytes = b"", prog_type: str = "xdp",
               ctx_in: bytes | None = None, repeat: int = 1, stop=None) -> RunResult:
    """Run `machine.program` on `session`'s device: the same results and faults as `Machine.run`
    (`session.last_executed`: the device instructions of the last run)."""
    inp = machine.start(data, prog_type, ctx_in)
    run = DeviceRun(session, machine, inp)
    return repeat_runs(machine, inp, run.once, repeat, stop)
