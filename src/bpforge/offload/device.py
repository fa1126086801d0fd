"""Loading a program on a device and running it there: the offload check first (the profile's limits on
top of our verifier, which the JIT's verified mode needs), maps placed as the check placed them, the JIT
for the device's ISA, and the emulated device (`jit.device`: its own memory, a firmware serving helper
calls) running it; what the device did (retval, packet, maps) and what it cost by the profile (device
cycles from how often each BPF instruction ran there, and the time at the device's clock).

The host runs what no device should (`host_reason`): everything on the host profile (natively, timed,
without a cycle model), and a packet larger than the device holds, as a NIC passes what it cannot buffer;
the API runs those on the host's own engines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .. import vm
from ..analysis.frame import program_frame_states
from ..errors import BpforgeError
from ..isa.ops import decode_ops
from ..kernel.maps import possible_cpus
from ..isa.maptypes import dump_map, preload_maps
from ..jit import plan
from ..jit.device import DeviceSession, run_device
from ..vm.maps import create_map
from .check import HOST_ONLY, OFFLOADABLE, PARTLY, OffloadReport, check
from .stage import run_staged, split
from .cost import cycles, instruction_costs
from .profile import DeviceProfile


class NotOffloadable(BpforgeError):
    """The device cannot run the program (the check's first reason says why)."""


@dataclass
class DeviceRunReport:
    device: str
    verdict: str  # the check's
    ran_on: str  # device | host
    retval: int
    data_out: bytes
    maps: list[dict]
    device_cycles: int | None  # by the profile's costs (None: not run on a modelled device)
    device_insns: int | None  # native instructions the emulated core executed
    device_ns: float | None  # device_cycles at the profile's clock
    host_ns: float | None = None  # the host's ns per run, where it ran there
    why: str = ""
    counts: dict[int, int] = field(default_factory=dict)  # slot -> runs of the main program's instructions
    handed: bytes = b""  # staged: the frame the device handed to the host, metadata first
    staged: object = None  # staged: the `stage.Split` that ran

    def as_json(self) -> dict:
        return {"device": self.device, "verdict": self.verdict, "ran_on": self.ran_on, "retval": self.retval,
                "data_out": self.data_out.hex(), "maps": self.maps, "device_cycles": self.device_cycles,
                "device_insns": self.device_insns, "device_ns": self.device_ns, "host_ns": self.host_ns,
                "why": self.why}

    def text(self) -> str:
        lines = [f"on {self.device} ({self.verdict}): ran on the {self.ran_on}" + (f" - {self.why}" if self.why else ""),
                 f"retval {self.retval}", f"data_out {self.data_out.hex()}"]
        if self.device_cycles is not None:
            lines.append(f"device: {self.device_cycles} cycles ({self.device_ns:.0f} ns at the device's clock), "
                         f"{self.device_insns} native instructions")
        if self.host_ns is not None:
            lines.append(f"host: {self.host_ns:.0f} ns per run")
        for m in self.maps:
            lines.append(f"map {m['name']} ({m['type']}): {len(m['entries'])} entries")
            lines += [f"  {e['key']}: {e['value']}" for e in m["entries"]]
        return "\n".join(lines)


def host_reason(profile: DeviceProfile, data: bytes) -> str | None:
    """Why the host, not the device, runs this packet (None: the device does)."""
    if profile.kind == "host" or profile.isa == "x86_64":
        return "the host runs its own programs natively"
    if profile.limits.packet and len(data) > profile.limits.packet:
        return f"a {len(data)}-byte packet is more than the device's {profile.limits.packet}"
    return None


def run_on_device(loaded, profile: DeviceProfile, data: bytes, *, ctx: bytes | None = None,
                  preload: Mapping[str, list[tuple[bytes, bytes]]] | None = None,
                  report: OffloadReport | None = None) -> DeviceRunReport:
    """Run `loaded` once on `profile`'s emulated device: what it did and its cycles by the profile. A
    partly offloadable program runs staged (`run_staged_on_device`); one the device cannot take at all
    raises `NotOffloadable`."""
    report = report or check(loaded, profile)
    if report.verdict == PARTLY and report.cut is not None:
        return run_staged_on_device(profile, data, report, preload=preload)
    if report.verdict != OFFLOADABLE:
        first = report.reasons[0]
        where = "" if first.insn is None else f"insn {first.insn}" + (f" ({first.line})" if first.line else "") + ": "
        more = "" if report.verdict == HOST_ONLY else "; only part of it runs there (a multi-stage split can run it)"
        raise NotOffloadable(f"{report.program} is not offloadable to {profile.name}: {where}{first.message}{more}")
    program = vm.from_loaded(loaded, num_cpus=possible_cpus())
    maps = {name: m for name, m in zip(program.map_names, program.maps) if m is not None}
    preload_maps(maps, preload or {})
    session = DeviceSession.of(program, plan(loaded), profile.isa, count_slots=True)
    result = run_device(vm.Machine(program), session, data, loaded.prog_type, ctx)
    counts = {slot: n for (image, slot), n in session.last_counts.items() if image == 0}
    ops = decode_ops(program.insns)
    host_maps = frozenset(i for i, name in enumerate(program.map_names)
                          if any(p.map == name and p.where == "host" for p in report.placements))
    spent = cycles(counts, instruction_costs(ops, profile, program_frame_states(ops), host_maps))
    return DeviceRunReport(profile.name, report.verdict, "device", result.retval & 0xFFFFFFFF, result.data_out,
                           [dump_map(n, m) for n, m in maps.items()], spent, session.last_executed,
                           spent * 1000 / profile.clock_mhz, counts=counts)


def run_staged_on_device(profile: DeviceProfile, data: bytes, report: OffloadReport, *,
                         preload: Mapping[str, list[tuple[bytes, bytes]]] | None = None) -> DeviceRunReport:
    """The partly offloadable XDP program `report` checked, in two stages (`stage`): the device part on the profile's emulated
    core with the maps the device holds, handing the frame on through XDP metadata to the host part in
    the VM with the host's maps; the maps are each side's copy of the maps it holds."""
    insns, specs = report.stage_inputs
    staged = split(insns, specs, report.cut)
    cpus = possible_cpus()
    sides = []
    for _ in ("device", "host"):
        maps = [create_map(spec, num_cpus=cpus) for spec in specs]
        preload_maps({spec.name: m for spec, m in zip(specs, maps)}, preload or {})
        sides.append(maps)
    result = run_staged(staged, data, device_maps=sides[0], host_maps=sides[1], device=profile.isa)
    dumped = [dump_map(spec.name, m) for spec, m in zip(specs, result.maps)]
    why = {"device": "the device decided", "host": f"the device handed over ({result.tag}) and the host decided"}
    ops = decode_ops(staged.device)  # the device part's own instructions, stubs included
    # the device part uses the maps the device holds only: no host round trips to price
    spent = cycles(result.device_counts, instruction_costs(ops, profile, program_frame_states(ops)))
    return DeviceRunReport(profile.name, report.verdict, "device+host" if result.stage == "host" else "device",
                           result.retval, result.data_out, dumped, spent, result.device_insns,
                           spent * 1000 / profile.clock_mhz, handed=result.handed, staged=staged,
                           why=f"staged at insn{'s' * (len(report.cut.points) > 1)} "
                               f"{', '.join(map(str, report.cut.points))}: {why[result.stage]}")


__all__ = ["DeviceRunReport", "NotOffloadable", "run_on_device", "run_staged_on_device"]
