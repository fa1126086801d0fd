"""Which map a program uses in place of a map-in-map's inner maps: the inner template a loader needs when the
input does not say (K2's .maps files list an array_of_maps without its inner map; the kernel will not create
one without a template, and a verifier cannot type the lookup's result without it).

The evidence is the fallback idiom (Katran's `lru_map = bpf_map_lookup_elem(&lru_mapping, &cpu); if
(!lru_map) lru_map = &fallback_cache;`): where control merges, one path brings a lookup result of the outer
map and the other the handle of an ordinary map in the same register. The program then uses either as the
same map, so the ordinary map has the inner maps' shape. A forward problem on the one solver follows map
handles and outer lookup results through copies; its join records such meetings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..isa import Insn
from ..isa.helpers import helper_id
from ..isa.maptypes import MAP_IN_MAP_TYPES, MapSpec
from ..isa.ops import Alu, Call, LoadImm64, Reg, decode_ops
from .cfg import cfg_of_ops
from .dataflow import FORWARD, Problem, solve
from .effects import effects_of

_LOOKUP = helper_id("map_lookup_elem")


@dataclass(frozen=True, slots=True)
class _Handle:
    ref: int


@dataclass(frozen=True, slots=True)
class _Inner:
    outer: int  # a lookup result of this map-in-map (an inner map, or NULL)


def _step(regs: tuple, op, outers: frozenset[int]) -> tuple:
    out = list(regs)
    if op.__class__ is LoadImm64:
        out[op.dst] = _Handle(op.value) if op.kind == "map" else None
        return tuple(out)
    if op.__class__ is Alu and op.op == "mov" and op.width == 64 and op.src.__class__ is Reg:
        out[op.dst] = regs[op.src.n]
        return tuple(out)
    fx = effects_of(op)
    for n in fx.writes | fx.clobbers:
        out[n] = None
    if op.__class__ is Call and op.kind == "helper" and op.target == _LOOKUP:
        handle = regs[1]
        if isinstance(handle, _Handle) and handle.ref in outers:
            out[0] = _Inner(handle.ref)
    return tuple(out)


def inner_templates(insns: Sequence[Insn], maps: Sequence[MapSpec]) -> dict[int, int]:
    """Outer map ref -> the ref of the one ordinary map the program uses in place of its lookup results (only
    where exactly one such map meets it)."""
    by_ref = {spec.ref: spec for spec in maps if spec.ref is not None}
    outers = frozenset(ref for ref, spec in by_ref.items() if spec.type_name in MAP_IN_MAP_TYPES)
    if not outers:
        return {}
    ops = decode_ops(list(insns))
    cfg = cfg_of_ops(ops)
    met: dict[int, set[int]] = {}

    def join(a, b):
        if a is None:
            return b
        if b is None:
            return a
        out = []
        for x, y in zip(a, b):
            if x == y:
                out.append(x)
                continue
            merged = None
            for inner, handle in ((x, y), (y, x)):
                if isinstance(inner, _Inner) and isinstance(handle, _Handle) and handle.ref not in outers:
                    met.setdefault(inner.outer, set()).add(handle.ref)
                    merged = inner  # still the lookup result, so a third path's map meets it too
            out.append(merged)
        return tuple(out)

    for fn in cfg.functions:
        blocks = cfg.blocks

        def transfer(b: int, regs):
            if regs is None:
                return None
            for _, op in blocks[b].ops:
                regs = _step(regs, op, outers)
            return regs

        solve(cfg, fn.index, Problem(FORWARD, boundary=(None,) * 11, bottom=None, join=join, transfer=transfer))
    return {outer: next(iter(found)) for outer, found in met.items() if len(found) == 1}


__all__ = ["inner_templates"]
