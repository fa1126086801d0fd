"""The C source line of each instruction of a linked program, from the object's .BTF.ext line_info.

As the kernel's verifier finds a line for an instruction (find_linfo): the record with the greatest
instruction offset at or before it, in the linked program's order. clang emits a record where a function
starts and wherever the line changes, so an instruction without a record of its own belongs to the line of
the one before it.
"""

from __future__ import annotations

import bisect

from .bpfobject import BpfObject
from .btf_ext import LineInfo
from .model import LinkedProgram


def source_lines(obj: BpfObject, linked: LinkedProgram) -> list[LineInfo | None]:
    """One entry per instruction of `linked` (None where the object has no line for it, or no line_info)."""
    if obj.btf_ext is None:
        return [None] * len(linked.insns)
    placed = {origin: index for index, origin in enumerate(linked.origins)}
    records: dict[int, LineInfo] = {}
    for section, infos in obj.btf_ext.line_info.items():
        for info in infos:
            index = placed.get((section, info.insn))
            if index is not None:
                records.setdefault(index, info)  # the first record of an instruction, as libbpf keeps it
    starts = sorted(records)
    lines: list[LineInfo | None] = []
    for index in range(len(linked.insns)):
        at = bisect.bisect_right(starts, index) - 1
        lines.append(records[starts[at]] if at >= 0 else None)
    return lines


def where(info: LineInfo | None) -> str | None:
    """`file:line` as messages cite a source line (the file's base name, as the kernel log prints it)."""
    if info is None:
        return None
    return f"{info.file.rsplit('/', 1)[-1]}:{info.line}"


__all__ = ["source_lines", "where"]
