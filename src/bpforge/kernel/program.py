"""Loading programs into the kernel: maps created and relocations resolved the way libbpf does, then
BPF_PROG_LOAD. The verifier's answer is a `KernelVerdict`; a rejection raises `VerifierRejected`, which
carries the verdict (log, message, failing instruction), so a caller such as `bpforge verify` reports it as
a clean "no" rather than an error.

Map references in raw instruction lists (`load_insns`): an lddw with src_reg BPF_PSEUDO_MAP_FD (1) or
BPF_PSEUDO_MAP_VALUE (2) names a map by its `imm`, which is a *key into the `maps` argument* — an index when
`maps` is a list, a key when it is a dict (K2 programs: the map's `fd` in NAME.maps) — and is replaced by
the map's real fd before loading. BPF_PSEUDO_MAP_IDX (5) / BPF_PSEUDO_MAP_IDX_VALUE (6) keep their index
and the kernel resolves it through `fd_array`, built from the same `maps` (slot i = the map keyed i).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..elf.externs import relocate_for_kernel
from ..elf.maprefs import find_map, resolve_map_relocations
from ..elf.maps import with_arena_data
from ..elf.model import MAP_RELOC_KINDS
from ..errors import BpforgeError, errno_text
from ..isa import Insn, encode, slot_starts
from ..isa.maptypes import MapSpec
from ..isa.progtypes import default_attach_type, prog_type_of_section, required_prog_flags, section_def
from .btf import BtfError, program_btf
from .maps import KernelMap
from .syscall import DEFAULT_LOG_SIZE, LoadResult, bpf_prog_load, close_fd, prog_type_id
from .testrun import TestRunResult, test_run

if TYPE_CHECKING:
    from ..elf.bpfobject import BpfObject
    from ..elf.model import LinkedProgram
    from ..formats.loader import LoadedProgram

_MAP_LOADS = ("lddw_map_fd", "lddw_map_value")  # imm: a key into `maps`, replaced by the map's fd
_MAP_IDX_LOADS = ("lddw_map_idx", "lddw_map_idx_value")

# Verifier log lines that are not the complaint: the instruction trace, register states, progress notes.
_INSN_LINE = re.compile(r"^(\d+): \([0-9a-f]{2}\)")
_NOT_COMPLAINT = re.compile(r"^(\d+: R\d|\d+: \(|from \d+ to \d+|func#\d+ @\d+|processed \d+ insns|"
                            r"verification time|stack depth|Validating |Func#\d+ .* is global|; |mark_precise|"
                            r"last_idx |regs=|parent didn't have|\s*$)")
_PROCESSED = re.compile(r"processed (\d+) insns")
_STATS_TAIL = re.compile(r"(?<=\S)processed \d+ insns \(limit.*$")
# The kernel's complaints about func_info/line_info records (check_btf_func/check_btf_line), not the code.
_BTF_COMPLAINT = re.compile(r"func_info|line_info|BTF section|invalid btf|invalid type id", re.IGNORECASE)


@dataclass
class KernelVerdict:
    """What BPF_PROG_LOAD said. `slot` is the kernel's instruction number (8-byte slots) of the complaint,
    `insn` the same as an index into the instruction list that was loaded; both None when the log names
    no instruction (or on acceptance)."""

    accepted: bool
    log: str
    errno: int = 0
    message: str = ""
    slot: int | None = None
    insn: int | None = None
    btf: bool = False  # whether the object's BTF (func_info, line_info) went along
    btf_error: str | None = None  # why it did not, when the object had BTF the kernel refused
    log_truncated: bool = False  # the log outgrew log_size: `log` holds its end (kernels >= 6.4)

    @property
    def processed_insns(self) -> int | None:
        """The verifier's "processed N insns" (its work, not the program size), when the log has it."""
        match = _PROCESSED.search(self.log)
        return int(match.group(1)) if match else None


class VerifierRejected(BpforgeError):
    """The kernel refused to load the program. `verdict` holds the log; not an internal error."""

    def __init__(self, verdict: KernelVerdict, **where):
        self.verdict = verdict
        super().__init__(f"kernel verifier rejects the program: {verdict.message}", insn=verdict.slot, **where)


@dataclass(eq=False)
class KernelProgram:
    """A loaded program (`fd`) and the maps it uses by name. `close()` (or `with`) closes the program and
    the maps it created; maps the caller passed in stay open (they are the caller's)."""

    fd: int
    name: str
    prog_type: str
    insns: list[Insn]  # as loaded: map references resolved to this load's fds
    maps: dict[str, KernelMap]
    verdict: KernelVerdict
    owned: list[KernelMap] = field(default_factory=list, repr=False)
    # Programs loaded along with this one to fill its prog arrays (tail-call targets); closed with it.
    companions: list[KernelProgram] = field(default_factory=list, repr=False)

    @property
    def log(self) -> str:
        return self.verdict.log

    def test_run(self, data: bytes, **options) -> TestRunResult:
        """`testrun.test_run(self, data, ...)`."""
        return test_run(self, data, **options)

    def close(self) -> None:
        close_fd(self.fd)
        self.fd = -1
        for companion in self.companions:
            companion.close()
        self.companions = []
        for kmap in self.owned:
            kmap.close()
        self.owned = []

    def __enter__(self) -> KernelProgram:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- objects -----------------------------------------------------------------------------------------------

def load_linked(linked: LinkedProgram, obj: BpfObject | None, *, prog_type: str | None = None,
                maps: Mapping[str, KernelMap] | None = None, license: str | None = None, log_level: int = 1,
                log_size: int = DEFAULT_LOG_SIZE, explain: bool = True, prog_flags: int = 0,
                expected_attach_type: int = 0, max_entries: Mapping[str, int] | None = None,
                btf: bool = True) -> KernelProgram:
    """Load an object's linked program as libbpf would: every map it references is taken from `maps` (by
    name) or created from the object's definition (global data sections become one-element arrays holding
    their initial contents, .rodata ones frozen); lddw of a map gets src_reg BPF_PSEUDO_MAP_FD and imm = its
    fd, lddw of global data BPF_PSEUDO_MAP_VALUE, imm = fd and the second imm = the offset in the section.

    With `btf` (and an object that has .BTF/.BTF.ext) the object's BTF goes along with the program's
    func_info and line_info, as libbpf sends them: global functions are then verified on their own and the
    log shows source lines; BTF the kernel refuses is left out (`verdict.btf_error` says why).
    `log_level` 0 loads without a log (faster); a rejection is then loaded again with one to explain it,
    unless `explain` is False (the cheapest yes/no: errno only, for gates that try many candidates).
    `prog_type` defaults to what the section name says (libbpf's SEC() conventions);
    `license` defaults to the object's (else "GPL"); `max_entries` shrinks named maps (big tables in
    tests). Raises VerifierRejected with the verdict when the verifier says no; BpforgeError for references
    that do not resolve (CO-RE relocations, kfuncs, ksyms, kconfig externs as libbpf refuses them: see
    elf.core, elf.externs); MapError when a map cannot be created."""
    where = dict(file=obj.filename if obj else None, section=linked.section)
    prog_type = prog_type or prog_type_of_section(linked.section)
    if prog_type is None:
        raise BpforgeError("the section name does not say the program type: pass prog_type", **where)
    sec = section_def(linked.section)
    if sec is not None and sec.prog_type == prog_type:  # what libbpf sets from the section name
        expected_attach_type = expected_attach_type or sec.expected_attach_type
        prog_flags |= sec.prog_flags
    if obj is not None:  # CO-RE and externs against the running kernel, as libbpf resolves them
        view = relocate_for_kernel(obj, linked)
        linked, obj = view.linked, with_arena_data(view.obj)  # the arena map gets the __arena globals
    given = dict(maps or {})
    needed: dict[str, MapSpec] = {}  # the object's maps this load creates, in order of first use
    used: dict[str, KernelMap] = {}  # every map the program refers to, by name
    owned: list[KernelMap] = []

    def make(name: str, spec: MapSpec) -> KernelMap:
        kmap = KernelMap.create(spec, name=_kernel_map_name(obj, spec), max_entries=(max_entries or {}).get(name))
        kmap.name = name  # bpforge's name (the kernel's may be prefixed/truncated)
        owned.append(kmap)
        given[name], needed[name] = kmap, spec
        return kmap

    def handle(name: str, spec: MapSpec | None) -> int | None:
        kmap = given.get(name)
        if kmap is None:
            if spec is None:
                return None
            kmap = make(name, spec)
        used.setdefault(name, kmap)
        return kmap.fd

    try:
        insns = resolve_map_relocations(linked.insns, linked.relocations, obj.maps if obj is not None else None,
                                        handle, where=where)
        if obj is not None and any(d.values for d in needed.values()):
            for name, spec in _slot_maps(obj, needed, given).items():
                if name not in given:
                    make(name, spec)
        if license is None:
            license = (obj.license if obj is not None else None) or "GPL"
        prog_btf, btf_error = None, None
        if btf and obj is not None and obj.btf_bytes is not None and obj.btf_ext_bytes is not None:
            try:
                prog_btf = program_btf(obj, linked)
            except BtfError as err:
                btf_error = err.message
        options = dict(name=linked.name, maps=used, owned=owned, license=license, log_level=log_level,
                       log_size=log_size, explain=explain, prog_flags=prog_flags,
                       expected_attach_type=expected_attach_type, fd_array=None, where=where)
        try:
            loaded = _load(insns, prog_type, btf=prog_btf, btf_error=btf_error, **options)
        except VerifierRejected as err:
            if prog_btf is None or not _BTF_COMPLAINT.search(err.verdict.message):
                raise
            # Our func_info/line_info, not the program, is what the kernel refused: load as without BTF.
            loaded = _load(insns, prog_type, btf=None, btf_error=err.verdict.message, **options)
        finally:
            if prog_btf is not None:
                prog_btf.close()  # a loaded program holds its own reference
        if obj is not None:
            try:
                _fill_slots(loaded, obj, needed, given, log_level=log_level, btf=btf)
            except BaseException:
                loaded.owned = []  # closed below, once
                loaded.close()
                raise
        return loaded
    except BaseException:
        for kmap in owned:
            kmap.close()
        raise


def _slot_maps(obj: BpfObject, needed: Mapping[str, MapSpec], given: Mapping[str, KernelMap]) -> dict[str, MapSpec]:
    """Every map the programs and maps named in slot initializers (`.values = {...}`) use, transitively:
    libbpf creates all of an object's maps before it loads its programs, so tail-call targets share them."""
    found: dict[str, MapSpec] = {}
    pending = [d for d in needed.values() if d.values]
    seen_programs: set[str] = set()
    while pending:
        mapdef = pending.pop()
        for symbol in mapdef.values.values():
            if mapdef.type_name == "prog_array":
                if symbol in seen_programs:
                    continue
                seen_programs.add(symbol)
                for _, reloc in obj.linked(symbol).relocations:
                    if reloc.kind in MAP_RELOC_KINDS and reloc.target not in given:
                        target = _object_map(obj, reloc.kind, reloc.target)
                        if target.name not in needed and target.name not in found:
                            found[target.name] = target
                            pending.append(target)
            elif symbol not in needed and symbol not in found and symbol not in given:
                target = _object_map(obj, "map", symbol)
                found[symbol] = target
                pending.append(target)
    return found


def _fill_slots(loaded: KernelProgram, obj: BpfObject, defs: Mapping[str, MapSpec],
                given: Mapping[str, KernelMap], **options) -> None:
    """Fill prog arrays with the object's programs and maps of maps with its maps, as libbpf does after
    loading (bpf_object__init_prog_arrays / init_map_in_maps). Target programs load with the same maps and
    stay open as the program's companions."""
    maps = {**given, **{m.name: m for m in loaded.owned}}
    targets: dict[str, KernelProgram] = {}
    for name, mapdef in defs.items():
        for slot, symbol in sorted(mapdef.values.items()):
            if mapdef.type_name == "prog_array":
                if symbol not in targets:
                    try:
                        targets[symbol] = load_linked(obj.linked(symbol), obj, maps=maps, **options)
                    except BpforgeError as err:
                        raise BpforgeError(f"tail-call target '{symbol}' (map '{name}' slot {slot}): {err.message}",
                                           section=err.where.section) from None
                    loaded.companions.append(targets[symbol])
                fd = targets[symbol].fd
            else:
                fd = maps[symbol].fd
            maps[name].update(slot.to_bytes(maps[name].key_size, "little"), fd.to_bytes(4, "little"))


def _object_map(obj: BpfObject, kind: str, target: str) -> MapSpec:
    spec = find_map(obj.maps, kind, target)
    if spec is None:
        raise BpforgeError(f"the object defines no {'data section' if kind == 'data' else 'map'} '{target}'")
    return spec


def _kernel_map_name(obj: BpfObject | None, mapdef: MapSpec) -> str:
    """The kernel-side name libbpf gives a map: its own name, or for global data the object's name cut to 8
    characters plus the section (`global_d.rodata`) — only the standard three sections, others keep their
    section name (".rodata.cst16")."""
    if mapdef.source != "data" or obj is None or mapdef.section not in (".data", ".rodata", ".bss"):
        return mapdef.name
    stem = os.path.basename(obj.filename).split(".")[0]
    return stem[:8] + mapdef.section


# ---- raw instruction lists ---------------------------------------------------------------------------------

def load_insns(insns: Sequence[Insn], prog_type: str, *,
               maps: Sequence[KernelMap] | Mapping[int, KernelMap] | None = None, name: str | None = None,
               license: str = "GPL", log_level: int = 1, log_size: int = DEFAULT_LOG_SIZE, explain: bool = True,
               prog_flags: int = 0, expected_attach_type: int = 0) -> KernelProgram:
    """Load raw/assembled instructions. Map references follow the module's convention: the imm of a
    PSEUDO_MAP_FD/VALUE lddw is a key into `maps` (list index, or dict key such as K2's map fd), replaced by
    the real fd; PSEUDO_MAP_IDX(_VALUE) go to the kernel through fd_array. The maps stay the caller's.
    Logging options as for load_linked."""
    return _load_with_maps(insns, prog_type, maps=maps, owned=[], name=name, license=license,
                           log_level=log_level, log_size=log_size, explain=explain, prog_flags=prog_flags,
                           expected_attach_type=expected_attach_type)


def _load_with_maps(insns, prog_type, *, maps, owned, name, license, log_level, prog_flags,
                    expected_attach_type, log_size=DEFAULT_LOG_SIZE, explain=True, where=None) -> KernelProgram:
    where = where or {}
    table: dict[int, KernelMap] = dict(enumerate(maps)) if isinstance(maps, Sequence) else dict(maps or {})
    starts = slot_starts(insns)
    out: list[Insn] = []
    uses_idx = False
    for i, insn in enumerate(insns):
        form = insn.form.name
        if form in _MAP_LOADS or form in _MAP_IDX_LOADS:
            kmap = table.get(insn.imm)
            if kmap is None:
                known = ", ".join(str(k) for k in sorted(table)) or "none given"
                raise BpforgeError(f"{form} refers to map {insn.imm}, which is not among the maps ({known})",
                                   insn=starts[i], **where)
            if form in _MAP_LOADS:
                insn = insn.replace(imm=kmap.fd)
            else:
                uses_idx = True
        out.append(insn)
    fd_array = None
    if uses_idx:
        fd_array = [table[k].fd if k in table else -1 for k in range(max(table) + 1)]
    used = {kmap.name: kmap for kmap in table.values()}
    return _load(out, prog_type, name=name, maps=used, owned=owned, license=license, log_level=log_level,
                 log_size=log_size, explain=explain, prog_flags=prog_flags,
                 expected_attach_type=expected_attach_type, fd_array=fd_array, where=where)


def load_loaded(loaded: LoadedProgram, *, prog_type: str | None = None, log_level: int = 1) -> KernelProgram:
    """Load what `formats.load_program` read: an object's program with its maps and global data, a K2
    program with maps made from NAME.maps (keyed by their fd, K2's convention), or map-less raw/asm code."""
    prog_type = prog_type or loaded.prog_type
    if loaded.object is not None:
        obj = loaded.object
        return load_linked(obj.linked(loaded.name), obj, prog_type=prog_type, log_level=log_level)
    owned: list[KernelMap] = []
    try:
        table = {}
        for spec in loaded.maps:
            kmap = KernelMap.create(spec)
            owned.append(kmap)
            table[spec.ref if spec.ref is not None else len(table)] = kmap
        return _load_with_maps(loaded.insns, prog_type, maps=table, owned=owned, name=loaded.name,
                               license=loaded.license or "GPL", log_level=log_level, prog_flags=0,
                               expected_attach_type=0, where=dict(file=loaded.filename))
    except BaseException:
        for kmap in owned:
            kmap.close()
        raise


# ---- verdicts without keeping the program ------------------------------------------------------------------

def verify_insns(insns: Sequence[Insn], prog_type: str, **options) -> KernelVerdict:
    """The verifier's verdict on instructions (options as for load_insns); the program is closed again."""
    try:
        with load_insns(insns, prog_type, **options) as prog:
            return prog.verdict
    except VerifierRejected as err:
        return err.verdict


def verify_linked(linked: LinkedProgram, obj: BpfObject | None, *, prog_type: str | None = None,
                  **options) -> KernelVerdict:
    """The verifier's verdict on an object's program (options as for load_linked); everything is closed."""
    try:
        with load_linked(linked, obj, prog_type=prog_type, **options) as prog:
            return prog.verdict
    except VerifierRejected as err:
        return err.verdict


# ---- BPF_PROG_LOAD -----------------------------------------------------------------------------------------

def _load(insns: list[Insn], prog_type: str, *, name, maps, owned, license, log_level, log_size, explain,
          prog_flags, expected_attach_type, fd_array, where, btf=None, btf_error=None) -> KernelProgram:
    type_id = prog_type_id(prog_type)
    expected_attach_type = expected_attach_type or default_attach_type(prog_type)
    prog_flags |= required_prog_flags(prog_type)
    code = encode(insns)
    options = dict(name=name, license=license, log_size=log_size, prog_flags=prog_flags,
                   expected_attach_type=expected_attach_type, fd_array=fd_array, btf=btf)
    result = bpf_prog_load(code, type_id, log_level=log_level, **options)
    if not result.accepted and log_level == 0 and explain:
        # Loading without a log is the fast path; a "no" deserves its explanation, so ask again with one.
        explained = bpf_prog_load(code, type_id, log_level=1, **options)
        if explained.accepted:  # a transient failure (ENOMEM, EAGAIN) the second try did not meet: keep
            close_fd(explained.fd)  # the first answer
        else:
            result = explained
    verdict = _verdict(result)
    verdict.btf = btf is not None
    verdict.btf_error = btf_error
    if not result.accepted:
        verdict.insn = _insn_of_slot(insns, verdict.slot)
        raise VerifierRejected(verdict, **where)
    return KernelProgram(result.fd, name or "", prog_type, insns, dict(maps), verdict, list(owned))


def _verdict(result: LoadResult) -> KernelVerdict:
    """The verifier's verdict in what BPF_PROG_LOAD answered: for a rejection, its complaint and where."""
    if result.accepted:
        return KernelVerdict(True, result.log, log_truncated=result.log_truncated)
    message, slot = _complaint(result.log)
    return KernelVerdict(False, result.log, result.errno, message or errno_text(result.errno), slot,
                         log_truncated=result.log_truncated)


def _complaint(log: str) -> tuple[str, int | None]:
    """The verifier's complaint (the lines after the last instruction it traced, minus the statistics)
    and the slot of that instruction."""
    # some complaints lack their newline and run into the statistics line
    lines = [_STATS_TAIL.sub("", line) for line in log.splitlines()]
    last = None
    for i, line in enumerate(lines):
        if _INSN_LINE.match(line):
            last = i
    tail = lines[last + 1:] if last is not None else lines
    message = "; ".join(line.strip() for line in tail if not _NOT_COMPLAINT.match(line))
    slot = int(_INSN_LINE.match(lines[last]).group(1)) if last is not None and message else None
    return message, slot


def _insn_of_slot(insns: Sequence[Insn], slot: int | None) -> int | None:
    if slot is None:
        return None
    starts = slot_starts(insns)
    return starts.index(slot) if slot in starts else None


__all__ = ["KernelProgram", "KernelVerdict", "VerifierRejected", "load_insns", "load_linked", "load_loaded",
           "verify_insns", "verify_linked"]
