"""A compiled program: position-independent native code, where its entry points are, which bytes came from
which BPF slot, and what a loader must fill in (the control-block cells: map handles, map value pointers,
function addresses, context fields) — everything a device driver or our own runtime needs to load it."""

from __future__ import annotations

from dataclasses import dataclass

from . import abi


@dataclass
class Image:
    arch: str
    name: str
    code: bytes
    entry: int  # offset of `uint64 entry(ctl)`: runs the program
    call_function: int  # offset of `uint64 call_function(ctl, native address)`: a BPF function from a helper
    repeat: int  # offset of `uint64 repeat(ctl, n)`: n runs in native code
    functions: dict[int, int]  # BPF function entry slot -> offset
    origins: list[tuple[int, int, int]]  # (offset, length, slot); slot -1: prologue, epilogue, dispatch
    cells: object  # lower.Cells
    lowered: object  # lower.Lowered

    def slot_at(self, offset: int) -> int:
        for start, length, slot in self.origins:
            if start <= offset < start + length:
                return slot
        return -1

    def relocations(self) -> list[dict]:
        """What a loader fills before the first run, as control-block offsets (the code reaches the
        control block through its base register, so the code itself needs no patching)."""
        cells = self.cells
        out = [{"kind": "map", "ref": ref, "cell": cell} for ref, cell in sorted(cells.maps.items())]
        out += [{"kind": "map_value", "ref": ref, "cell": cell} for ref, cell in sorted(cells.map_values.items())]
        out += [{"kind": "function", "slot": slot, "cell": cell} for slot, cell in sorted(cells.functions.items())]
        out += [{"kind": "ctx_field", "slot": slot, "offset": self.lowered.ctx_fields[slot][0],
                 "size": self.lowered.ctx_fields[slot][1], "cell": cell}
                for slot, cell in sorted(cells.ctx_loads.items())]
        out += [{"kind": "kfunc", "index": i, "btf_id": btf_id, "module": module}
                for i, (btf_id, module) in enumerate(cells.kfuncs)]
        out.append({"kind": "callback", "cell": abi.CALLBACK})
        return out
