"""Engines: each runs a `DiffProgram` on one packet and returns a comparable `Outcome`.

An engine is a callable `(program, packet) -> Outcome` with a `__name__`; a test's engine list is
`available_engines(kernel_engine)`, so another tier is one more entry there. Every run starts from the
program's maps as defined plus `program.setup`, so runs are independent and comparable one by one.

- `interp`: the reference interpreter (`bpforge.vm.run`), with fresh interpreter maps.
- `fast`: the fast tier (`bpforge.vm.run_fast`), when the package has it.
- `KernelEngine()`: BPF_PROG_LOAD + BPF_PROG_TEST_RUN. The loaded program and its maps are kept while the
  same program runs again (the entries a run changed are reset before the next); `close()` releases them.
  A program the verifier refuses raises `Rejected` (such programs are not compared).

A `persistent` program's runs continue from the maps the previous run of the same program left, in every
engine: a packet sequence (only while the same program object is run again and again).

The process pins itself to one CPU (`RUN_CPU`) around each kernel run so that per-CPU map slots and
bpf_get_smp_processor_id agree with the interpreter, which is told it runs on that CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from bpforge.isa.maptypes import PERCPU_TYPES

from .program import DiffProgram

RUN_CPU = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
ARRAY_TYPES = frozenset({"array", "percpu_array"})

MapContents = tuple[tuple[str, tuple[tuple[bytes, bytes], ...]], ...]


@dataclass(frozen=True)
class Outcome:
    """What a run left behind: r0 (32 bits, as test_run reports it), the packet, the compared maps'
    contents sorted by key and the compared context fields; or the fault that stopped the run."""

    retval: int | None
    data_out: bytes = b""
    maps: MapContents = ()
    ctx: tuple[tuple[str, int], ...] = ()
    error: str | None = None

    def describe(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
        lines = [f"retval {self.retval:#x} ({self.retval})", f"data_out ({len(self.data_out)}) {self.data_out.hex()}"]
        lines += [f"ctx.{name} = {value:#x}" for name, value in self.ctx]
        for name, items in self.maps:
            shown = ", ".join(f"{k.hex()}={v.hex()}" for k, v in items[:40]) or "empty"
            lines.append(f"map {name}: {shown}{f' ... ({len(items)} entries)' if len(items) > 40 else ''}")
        return "\n".join(lines)

    def with_map_values(self, fn: Callable[[str, bytes, bytes], bytes]) -> Outcome:
        """The outcome with every compared map value v of map m at key k replaced by fn(m, k, v)."""
        return replace(self, maps=tuple((name, tuple((k, fn(name, k, v)) for k, v in items))
                                        for name, items in self.maps))


class Rejected(Exception):
    """The kernel verifier refused the program (the message says why)."""


Engine = Callable[[DiffProgram, bytes], Outcome]


def num_cpus() -> int:
    from bpforge.kernel import possible_cpus

    return possible_cpus()


def syscall_value(mapdef, value: bytes, ncpus: int) -> bytes:
    """A value as the syscall takes it: for per-CPU maps, the same value in every CPU's 8-rounded slot."""
    if mapdef.type_name not in PERCPU_TYPES:
        return value
    return value.ljust((mapdef.value_size + 7) & ~7, b"\0") * ncpus


def _contents(program: DiffProgram, maps) -> MapContents:
    return tuple((d.name, tuple(sorted((bytes(k), bytes(v)) for k, v in m.items())))
                 for i, (d, m) in enumerate(zip(program.maps, maps)) if i not in program.config_maps)


def _ctx(program: DiffProgram, ctx_out: bytes | None) -> tuple[tuple[str, int], ...]:
    if not program.ctx_fields or ctx_out is None:
        return ()
    return tuple((name, int.from_bytes(ctx_out[off:off + size], "little")) for name, off, size in program.ctx_fields)


# ---- the interpreter and the fast tier -------------------------------------------------------------------------

def _vm_engine(runner: str) -> Engine:
    last: dict = {}  # the program run last: its VmProgram (the fast tier compiles once per VmProgram) and config maps

    def run(program: DiffProgram, packet: bytes) -> Outcome:
        from bpforge import vm
        from bpforge.errors import BpforgeError
        from bpforge.vm.maps import create_map

        ncpus = num_cpus()

        def make(index: int):
            m = create_map(program.maps[index], num_cpus=ncpus)
            m.syscall_cpu = RUN_CPU
            for i, key, value in program.setup:
                if i == index:
                    m.update(key, syscall_value(program.maps[index], value, ncpus))
            return m

        if last.get("program") is not program:
            maps = [make(i) if i in program.config_maps else None for i in range(len(program.maps))]
            last.update(program=program, config=maps, maps=None,
                        vmprog=vm.from_insns(program.insns, maps, name=program.name))
        vmprog = last["vmprog"]
        if program.persistent and last.get("maps") is not None:
            maps = last["maps"]
        else:
            maps = [m if i in program.config_maps else make(i) for i, m in enumerate(last["config"])]
            vmprog.maps[:] = maps  # fresh maps for every run, in the same (compiled once) program
        last["maps"] = maps
        options = {k: v() if callable(v) else v for k, v in program.vm_options.items()}
        machine = vm.Machine(vmprog, cpu=RUN_CPU, **options)
        try:
            if runner == "interp":
                result = machine.run(packet, program.prog_type)
            elif runner == "fast":
                result = vm.run_fast(machine, packet, program.prog_type)
            elif runner.startswith("jit_") and runner.split("_")[1] in DEVICE_ENGINES:
                result = _run_device(last, program, machine, packet, arch=runner.split("_")[1],
                                     sandbox=runner.endswith("_sandbox"))
            else:
                result = _run_jit(last, program, machine, packet, sandbox=runner != "jit", blind=runner == "jit_blind")
        except BpforgeError as err:
            return Outcome(None, error=f"{type(err).__name__}: {err}")
        return Outcome(result.retval & 0xFFFFFFFF, result.data_out, _contents(program, maps),
                       _ctx(program, result.ctx_out))

    run.__name__ = runner
    return run


def _run_jit(last: dict, program: DiffProgram, machine, packet: bytes, *, sandbox: bool, blind: bool = False):
    """The native x86-64 JIT: verified (our verifier's facts; a program it does not accept runs sandboxed)
    or sandboxed, its constants blinded or not. One session per program, as its images are compiled once."""
    from bpforge.jit.native import JitSession, run_native

    key = "jit_blind" if blind else "jit_sandbox" if sandbox else "jit"
    if last.get(key + "_program") is not program:
        facts = None if sandbox else _facts(program)
        last[key + "_program"], last[key] = program, JitSession.of(last["vmprog"], facts, blind=blind)
    return run_native(machine, last[key], packet, program.prog_type)


DEVICE_ENGINES = ("arm64", "riscv64")


_FACTS: dict = {}  # the program whose facts were computed last, and its facts: one verification for every JIT


def _facts(program: DiffProgram):
    """Our verifier's facts for the JITs, once per program for every JIT engine."""
    from bpforge.jit.facts import facts_of_insns, facts_of_object

    if _FACTS.get("program") is not program:
        _FACTS["program"], _FACTS["facts"] = program, (
            facts_of_object(program.obj, program.obj_program, program.prog_type) if program.obj is not None
            else facts_of_insns(program.insns, program.prog_type, program.maps))
    return _FACTS["facts"]


def _run_device(last: dict, program: DiffProgram, machine, packet: bytes, *, arch: str, sandbox: bool):
    """The arm64/riscv64 JIT on its emulated device, verified or sandboxed as `_run_jit`. One session
    (one device, its images compiled once) per program."""
    from bpforge.jit.device import DeviceSession, run_device

    key = f"jit_{arch}" + ("_sandbox" if sandbox else "")
    if last.get(key + "_program") is not program:
        last[key + "_program"], last[key] = program, DeviceSession.of(last["vmprog"], None if sandbox else
                                                                      _facts(program), arch)
    return run_device(machine, last[key], packet, program.prog_type)


interp = _vm_engine("interp")
fast = _vm_engine("fast")
jit = _vm_engine("jit")
jit_sandbox = _vm_engine("jit_sandbox")
jit_blind = _vm_engine("jit_blind")  # sandboxed, constants blinded: every constant path and the checked stores
jit_arm64 = _vm_engine("jit_arm64")
jit_riscv64 = _vm_engine("jit_riscv64")
jit_arm64_sandbox = _vm_engine("jit_arm64_sandbox")
jit_riscv64_sandbox = _vm_engine("jit_riscv64_sandbox")


# ---- the kernel ------------------------------------------------------------------------------------------

@contextmanager
def pinned(cpu: int = RUN_CPU):
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class _Loaded:
    program: DiffProgram
    kprog: object
    kmaps: list
    dirty: list[tuple[int, bytes]] | None = field(default_factory=list)  # None: unknown, reload

    def close(self) -> None:
        self.kprog.close()
        for m in self.kmaps:
            m.close()


class KernelEngine:
    """Loads once per program and runs per packet. Between runs of the same program the entries the last
    run left changed are put back (array entries to their initial value, hash-like entries deleted) and
    the setup is written again; config maps are set up once."""

    def __init__(self) -> None:
        self.__name__ = "kernel"
        self._loaded: _Loaded | None = None

    def load(self, program: DiffProgram) -> _Loaded:
        from bpforge.kernel import KernelMap, VerifierRejected, load_insns, load_linked

        self.close()
        kmaps = []
        try:
            for mapdef in program.maps:
                kmaps.append(KernelMap.create(mapdef))
            for index, key, value in program.setup:
                kmaps[index].update(key, syscall_value(program.maps[index], value, kmaps[index].ncpus))
            if program.obj is not None:
                linked = program.obj.linked(program.obj_program)
                kprog = load_linked(linked, program.obj, prog_type=program.prog_type, log_level=0,
                                     maps={d.name: m for d, m in zip(program.maps, kmaps)})
            else:
                kprog = load_insns(program.insns, program.prog_type, maps=kmaps, name=program.name, log_level=0)
        except VerifierRejected as err:
            for m in kmaps:
                m.close()
            raise Rejected(err.verdict.message) from None
        except BaseException:
            for m in kmaps:
                m.close()
            raise
        self._loaded = _Loaded(program, kprog, kmaps)
        return self._loaded

    def _initial(self, mapdef, kmap) -> bytes:
        value = bytes(mapdef.initial) if mapdef.initial is not None else bytes(mapdef.value_size)
        return syscall_value(mapdef, value, kmap.ncpus)

    def _reset(self, loaded: _Loaded) -> None:
        program = loaded.program
        for index, key in loaded.dirty:
            mapdef, kmap = program.maps[index], loaded.kmaps[index]
            if mapdef.type_name in ARRAY_TYPES:
                kmap.update(key, self._initial(mapdef, kmap))
            elif kmap.lookup(key) is not None:
                kmap.delete(key)
        for index, key, value in program.setup:
            if index not in program.config_maps:
                kmap = loaded.kmaps[index]
                kmap.update(key, syscall_value(program.maps[index], value, kmap.ncpus))

    def __call__(self, program: DiffProgram, packet: bytes) -> Outcome:
        from bpforge.kernel import test_run

        loaded = self._loaded
        if loaded is None or loaded.program is not program or loaded.dirty is None:
            loaded = self.load(program)
        elif not program.persistent:
            self._reset(loaded)
        loaded.dirty = None  # until this run's changes are known
        with pinned():
            result = test_run(loaded.kprog, packet)
        contents = _contents(program, loaded.kmaps)
        dirty = []
        compared = [i for i in range(len(program.maps)) if i not in program.config_maps]
        for index, (_, items) in zip(compared, contents):
            mapdef, kmap = program.maps[index], loaded.kmaps[index]
            if kmap.frozen:
                continue
            initial = self._initial(mapdef, kmap) if mapdef.type_name in ARRAY_TYPES else None
            dirty += [(index, k) for k, v in items if v != initial]
        loaded.dirty = dirty
        return Outcome(result.retval, result.data_out, contents, _ctx(program, result.ctx_out))

    def close(self) -> None:
        if self._loaded is not None:
            self._loaded.close()
            self._loaded = None


def vm_engines(devices: bool = True) -> list[Engine]:
    """The engines that need no kernel: the interpreter, the fast tier where it exists, the native JIT
    where it runs, and (`devices`, where unicorn is installed) the arm64 and riscv64 JITs on their emulated
    devices, verified (their sandboxed code is the same selector's, tested in tests/test_jit_devices.py)."""
    from bpforge import vm

    from bpforge.jit.device import unicorn_available
    from bpforge.jit.native import native_available

    found = [interp, fast] if hasattr(vm, "run_fast") else [interp]
    found += [jit, jit_sandbox, jit_blind] if native_available() is None else []
    devices = devices and os.environ.get("DIFF_DEVICES", "1") != "0"
    return found + ([jit_arm64, jit_riscv64] if devices and unicorn_available() is None else [])


# ---- comparing --------------------------------------------------------------------------------------------

@dataclass
class Mismatch:
    program: DiffProgram
    packet: bytes
    outcomes: dict[str, Outcome]
    note: str = ""

    def report(self) -> str:
        lines = ["differential mismatch" + (f" (reproduce: DIFF_SEED={self.program.seed})"
                                            if self.program.seed is not None else "")]
        if self.note:
            lines.append(self.note)
        lines += [self.program.text(), f"packet ({len(self.packet)}) {self.packet.hex()}"]
        for name, outcome in self.outcomes.items():
            lines.append(f"--- {name}")
            lines.append(outcome.describe())
        return "\n".join(lines)


# ---- kernel bugs --------------------------------------------------------------------------------------------

def _insert_after(insns: list, index: int, new) -> list:
    """`insns` with `new` after instruction `index`, reached only by falling through from it: every jump
    keeps its target instruction (one aimed at index + 1 still lands on that instruction, after `new`)."""
    from bpforge.isa import branch_target, retarget, slot_starts

    starts = slot_starts(insns)
    index_of = {slot: i for i, slot in enumerate(starts)}
    out = insns[:index + 1] + [new] + insns[index + 1:]
    new_starts = slot_starts(out)
    end = new_starts[-1] + out[-1].slots
    for k, insn in enumerate(out):
        if k == index + 1:
            continue
        old_k = k if k <= index else k - 1
        target = branch_target(insn, starts[old_k])
        if target is None:
            continue
        old_target = index_of.get(target, len(insns))
        new_target = old_target if old_target <= index else old_target + 1
        out[k] = retarget(insn, new_starts[k], new_starts[new_target] if new_target < len(out) else end)
    return out


def _zext_after_cmpxchg32(program: DiffProgram) -> DiffProgram | None:
    from bpforge.isa import Insn

    at = [i for i, insn in enumerate(program.insns) if insn.form.name == "cmpxchg32"]
    if not at or program.obj is not None:
        return None
    insns = list(program.insns)
    for index in reversed(at):
        insns = _insert_after(insns, index, Insn.make("mov32_reg", dst=0, src=0))
    return replace(program, insns=insns, name=program.name + "_zext")


# Kernel behaviour that departs from the ISA, each with a rewrite that means the same under the ISA and
# avoids it: a mismatch that the rewrite makes go away in the kernel (the interpreters agreeing with the
# rewritten run) is the kernel's, not ours.
KERNEL_BUGS: list[tuple[str, Callable[[DiffProgram], DiffProgram | None]]] = [
    (("32-bit cmpxchg leaves r0's upper half (kernel 6.18 x86-64: on a successful compare the CPU does not "
      "write eax, and the verifier sometimes omits the zero-extension it owes r0 -- seen with the cmpxchg in "
      "a loop and a dead 64-bit def of r0 after it); the ISA zero-extends r0"), _zext_after_cmpxchg32),
]


def kernel_bug(mismatch: Mismatch, engines: list[Engine]) -> str | None:
    """The known kernel bug behind `mismatch`, if it is one: every other engine agrees, and running the
    rewritten program in the kernel gives their outcome."""
    kernels = [e for e in engines if isinstance(e, KernelEngine)]
    others = {o for name, o in mismatch.outcomes.items() if name != "kernel"}
    if len(kernels) != 1 or len(others) != 1:
        return None
    expected = next(iter(others))
    for why, rewrite in KERNEL_BUGS:
        patched = rewrite(mismatch.program)
        if patched is None:
            continue
        try:
            if kernels[0](patched, mismatch.packet) == expected:
                return why
        except Rejected:
            continue
    return None


def compare(program: DiffProgram, packet: bytes, engines: list[Engine],
            normalize: Callable[[Outcome], Outcome] | None = None) -> Mismatch | None:
    """Run every engine on the packet; a Mismatch when the (normalized) outcomes are not all equal.
    `Rejected` propagates from a kernel engine: the program is not comparable."""
    outcomes = {engine.__name__: engine(program, packet) for engine in engines}
    seen = {normalize(o) if normalize and o.error is None else o for o in outcomes.values()}
    return Mismatch(program, packet, outcomes) if len(seen) > 1 else None
