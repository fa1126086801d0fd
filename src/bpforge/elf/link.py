"""Static linking of one program the way libbpf does it before BPF_PROG_LOAD (bpf_object__reloc_code):
the program's function, then each subprogram it calls or takes the address of, appended depth-first in
order of first reference; calls and function addresses become pc-relative (src_reg PSEUDO_CALL/FUNC)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import ElfError, EncodeError
from ..isa import Insn, branch_target, retarget, slot_starts
from .model import LinkedProgram, Program, ProgramSection, Reloc
from .relocs import slot_index

if TYPE_CHECKING:
    from .bpfobject import BpfObject  # linking reads only its sections and file name


def link(obj: BpfObject, prog: Program) -> LinkedProgram:
    sections = {s.name: s for s in obj.sections}
    insns: list[Insn] = []
    origins: list[tuple[str, int]] = []
    functions: dict[int, str] = {}
    relocations: list[tuple[int, Reloc]] = []
    placed: dict[tuple[str, int], int] = {}  # (section, function start) -> index in the linked program
    fixups: list[tuple[int, str, int, int]] = []  # (linked index, callee section, callee index, its function)
    tables: dict[str, tuple[list[int], dict[int, int]]] = {}
    # Functions placed but not yet scanned, as [section, function start, end, next instruction to scan]. libbpf's
    # bpf_object__reloc_code recurses into a callee as soon as it appends it; an explicit stack gives the same
    # order without Python's recursion limit (a chain of thousands of subprograms links like any other).
    pending: list[list] = []

    def layout(sec: ProgramSection) -> tuple[list[int], dict[int, int]]:
        if sec.name not in tables:
            tables[sec.name] = (slot_starts(sec.insns), slot_index(sec.insns))
        return tables[sec.name]

    def where(sec: ProgramSection, i: int) -> dict:
        return dict(file=obj.filename, section=sec.name, insn=layout(sec)[0][i])

    def append(sec: ProgramSection, start: int) -> None:
        base = len(insns)
        placed[(sec.name, start)] = base
        _, end = sec.function_range(start)
        functions[base] = sec.functions[start]
        insns.extend(sec.insns[start:end])
        origins.extend((sec.name, i) for i in range(start, end))
        pending.append([sec, start, end, start])

    def scan() -> None:
        """Scan the function on top of the stack until it ends or calls a function not yet placed."""
        frame = pending[-1]
        sec, start, end, i = frame
        starts, index_of = layout(sec)
        base = placed[(sec.name, start)]
        while i < end:
            insn, reloc = sec.insns[i], sec.relocations.get(i)
            here = base + i - start
            i += 1
            if reloc is not None and reloc.kind in ("call", "func"):
                callee = (reloc.target_section, reloc.offset)
            elif reloc is None and insn.form.target_field is not None:
                target = index_of.get(branch_target(insn, starts[i - 1]))
                if target is None or target >= len(sec.insns):
                    raise ElfError(f"{insn.form.name} targets slot {branch_target(insn, starts[i - 1])}, which is "
                                   "not an instruction of the section", **where(sec, i - 1))
                if insn.form.is_branch:
                    if not start <= target < end:
                        raise ElfError(f"jump leaves function '{sec.functions[start]}'", **where(sec, i - 1))
                    continue
                callee = (sec.name, target)
            else:
                if reloc is not None:
                    relocations.append((here, replace(reloc, insn=here)))
                continue
            callee_sec = sections.get(callee[0])
            if callee_sec is None:
                raise ElfError(f"call into section '{callee[0]}', which holds no code", **where(sec, i - 1))
            func_start, _ = callee_sec.function_at(callee[1])
            fixups.append((here, callee_sec.name, callee[1], func_start))
            if (callee_sec.name, func_start) not in placed:
                frame[3] = i  # resume after this call once the callee (and what it calls) is placed
                append(callee_sec, func_start)
                return
        pending.pop()

    append(sections[prog.section], prog.start)
    while pending:
        scan()
    slots = slot_starts(insns)
    for here, sec_name, target, func_start in fixups:
        linked_target = placed[(sec_name, func_start)] + target - func_start
        old = insns[here]
        new = Insn.make("call_local") if old.form.kind == "call" else Insn.make("lddw_func", dst=old.dst)
        try:
            insns[here] = retarget(new, slots[here], slots[linked_target])
        except EncodeError as err:
            raise ElfError(err.message, file=obj.filename, section=prog.section) from None
    relocations.sort(key=lambda item: item[0])
    return LinkedProgram(prog.name, prog.section, insns, relocations, functions, origins)
