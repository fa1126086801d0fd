"""Run a loaded program on a packet in one of the engines: the reference interpreter, the fast tier, or the
kernel (BPF_PROG_TEST_RUN). Maps can be preloaded before and dumped after, through the map API both the
interpreter's maps and the kernel's offer."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BpforgeError, FormatError
from .isa.maptypes import dump_map, preload_maps
from .files import MAX_DATA_FILE, read_input
from .formats import LoadedProgram
from .isa.contexts import ONE_SHOT_KINDS, TEST_RUN_KINDS

ENGINES = ("fast", "interp", "kernel", "jit")
MAX_REPEAT = 0xFFFFFFFF  # test.repeat is a u32 in the kernel
DEFAULT_TIME_BUDGET = 60.0  # seconds a VM repeat loop may take before it stops with what it has


@dataclass
class RunReport:
    retval: int
    data_out: bytes
    ns_per_run: float
    engine: str
    repeat: int  # runs done
    ctx_out: bytes | None = None
    maps: list[dict] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    stopped: str | None = None  # "budget" / "interrupted": the repeat loop ended before `requested`
    requested: int = 1

    def as_json(self) -> dict:
        """One shape whatever the engine: every key is always there."""
        return {"retval": self.retval, "data_out": self.data_out.hex(), "ns_per_run": self.ns_per_run,
                "engine": self.engine, "repeat": self.repeat, "requested_repeat": self.requested,
                "stopped": self.stopped, "ctx_out": None if self.ctx_out is None else self.ctx_out.hex(),
                "maps": self.maps, "trace": self.trace}


def read_map_file(path: str | Path) -> list[tuple[bytes, bytes]]:
    """Entries to preload: a JSON list of {"key": hex, "value": hex} (per-CPU values: every CPU's value,
    each rounded up to 8 bytes, concatenated — as the syscall takes them)."""
    data = read_input(path, what="map file", limit=MAX_DATA_FILE)
    try:
        entries = json.loads(data)
        if not isinstance(entries, list):
            raise TypeError("not a list")
        return [(bytes.fromhex(e["key"]), bytes.fromhex(e["value"])) for e in entries]
    except RecursionError:
        raise FormatError("map entries nest too deeply to be a list of entries", file=str(path)) from None
    except (ValueError, KeyError, TypeError) as err:
        raise FormatError(f'expected a JSON list of {{"key": hex, "value": hex}}: {err}', file=str(path)) from None


def run_loaded(loaded: LoadedProgram, data: bytes, *, engine: str = "fast", repeat: int = 1,
               ctx: bytes | None = None, preload: Mapping[str, list[tuple[bytes, bytes]]] | None = None,
               dump_maps: bool = False, seed: int = 0, budget: int | None = None,
               time_budget: float | None = DEFAULT_TIME_BUDGET,
               progress: Callable[[int, int], None] | None = None, arch: str = "x86_64",
               sandbox: bool = False, blind: bool = False) -> RunReport:
    """Run a loaded program `repeat` times (1 to 2^32-1, as the kernel takes it) on one input.

    The jit engine compiles it for `arch` (x86-64: native code in this process). A program our verifier
    accepts runs with its accesses unchecked, as the kernel's JIT runs it; `sandbox` (the default for the
    userspace `mem` convention, which no verifier checks) checks every access and counts instructions,
    so a program that did not pass the verifier faults as the interpreter does; `blind` blinds its constants.

    The VM engines stop a repeat loop early, with the runs done so far, when `time_budget` seconds have
    passed or on Ctrl-C (`RunReport.stopped` says which); `progress(done, total)` is called along the way.
    `budget` is the instruction budget of each run (default 10 M). The kernel engine runs all repeats."""
    if engine not in ENGINES:
        raise BpforgeError(f"unknown engine '{engine}' (engines: {', '.join(ENGINES)})")
    if not 1 <= repeat <= MAX_REPEAT:
        raise BpforgeError(f"--repeat must be between 1 and {MAX_REPEAT} (the kernel's u32), not {repeat}")
    kind = TEST_RUN_KINDS.get(loaded.prog_type)
    if repeat > 1 and kind in ONE_SHOT_KINDS:
        raise BpforgeError(f"{loaded.prog_type} programs run once: the kernel's test run takes no --repeat for them")
    if engine == "kernel":
        if loaded.prog_type == "mem":
            raise BpforgeError("mem programs (the userspace-runtime convention) run only in the VM engines")
        report = _run_kernel(loaded, data, repeat, ctx, preload or {}, dump_maps)
    else:
        report = _run_vm(loaded, data, engine, repeat, ctx, preload or {}, dump_maps, seed, budget, time_budget,
                         progress, arch, sandbox, blind)
    report.requested = repeat
    return report


def _run_vm(loaded, data, engine, repeat, ctx, preload, dump_maps, seed, budget, time_budget,
            progress, arch="x86_64", sandbox=False, blind=False) -> RunReport:
    from . import vm
    from .kernel.maps import possible_cpus
    from .vm.fast import compile_all
    from .vm.interp import DEFAULT_BUDGET

    # As many CPUs as the kernel's per-CPU maps have, so map files and dumps mean the same in every engine.
    program = vm.from_loaded(loaded, num_cpus=possible_cpus())
    maps = {name: m for name, m in zip(program.map_names, program.maps) if m is not None}
    preload_maps(maps, preload)
    machine = vm.Machine(program, seed=seed, budget=budget or DEFAULT_BUDGET)
    if engine == "fast":
        compile_all(program)  # translated before the clock starts
    elif engine == "jit":
        session = jit_session(loaded, program, arch=arch, sandbox=sandbox, blind=blind)  # compiled before the clock starts
    start = time.perf_counter_ns()
    deadline = None if time_budget is None else time.monotonic() + time_budget
    next_report = [0.0]

    def stop(done: int) -> bool:
        now = time.monotonic()
        if progress is not None and now >= next_report[0]:
            progress(done, repeat)
            next_report[0] = now + 0.1
        return deadline is not None and now > deadline

    if engine == "jit" and arch != "x86_64":
        from .jit.device import run_device

        execute = lambda *a, **k: run_device(machine, session, *a, **k)  # noqa: E731
    elif engine == "jit":
        from .jit.native import run_native

        execute = lambda *a, **k: run_native(machine, session, *a, native_loop=True, **k)  # noqa: E731
    else:
        execute = machine.run if engine == "interp" else (lambda *a, **k: vm.run_fast(machine, *a, **k))
    result = execute(data, loaded.prog_type, ctx, repeat=repeat, stop=stop)
    # Where the engine timed its loop alone (the JIT's native loop), that is the figure, as test_run's is.
    elapsed = (time.perf_counter_ns() - start if result.loop_ns is None else result.loop_ns) / result.runs
    dumped = [dump_map(n, m) for n, m in maps.items()] if dump_maps else []
    # test_run reports a 32-bit retval; the userspace convention (uBPF, bpf_conformance) returns all of r0.
    retval = result.retval if loaded.prog_type == "mem" else result.retval & 0xFFFFFFFF
    return RunReport(retval, result.data_out, elapsed, engine, result.runs, result.ctx_out, dumped, result.trace,
                     result.stopped)


def jit_session(loaded: LoadedProgram, program, *, arch: str = "x86_64", sandbox: bool = False,
                blind: bool = False):
    """The JIT session that runs `program` (the VM's linking of `loaded`): verified with our verifier's
    facts, or sandboxed (`jit.plan`). Tail-call targets are compiled with their loads checked. x86-64
    runs natively, arm64 and riscv64 on an emulated device."""
    from .jit import ARCHES, plan

    if arch not in ARCHES:
        raise BpforgeError(f"--arch {arch}: the jit engine runs {', '.join(ARCHES)} here")
    if arch != "x86_64":
        from .jit.device import DeviceSession

        if blind:
            raise BpforgeError(f"--blind: constant blinding is implemented for x86_64 only so far, not {arch}")
        return DeviceSession.of(program, plan(loaded, sandbox=sandbox), arch)
    from .jit.native import JitSession

    return JitSession.of(program, plan(loaded, sandbox=sandbox), blind=blind)


def _run_kernel(loaded, data, repeat, ctx, preload, dump_maps) -> RunReport:
    from .kernel.program import load_loaded

    with load_loaded(loaded) as prog:
        preload_maps(prog.maps, preload)
        result = prog.test_run(data, ctx=ctx, repeat=repeat)
        dumped = [dump_map(n, m) for n, m in prog.maps.items()] if dump_maps else []
    return RunReport(result.retval, result.data_out, result.duration_ns, "kernel", repeat, result.ctx_out, dumped)
