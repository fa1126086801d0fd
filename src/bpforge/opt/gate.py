"""The optimizer's gate: the program being optimized, as the verifiers take it, and their verdicts on a
changed version of it — ours (fast, every batch of rewrites) and the running kernel's (the final word).

`Subject.of(loaded)` builds one from what `formats.load_program` read:
- raw, asm and K2 input: the instructions as loaded (K2's map lddws name maps by their fd); the kernel gets
  maps created once from the specs and the instructions with those fds;
- an ELF object's program: the linked program as `verifier.check.linked_inputs` numbers its maps; the
  kernel gets the edited linked program (relocations and function symbols carried by the transformation's
  origins and positions) with the object's maps, BTF and global data, as `bpforge verify --kernel` loads it.

A verdict is True (accepted), False (rejected) or None (this verifier cannot say: unsupported, or no
`bpf()` here); `Subject.close()` releases the kernel maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..elf.model import LinkedProgram
from ..errors import BpforgeError
from ..formats.loader import LoadedProgram
from ..isa import Insn, slot_starts
from ..isa.maptypes import MapSpec
from ..isa.progtypes import section_def
from ..kernel import KernelUnavailable, kernel_available
from ..kernel.maps import KernelMap
from ..kernel.program import verify_insns, verify_linked
from ..verifier.check import Limits, Unsupported, linked_inputs, verify_program
from ..verifier.functions import GlobalFunction, global_functions
from .track import Transformation


@dataclass(frozen=True)
class Verdicts:
    ours: bool | None
    kernel: bool | None
    ours_message: str = ""
    kernel_message: str = ""

    @property
    def accepted(self) -> bool:
        """Nobody who could judge said no, and somebody said yes."""
        return self.ours is not False and self.kernel is not False and (self.ours or self.kernel) is True


@dataclass(eq=False)
class Subject:
    """One program to optimize: its instructions as our verifier takes them, and how to ask both verifiers
    about a transformation of them."""

    filename: str
    name: str | None
    section: str | None
    insns: list[Insn]
    prog_type: str
    maps: Mapping[int, MapSpec] | Sequence[MapSpec]
    attach: int = 0
    prog_flags: int = 0
    loaded: LoadedProgram | None = None
    linked: LinkedProgram | None = None
    functions: dict[int, GlobalFunction] = field(default_factory=dict)  # by the slot they start at
    func_info: bool = False
    use_kernel: bool = True
    editable: frozenset[int] | None = None  # slots a rewrite may touch (None: all)
    _kernel_maps: dict | None = None
    kernel_unavailable: str | None = None

    @staticmethod
    def of(loaded: LoadedProgram, *, kernel: bool = True) -> "Subject":
        if loaded.prog_type == "mem":
            raise BpforgeError("the optimizer keeps programs acceptable to the kernel verifier; 'mem' is the "
                               "userspace convention, which no verifier checks (give --type a kernel program "
                               "type such as xdp)", file=loaded.filename)
        attach, prog_flags = 0, 0
        obj = loaded.object
        if obj is not None:
            sec = section_def(loaded.section)
            if sec is not None and sec.prog_type == loaded.prog_type:
                attach, prog_flags = sec.expected_attach_type, sec.prog_flags
            linked = obj.linked(loaded.name)
            insns, specs = linked_inputs(obj, linked)
            func_info = obj.btf is not None and obj.btf_ext is not None and bool(obj.btf_ext.func_info)
            return Subject(loaded.filename, loaded.name, loaded.section, insns, loaded.prog_type, specs, attach,
                           prog_flags, loaded, linked, global_functions(obj, linked, loaded.prog_type), func_info,
                           kernel)
        maps = loaded.maps
        if maps and all(spec.ref is not None for spec in maps):
            maps = {spec.ref: spec for spec in maps}
        return Subject(loaded.filename, loaded.name, loaded.section, list(loaded.insns), loaded.prog_type,
                       maps, loaded=loaded, use_kernel=kernel)

    # ---- our verifier ---------------------------------------------------------------------------------

    def ours(self, t: Transformation, *, deadline: float | None = None) -> tuple[bool | None, str]:
        functions = self.functions
        if functions:
            functions = {_moved_slot(t, self.insns, slot): fn for slot, fn in functions.items()}
        try:
            verdict = verify_program(t.insns, self.prog_type, self.maps, attach=self.attach,
                                     prog_flags=self.prog_flags, limits=Limits(deadline=deadline),
                                     global_functions=functions or None, func_info=self.func_info)
        except Unsupported as why:
            return None, why.message
        return verdict.accepted, verdict.message or ""

    # ---- the kernel's -----------------------------------------------------------------------------------

    def kernel(self, t: Transformation) -> tuple[bool | None, str]:
        if not self.use_kernel:
            return None, "not asked (--no-kernel)"
        if self.kernel_unavailable is None:
            self.kernel_unavailable = kernel_available()
        if self.kernel_unavailable is not None:
            return None, self.kernel_unavailable
        try:
            if self.linked is not None:
                verdict = verify_linked(self.edited_linked(t), self.loaded.object, prog_type=self.prog_type,
                                        log_level=0, explain=True)
            else:
                verdict = verify_insns(t.insns, self.prog_type, maps=self._maps(), log_level=0,
                                       prog_flags=self.prog_flags, expected_attach_type=self.attach,
                                       license=self.loaded.license or "GPL" if self.loaded else "GPL")
        except KernelUnavailable as err:
            self.kernel_unavailable = err.message
            return None, err.message
        except BpforgeError as err:  # e.g. a map the kernel cannot create: no verdict on the code
            self.kernel_unavailable = f"the kernel could not be asked: {err.message}"
            return None, self.kernel_unavailable
        return verdict.accepted, verdict.message or ""

    def _maps(self) -> dict:
        if self._kernel_maps is None:
            table = dict(enumerate(self.maps)) if isinstance(self.maps, Sequence) else dict(self.maps)
            made: dict = {}
            try:
                for key, spec in table.items():
                    made[key] = KernelMap.create(spec)
            except BaseException:
                for kmap in made.values():
                    kmap.close()
                raise
            self._kernel_maps = made
        return self._kernel_maps

    def edited_linked(self, t: Transformation) -> LinkedProgram:
        """The linked program with `t` applied: each relocation on the instruction that came from the one it
        was on, function symbols where their first instruction went."""
        linked = self.linked
        assert linked is not None
        relocations = []
        for new, origin in enumerate(t.origins):
            if origin is not None:
                relocations.extend((new, reloc) for old, reloc in linked.relocations if old == origin)
        functions = {t.positions[old]: name for old, name in linked.functions.items()
                     if t.positions[old] is not None}
        origins = [linked.origins[o] if o is not None else (linked.section, -1) for o in t.origins]
        return LinkedProgram(linked.name, linked.section, list(t.insns), relocations, functions, origins)

    def judge(self, t: Transformation, *, kernel: bool = True, deadline: float | None = None) -> Verdicts:
        ours, why = self.ours(t, deadline=deadline)
        theirs, their_why = self.kernel(t) if kernel else (None, "")
        return Verdicts(ours, theirs, why, their_why)

    def close(self) -> None:
        for kmap in (self._kernel_maps or {}).values():
            kmap.close()
        self._kernel_maps = None

    def __enter__(self) -> "Subject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _moved_slot(t: Transformation, original: Sequence[Insn], slot: int) -> int:
    """Where the instruction at `slot` of the original program is in `t` (as a slot)."""
    index = {s: i for i, s in enumerate(slot_starts(original))}[slot]
    new = t.positions[index]
    if new is None:
        raise BpforgeError(f"the function at insn {slot} lost its first instruction")
    starts = slot_starts(t.insns)
    return starts[new] if new < len(starts) else sum(i.slots for i in t.insns)


__all__ = ["Subject", "Verdicts"]
