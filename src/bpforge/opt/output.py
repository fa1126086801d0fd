"""Optimized programs written back, really shorter (K2 pads with `ja +0`; we remove the instructions):
an ELF object through the ELF writer, raw bytecode, re-assemblable asm, or K2's `.insns`.

For an ELF object the optimizer works on the linked program as our verifier takes it (the program's
section first, then the .text subprograms it calls; map lddws numbered as `linked_inputs` numbers them).

What may change (`editable`): for ELF input, the program's own section only. A .text subprogram may be
shared by other programs of the object, which an edit would change too, and writing one back needs a
second section edit; both are left for later. Never an instruction that carries a CO-RE record or an
extern relocation: the loader patches its immediate or offset against the running kernel, so the value
the prover would reason about is a placeholder. Such an instruction still moves with the code around it,
and its CO-RE record follows it by origin (the writer moves a record to where its instruction went).

The section's new contents come from the transformation: an instruction that came unchanged from the
original is written as the section had it (its relocation follows it: map lddws keep their symbols); a
new map lddw equal to an original one but for its destination register borrows that one's relocation
(the writer patches every instruction carrying the origin); any other new instruction is written as it
is. Line info follows positions (`elf.writer`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..elf.edit import SectionEdit
from ..elf.writer import write_object
from ..errors import BpforgeError
from ..formats.loader import LoadedProgram
from ..isa import Insn, encode, slot_starts
from ..isa.disasm import listing
from ..verifier.check import linked_inputs
from .track import Transformation

FORMATS = ("elf", "raw", "asm", "k2")
_MAP_LDDW = ("lddw_map_fd", "lddw_map_value")
_RESOLVED_KINDS = ("map", "data", "arena", "call", "func")  # what the linked program itself carries


def default_format(loaded: LoadedProgram) -> str:
    """The input's own kind (word lists are written as raw bytecode)."""
    return {"elf": "elf", "k2": "k2", "asm": "asm"}.get(loaded.kind, "raw")


def original_insns(loaded: LoadedProgram) -> list[Insn]:
    """The program the optimizer starts from: for ELF input the linked program with its maps numbered."""
    obj = loaded.object
    if obj is None:
        return list(loaded.insns)
    return linked_inputs(obj, obj.linked(loaded.name))[0]


def editable(loaded: LoadedProgram) -> frozenset[int]:
    """The slots of the program (`original_insns`) the optimizer may change."""
    insns = original_insns(loaded)
    starts = slot_starts(insns)
    obj = loaded.object
    if obj is None:
        keep = range(len(insns))
    else:
        linked = obj.linked(loaded.name)
        pinned = _pinned(loaded)
        keep = [i for i, (section, _) in enumerate(linked.origins) if section == linked.section and i not in pinned]
    return frozenset(s for i in keep for s in range(starts[i], starts[i] + insns[i].slots))


def _pinned(loaded: LoadedProgram) -> set[int]:
    """Linked indexes whose instruction the loader patches: CO-RE records, externs (kfuncs, ksyms, kconfig)."""
    obj = loaded.object
    linked = obj.linked(loaded.name)
    placed = {origin: i for i, origin in enumerate(linked.origins)}
    out = {i for i, reloc in linked.relocations if reloc.kind not in _RESOLVED_KINDS}
    if obj.btf_ext is not None:
        for section, relos in obj.btf_ext.core_relos.items():
            out.update(placed[(section, r.insn)] for r in relos if (section, r.insn) in placed)
    return out


def write_optimized(loaded: LoadedProgram, t: Transformation, fmt: str) -> bytes:
    """The program of `t` (a transformation of `original_insns(loaded)`) in format `fmt`: for "elf" the whole
    object with the program's section edited, else the program alone. BpforgeError when `t` changed a slot
    `editable` excludes, or the format cannot say what the program needs."""
    if fmt not in FORMATS:
        raise BpforgeError(f"unknown output format '{fmt}' (choose {', '.join(FORMATS)})", file=loaded.filename)
    original = original_insns(loaded)
    if len(t.positions) != len(original) + 1:
        raise BpforgeError(f"the transformation is of a program of {len(t.positions) - 1} instructions, not of "
                           f"this one ({len(original)})", file=loaded.filename)
    _check_untouched(loaded, original, editable(loaded), t)
    if fmt == "elf":
        return _elf(loaded, original, t)
    _check_self_contained(loaded, t.insns, fmt)
    if fmt in ("raw", "k2"):
        return encode(t.insns)
    return ("\n".join(listing(t.insns)) + "\n").encode()


def _same_but_target(a: Insn, b: Insn) -> bool:
    name = a.form.target_field
    return a.form is b.form and (a == b or name is not None and a.replace(**{name: 0}) == b.replace(**{name: 0}))


def _check_untouched(loaded: LoadedProgram, original: Sequence[Insn], allowed: frozenset[int],
                     t: Transformation) -> None:
    """Every instruction outside `allowed` is still there, once, as it was (a jump may be retargeted), with
    nothing inserted between it and a pinned successor."""
    starts = slot_starts(original)
    count: dict[int, int] = {}
    for origin in t.origins:
        if origin is not None:
            count[origin] = count.get(origin, 0) + 1
    for k, insn in enumerate(original):
        if starts[k] in allowed:
            continue
        j = t.positions[k]
        kept = j is not None and j < len(t.insns) and t.origins[j] == k and count.get(k) == 1 and \
            _same_but_target(t.insns[j], insn)
        if kept and k + 1 < len(original) and starts[k + 1] not in allowed:
            kept = t.positions[k + 1] == j + 1
        if not kept:
            raise BpforgeError(f"the optimized program changes instruction {k} ({insn}), which may not be edited "
                               "(another section, a CO-RE record or an extern)", file=loaded.filename,
                               section=loaded.section, insn=starts[k])


def _check_self_contained(loaded: LoadedProgram, insns: Sequence[Insn], fmt: str) -> None:
    """A program written alone keeps map references as numbers; externs would be lost, and K2 needs each map
    lddw to name a map of its .maps."""
    obj = loaded.object
    if obj is not None:
        unresolved = [r for _, r in obj.linked(loaded.name).relocations if r.kind not in _RESOLVED_KINDS]
        if unresolved:
            raise BpforgeError(f"cannot write the program as {fmt}: it refers to {unresolved[0].kind} "
                               f"'{unresolved[0].target}', which only an object can carry", file=loaded.filename)
    if fmt != "k2":
        return
    refs = set(range(len(linked_inputs(obj, obj.linked(loaded.name))[1]))) if obj is not None else \
        {m.ref for m in loaded.maps}
    for insn, slot in zip(insns, slot_starts(insns)):
        if insn.form.name in _MAP_LDDW and insn.imm not in refs:
            raise BpforgeError(f"cannot write K2 .insns: the lddw refers to map {insn.imm}, which the program's "
                               "maps do not hold", file=loaded.filename, insn=slot)


def _elf(loaded: LoadedProgram, original: list[Insn], t: Transformation) -> bytes:
    obj = loaded.object
    if obj is None:
        raise BpforgeError(f"an ELF object can only be written for ELF input (this is {loaded.kind})",
                           file=loaded.filename)
    linked = obj.linked(loaded.name)
    section = obj.section(linked.section)
    own = sum(1 for sec, _ in linked.origins if sec == linked.section)
    if [index for _, index in linked.origins[:own]] != list(range(own)) or own != len(section.insns):
        # Several functions in the program's section (programs or static functions): not laid out as one run.
        raise BpforgeError(f"section {section.name} does not hold exactly this program", file=loaded.filename,
                           section=section.name)
    end = t.positions[own]
    if end is None:
        raise BpforgeError("the optimized program lost the start of its subprograms", file=loaded.filename)
    if any(o is not None and o >= own for o in t.origins[:end]):
        raise BpforgeError("the optimized program moved code between the section and its subprograms",
                           file=loaded.filename, section=section.name)
    # The subprograms are written as they are (not editable; `_check_untouched` saw them kept in order).
    by_form: dict[Insn, int] = {}  # a map lddw (dst 0) -> an original index carrying its relocation
    for k in range(own):
        if original[k].form.name in _MAP_LDDW and k in section.relocations:
            by_form.setdefault(original[k].replace(dst=0), k)
    insns, origins = [], []
    for j in range(end):
        insn, origin = t.insns[j], t.origins[j]
        if origin is not None and origin in section.relocations:
            if insn == original[origin] or _same_but_target(insn, original[origin]) and insn.form.kind == "call":
                insns.append(section.insns[origin])  # the writer recomputes a relocated call's offset
                origins.append(origin)
                continue
        if insn.form.name in _MAP_LDDW:
            lender = by_form.get(insn.replace(dst=0))
            if lender is None:
                raise BpforgeError(f"the new {insn} at insn {j} refers to a map no original instruction of the "
                                   "section refers to (it would need a relocation of its own)",
                                   file=loaded.filename, section=section.name)
            insns.append(section.insns[lender].replace(dst=insn.dst))
            origins.append(lender)
            continue
        if insn.form.kind == "lddw" and insn.src != 0 or insn.form.kind == "call" and insn.src == 1 or \
                origin is not None and origin in section.relocations:
            raise BpforgeError(f"the {insn.form.name} at insn {j} would need a relocation of its own",
                               file=loaded.filename, section=section.name)
        insns.append(insn)
        origins.append(origin)
    positions = [p if p is None or p <= end else None for p in t.positions[:own + 1]]
    positions[own] = end
    edit = SectionEdit(section.name, insns, origins, positions)
    try:
        return write_object(obj, {section.name: edit})
    except BpforgeError as err:
        raise err.at(file=loaded.filename, section=section.name) from None


__all__ = ["FORMATS", "default_format", "editable", "original_insns", "write_optimized"]
