"""Instructions -> text, in llvm-objdump spelling (decimal numbers), re-assemblable by `asm`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .codec import encode, slot_starts
from .insn import Insn


def format_insn(insn: Insn) -> str:
    return str(insn)


def listing(
    insns: Sequence[Insn],
    *,
    symbols: Mapping[int, str] | None = None,
    relocations: Mapping[int, Sequence[tuple[str, str]]] | None = None,
    show_bytes: bool = False,
    base_slot: int = 0,
) -> list[str]:
    """Lines in the layout of `llvm-objdump -d -r`: a `<name>:` header where a symbol starts, then
    `slot:` [bytes] text, and a relocation line (type, symbol) under the instruction it patches.

    `symbols` and `relocations` are keyed by instruction index; slot numbers start at `base_slot`."""
    symbols = symbols or {}
    relocations = relocations or {}
    lines: list[str] = []
    for index, (insn, slot) in enumerate(zip(insns, slot_starts(insns))):
        slot += base_slot
        if index in symbols:
            if lines:
                lines.append("")
            lines.append(f"{slot * 8:016x} <{symbols[index]}>:")
        raw = ""
        if show_bytes:
            raw = " ".join(f"{b:02x}" for b in encode([insn])) + "\t"
        lines.append(f"{slot:8d}:\t{raw}{format_insn(insn)}")
        for rtype, name in relocations.get(index, ()):
            lines.append(f"\t\t{slot * 8:016x}:  {rtype}\t{name}")
    return lines
