"""Device cycles by a profile's costs: what each instruction costs on the device (`instruction_costs`), and
what a run cost given how often each instruction ran (`cycles`).

An instruction's cost is its class's (32- or 64-bit ALU, multiply, divide, branch, a load or store on the
stack or elsewhere, an atomic), a helper call the helper's cost (plus a host round trip when the map it
names stays on the host), a bpf2bpf call the call cost. The figures are the profile's; the counts come
from the emulated device (`jit.device`, which counts each BPF instruction as its code starts).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..analysis.frame import Frame, MapHandle
from ..isa.helpers import helper_name
from ..isa.ops import Alu, Atomic, Call, Exit, Jump, LegacyLoad, Load, LoadImm64, MayGoto, Store, Unary
from .profile import DeviceProfile

_MUL = frozenset({"mul"})
_DIV = frozenset({"div", "mod", "sdiv", "smod"})


def instruction_costs(ops, profile: DeviceProfile, states: Mapping[int, tuple] | None = None,
                      host_maps: frozenset[int] = frozenset()) -> list[int]:
    """Cycles of each slot's instruction on `profile`'s device (0 in an lddw's second slot). `states`:
    `analysis.frame` register states by slot (tells stack accesses and the map a helper call names);
    `host_maps`: map indexes placed on the host, whose helper calls cost a round trip."""
    c = profile.costs
    states = states or {}
    out = []
    for slot, op in enumerate(ops):
        cls = op.__class__
        regs = states.get(slot)
        if op is None:
            out.append(0)
        elif cls is Alu:
            out.append(c["mul"] if op.op in _MUL else c["div"] if op.op in _DIV else
                       c["alu32"] if op.width == 32 else c["alu64"])
        elif cls is Unary:
            out.append(c["alu32"] if op.width <= 32 else c["alu64"])
        elif cls in (Jump, MayGoto, Exit):
            out.append(c["branch"])
        elif cls is LoadImm64:
            out.append(c["alu64"])
        elif cls in (Load, Store):
            stack = op.base == 10 or regs is not None and isinstance(regs[op.base], Frame)
            kind = "load" if cls is Load else "store"
            out.append(c[f"{kind}_stack" if stack else f"{kind}_memory"])
        elif cls is Atomic:
            out.append(c["atomic"])
        elif cls is LegacyLoad:
            out.append(c["load_memory"])
        elif cls is Call and op.kind == "helper":
            name = (helper_name(op.target) or "").removeprefix("bpf_")
            cost = profile.helper_cost(name)
            if regs is not None and isinstance(regs[1], MapHandle) and regs[1].ref in host_maps:
                cost += c["host_map_access"]
            out.append(cost)
        else:  # bpf2bpf calls, kfuncs
            out.append(c["call"])
    return out


def cycles(counts: Mapping[int, int], costs: list[int]) -> int:
    """Device cycles of a run that started each slot `counts[slot]` times."""
    return sum(n * costs[slot] for slot, n in counts.items() if 0 <= slot < len(costs))


__all__ = ["cycles", "instruction_costs"]
