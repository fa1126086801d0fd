"""Kernel-differential runs for the VM's helper and map tests: one program (assembly text, or C compiled
with clang-19), one input, the same maps set up the same way, run in the interpreter, the fast tier and the
kernel's BPF_PROG_TEST_RUN; `same(outcomes)` asserts they agree on r0, data_out, ctx_out and every map.

The kernel runs pinned to RUN_CPU and the VM is told it runs there, so per-CPU slots and CPU-relative
helpers agree. A map whose elements bpf() cannot list (a perf event array, a queue) is compared by the
errno its listing gives.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from difftest.engines import RUN_CPU, pinned

from bpforge.isa.maptypes import MapSpec
from bpforge.errors import BpforgeError
from bpforge.isa.maptypes import MAP_TYPE_IDS, MapError

def _engines() -> tuple[str, ...]:
    from bpforge.jit.device import unicorn_available
    from bpforge.jit.native import native_available

    wanted = os.environ.get("DIFF_DEVICES", "1") != "0"  # DIFF_DEVICES=0: leave the device JITs out
    devices = ("jit_arm64", "jit_riscv64") if wanted and unicorn_available() is None else ()
    return ("interp", "fast") + (("jit",) if native_available() is None else ()) + devices + ("kernel",)


# The jit engine runs what our verifier accepts as verified native code (with its facts), the rest sandboxed.
ENGINES = _engines()


def md(type_name: str, key_size: int = 4, value_size: int = 4, max_entries: int = 4, flags: int = 0,
       name: str = "m", **kw) -> MapSpec:
    return MapSpec(name, MAP_TYPE_IDS[type_name], key_size, value_size, max_entries, flags, **kw)


@dataclass(frozen=True)
class Outcome:
    retval: int | None
    data_out: bytes = b""
    ctx_out: bytes | None = None
    maps: tuple = ()
    error: str | None = None

    def without(self, *, maps: bool = False, ctx: bool = False, retval: bool = False) -> Outcome:
        return replace(self, maps=() if maps else self.maps, ctx_out=None if ctx else self.ctx_out,
                       retval=None if retval else self.retval)


def contents(named: Iterable[tuple[str, object]]) -> tuple:
    out = []
    for name, m in named:
        try:
            out.append((name, tuple(sorted((bytes(k), bytes(v)) for k, v in m.items()))))
        except MapError as err:
            out.append((name, ("errno", err.errno)))
    return tuple(out)


def outcome(fn, *args):
    """("ok", result) or ("errno", e) of a map operation, to compare the VM's maps with the kernel's
    (iterators are listed: they fail as they go)."""
    try:
        result = fn(*args)
        return "ok", list(result) if hasattr(result, "__next__") else result
    except MapError as err:
        return "errno", err.errno


def _possible_cpus() -> int:
    from bpforge.kernel.maps import possible_cpus

    return possible_cpus()


def _vm_run(program, named_maps, engine: str, data: bytes, prog_type: str, ctx: bytes | None, repeat: int,
            machine_options: Mapping | None, facts=None) -> Outcome:
    from bpforge import vm

    machine = vm.Machine(program, cpu=RUN_CPU, **(machine_options or {}))
    try:
        if engine == "interp":
            result = machine.run(data, prog_type, ctx, repeat)
        elif engine == "jit":
            from bpforge.jit.native import JitSession, run_native

            result = run_native(machine, JitSession.of(program, facts), data, prog_type, ctx, repeat)
        elif engine.startswith("jit_"):  # arm64 / riscv64 on the emulated device
            from bpforge.jit.device import DeviceSession, run_device

            result = run_device(machine, DeviceSession.of(program, facts, engine[4:]), data, prog_type, ctx, repeat)
        else:
            result = vm.run_fast(machine, data, prog_type, ctx, repeat)
    except BpforgeError as err:
        return Outcome(None, error=f"{type(err).__name__}: {err.message}")
    return Outcome(result.retval & 0xFFFFFFFF, result.data_out, result.ctx_out, contents(named_maps))


def run_asm(text: str, prog_type: str, data: bytes, *, maps: Iterable[MapSpec] = (),
            setup: Iterable[tuple[int, bytes, bytes]] = (), ctx: bytes | None = None, repeat: int = 1,
            engines: Iterable[str] = ENGINES, prepare: Callable | None = None,
            machine_options: Mapping | None = None) -> dict[str, Outcome]:
    """`text` assembled (map_fd(i) is the i-th of `maps`), run in each engine on fresh maps with `setup`
    ((map index, key, syscall value)) applied; `prepare(index, map)` may fill a map further."""
    from bpforge import vm
    from bpforge.isa.asm import parse
    from bpforge.jit.facts import facts_of_insns
    from bpforge.vm.maps import create_map

    insns = parse(text).sections[0].insns
    defs = list(maps)
    out: dict[str, Outcome] = {}
    for engine in engines:
        if engine == "kernel":
            out[engine] = _kernel_asm(insns, prog_type, data, defs, list(setup), ctx, repeat, prepare)
            continue
        vmaps = [create_map(d, num_cpus=_possible_cpus()) for d in defs]
        for i, m in enumerate(vmaps):
            m.syscall_cpu = RUN_CPU
            if prepare is not None:
                prepare(i, m)
        for i, key, value in setup:
            vmaps[i].update(key, value)
        program = vm.from_insns(insns, vmaps)
        facts = _facts(lambda: facts_of_insns(insns, prog_type, defs)) if engine.startswith("jit") else None
        out[engine] = _vm_run(program, [(d.name, m) for d, m in zip(defs, vmaps)], engine, data, prog_type, ctx,
                              repeat, machine_options, facts)
    return out


def _facts(make):
    """Our verifier's facts for the jit engine; None (sandboxed) where it cannot tell."""
    from bpforge.errors import BpforgeError

    try:
        return make()
    except BpforgeError:
        return None


def _kernel_asm(insns, prog_type, data, defs, setup, ctx, repeat, prepare) -> Outcome:
    from bpforge.kernel import KernelMap, load_insns

    kmaps = []
    try:
        for d in defs:
            kmaps.append(KernelMap.create(d))
        for i, m in enumerate(kmaps):
            if prepare is not None:
                prepare(i, m)
        for i, key, value in setup:
            kmaps[i].update(key, value)
        with load_insns(insns, prog_type, maps=kmaps, log_level=0) as prog, pinned():
            result = prog.test_run(data, ctx=ctx, repeat=repeat)
        return Outcome(result.retval, result.data_out, result.ctx_out,
                       contents((d.name, m) for d, m in zip(defs, kmaps)))
    finally:
        for m in kmaps:
            m.close()


def compile_c(source: str, directory: Path, clang: str, name: str = "prog") -> Path:
    src, obj = directory / f"{name}.c", directory / f"{name}.o"
    src.write_text(source)
    arch = os.uname().machine
    subprocess.run([clang, "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}-linux-gnu", "-c", str(src),
                    "-o", str(obj)], check=True, capture_output=True)
    return obj


def run_object(path: Path, data: bytes, *, section: str | None = None, prog_type: str | None = None,
               setup: Mapping[str, list[tuple[bytes, bytes]]] | None = None, ctx: bytes | None = None,
               repeat: int = 1, engines: Iterable[str] = ENGINES,
               prepare: Callable | None = None) -> dict[str, Outcome]:
    """An object's program (linked and loaded as libbpf would) run in each engine on fresh maps."""
    from bpforge import vm
    from bpforge.formats import load_program
    from bpforge.jit.facts import facts_of

    out: dict[str, Outcome] = {}
    for engine in engines:
        loaded = load_program(path, section=section, prog_type=prog_type)
        ptype = loaded.prog_type
        if engine == "kernel":
            out[engine] = _kernel_object(loaded, data, setup or {}, ctx, repeat, prepare)
            continue
        program = vm.from_loaded(loaded, num_cpus=_possible_cpus())
        named = [(n, m) for n, m in zip(program.map_names, program.maps) if not n.startswith(".")]
        for name, m in named:
            m.syscall_cpu = RUN_CPU
            if prepare is not None:
                prepare(name, m)
            for key, value in (setup or {}).get(name, ()):
                m.update(key, value)
        facts = _facts(lambda: facts_of(loaded)) if engine.startswith("jit") else None
        out[engine] = _vm_run(program, named, engine, data, ptype, ctx, repeat, None, facts)
    return out


def _kernel_object(loaded, data, setup, ctx, repeat, prepare) -> Outcome:
    from bpforge.kernel.program import load_loaded

    with load_loaded(loaded, log_level=0) as prog:
        named = [(n, m) for n, m in prog.maps.items() if not n.startswith(".")]
        for name, m in named:
            if prepare is not None:
                prepare(name, m)
            for key, value in setup.get(name, ()):
                m.update(key, value)
        with pinned():
            result = prog.test_run(data, ctx=ctx, repeat=repeat)
        return Outcome(result.retval, result.data_out, result.ctx_out, contents(named))


def same(outcomes: Mapping[str, Outcome], **ignore) -> Outcome:
    """Assert every engine's outcome is the kernel's (or the interpreter's when the kernel is absent),
    after dropping what `ignore` names (Outcome.without); returns it."""
    reference = outcomes.get("kernel", outcomes.get("interp"))
    for engine, outcome in outcomes.items():
        assert outcome.error is None, f"{engine}: {outcome.error}"
        assert outcome.without(**ignore) == reference.without(**ignore), f"{engine} differs from the kernel"
    return reference


__all__ = ["ENGINES", "RUN_CPU", "Outcome", "compile_c", "contents", "md", "pinned", "run_asm", "run_object",
           "same"]
