"""Run a loaded program on a packet in one of the engines: the reference interpreter, the fast tier, or the
kernel (BPF_PROG_TEST_RUN). Maps can be preloaded before and dumped after, through the map API both the
interpreter's maps and the kernel's offer."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BpforgeError, FormatError
from .formats import LoadedProgram

ENGINES = ("fast", "interp", "kernel")


@dataclass
class RunReport:
    retval: int
    data_out: bytes
    ns_per_run: float
    engine: str
    repeat: int
    ctx_out: bytes | None = None
    maps: list[dict] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        report = {"retval": self.retval, "data_out": self.data_out.hex(), "ns_per_run": self.ns_per_run,
                  "engine": self.engine, "repeat": self.repeat}
        if self.ctx_out is not None:
            report["ctx_out"] = self.ctx_out.hex()
        if self.maps:
            report["maps"] = self.maps
        if self.trace:
            report["trace"] = self.trace
        return report


def read_map_file(path: str | Path) -> list[tuple[bytes, bytes]]:
    """Entries to preload: a JSON list of {"key": hex, "value": hex} (per-CPU values: every CPU's value,
    each rounded up to 8 bytes, concatenated — as the syscall takes them)."""
    try:
        entries = json.loads(Path(path).read_text())
        return [(bytes.fromhex(e["key"]), bytes.fromhex(e["value"])) for e in entries]
    except OSError as err:
        raise FormatError(err.strerror or str(err), file=str(path)) from None
    except (ValueError, KeyError, TypeError) as err:
        raise FormatError(f'expected a JSON list of {{"key": hex, "value": hex}}: {err}', file=str(path)) from None


def dump_map(name: str, bpf_map) -> dict:
    return {"name": name, "type": bpf_map.type_name,
            "entries": [{"key": k.hex(), "value": v.hex()} for k, v in bpf_map.items()]}


def _preload(maps: Mapping[str, object], preload: Mapping[str, list[tuple[bytes, bytes]]]) -> None:
    for name, entries in preload.items():
        if name not in maps:
            raise BpforgeError(f"the program uses no map named '{name}' (its maps: {', '.join(maps) or 'none'})")
        for key, value in entries:
            try:
                maps[name].update(key, value)
            except BpforgeError as err:
                raise BpforgeError(f"preloading map '{name}': {err.message}") from None


def run_loaded(loaded: LoadedProgram, data: bytes, *, engine: str = "fast", repeat: int = 1,
               ctx: bytes | None = None, preload: Mapping[str, list[tuple[bytes, bytes]]] | None = None,
               dump_maps: bool = False, seed: int = 0, budget: int | None = None) -> RunReport:
    if engine not in ENGINES:
        raise BpforgeError(f"unknown engine '{engine}' (engines: {', '.join(ENGINES)})")
    if repeat < 1:
        raise BpforgeError("--repeat must be at least 1")
    if engine == "kernel":
        return _run_kernel(loaded, data, repeat, ctx, preload or {}, dump_maps)
    return _run_vm(loaded, data, engine, repeat, ctx, preload or {}, dump_maps, seed, budget)


def _run_vm(loaded, data, engine, repeat, ctx, preload, dump_maps, seed, budget) -> RunReport:
    from . import vm
    from .kernel.maps import possible_cpus
    from .vm.fast import compiled
    from .vm.interp import DEFAULT_BUDGET

    # As many CPUs as the kernel's per-CPU maps have, so map files and dumps mean the same in every engine.
    program = vm.from_loaded(loaded, num_cpus=possible_cpus())
    maps = {name: m for name, m in zip(program.map_names, program.maps) if m is not None}
    _preload(maps, preload)
    machine = vm.Machine(program, seed=seed, budget=budget or DEFAULT_BUDGET)
    if engine == "fast":
        compiled(program)  # translated once, before the clock starts
    execute = machine.run if engine == "interp" else (lambda *a: vm.run_fast(machine, *a))
    start = time.perf_counter_ns()
    packet = data
    for _ in range(repeat):  # like the kernel's repeat: each run sees the packet the last one left; maps carry over
        result = execute(packet, loaded.prog_type, ctx)
        packet = result.data_out if loaded.prog_type != "socket_filter" else data
    elapsed = (time.perf_counter_ns() - start) / repeat
    dumped = [dump_map(n, m) for n, m in maps.items()] if dump_maps else []
    return RunReport(result.retval & 0xFFFFFFFF, result.data_out, elapsed, engine, repeat, result.ctx_out,
                     dumped, result.trace)


def _run_kernel(loaded, data, repeat, ctx, preload, dump_maps) -> RunReport:
    from .kernel.program import load_loaded

    with load_loaded(loaded) as prog:
        _preload(prog.maps, preload)
        result = prog.test_run(data, ctx=ctx, repeat=repeat)
        dumped = [dump_map(n, m) for n, m in prog.maps.items()] if dump_maps else []
    return RunReport(result.retval, result.data_out, result.duration_ns, "kernel", repeat, result.ctx_out, dumped)
