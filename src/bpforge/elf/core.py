"""CO-RE relocations (.BTF.ext core_relo records) applied as libbpf's relo_core.c applies them: a pure
function of the program's instructions, the object's own BTF and a target BTF (the running kernel's).

Each record names an instruction, a local root type and an access string ("0:3:1": array index on the
root, then member / array indices). libbpf

1. parses the access into a *spec* (accessors for named members and array indices, the bit offset),
2. looks for *candidates*: target types of a compatible kind whose essential name (`___flavor` cut off)
   equals the local one (vmlinux only; the list is pruned to the matching ones and kept per local type),
3. matches the spec against each candidate (members by name, through anonymous members; compatible member
   types), computes the relocated value for each match and insists that all matches agree (else a "field
   offset ambiguity" / "relocation decision ambiguity" error),
4. patches the instruction: ALU immediates, ldx/st/stx offsets (and their access size when the field's size
   changed, allowed only for pointers and unsigned integers), lddw 64-bit immediates — after checking that
   the instruction holds the value clang computed against the local BTF.

When nothing matches, existence checks become 0 and everything else *poisons* the instruction: it becomes
`call 0xbad2310` (both slots of an lddw), which the kernel's verifier rejects only if the code is reachable
("invalid func unknown#195896080") and the VM faults on only when it executes it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ..errors import BpforgeError
from ..isa import Insn, slot_starts
from ..isa import opcodes as op
from ..isa.insn import LDDW_OPCODE
from ..isa.numbers import M64, s32
from .btf import INT_SIGNED, Btf, BtfType
from .btf_ext import CoreRelo
from .bpfobject import BpfObject
from .model import LinkedProgram
from .vmlinux import KernelBtf, essential_name

FIELD_BYTE_OFFSET, FIELD_BYTE_SIZE, FIELD_EXISTS, FIELD_SIGNED, FIELD_LSHIFT_U64, FIELD_RSHIFT_U64 = range(6)
TYPE_ID_LOCAL, TYPE_ID_TARGET, TYPE_EXISTS, TYPE_SIZE, ENUMVAL_EXISTS, ENUMVAL_VALUE, TYPE_MATCHES = range(6, 13)
KIND_NAMES = {
    FIELD_BYTE_OFFSET: "byte_off", FIELD_BYTE_SIZE: "byte_sz", FIELD_EXISTS: "field_exists",
    FIELD_SIGNED: "signed", FIELD_LSHIFT_U64: "lshift_u64", FIELD_RSHIFT_U64: "rshift_u64",
    TYPE_ID_LOCAL: "local_type_id", TYPE_ID_TARGET: "target_type_id", TYPE_EXISTS: "type_exists",
    TYPE_SIZE: "type_size", ENUMVAL_EXISTS: "enumval_exists", ENUMVAL_VALUE: "enumval_value",
    TYPE_MATCHES: "type_matches",
}
FIELD_KINDS = frozenset(range(6))
TYPE_KINDS = frozenset((TYPE_ID_LOCAL, TYPE_ID_TARGET, TYPE_EXISTS, TYPE_SIZE, TYPE_MATCHES))
ENUMVAL_KINDS = frozenset((ENUMVAL_EXISTS, ENUMVAL_VALUE))

_ACCESS = re.compile(r"[0-9]{1,10}(?::[0-9]{1,10})*", re.ASCII)
POISON_HELPER = 0xBAD2310  # libbpf's "bad relo" helper id (195896080)
SPEC_MAX_LEN = 64  # BPF_CORE_SPEC_MAX_LEN
_MAX_DEPTH = 32  # recursion depth libbpf allows when comparing types
_COMPOSITE = ("struct", "union")
_ENUMS = ("enum", "enum64")
_CALL = op.JMP | op.JMP_OPS["call"]
_SIZE_MASK = 0x18  # the size field of a load/store opcode
_SIZE_BYTES = {code: size for size, code in op.SIZES.items()}


class CoreError(BpforgeError):
    """A CO-RE relocation libbpf would refuse (the load fails), as opposed to one it poisons."""


@dataclass(frozen=True)
class Accessor:
    type_id: int  # struct/union holding the member, or the array element type
    idx: int  # member index or array index
    name: str | None  # member name; None for an array index


@dataclass
class Spec:
    """A parsed access: `accessors` are the semantic steps (named members, array indices), `raw` every
    index of the access string (anonymous members included), `bit_offset` where the access lands."""

    btf: Btf
    root_type_id: int
    kind: int
    accessors: list[Accessor] = field(default_factory=list)
    raw: list[int] = field(default_factory=list)
    bit_offset: int = 0


@dataclass(frozen=True)
class CoreDecision:
    """What one relocation did to the instruction at `insn` (index in the program given)."""

    insn: int
    kind: str
    what: str  # the local access, e.g. "struct sk_buff.len (0:0)"
    orig: int
    new: int
    poisoned: bool
    target_id: int | None  # the target root type id that matched (None: no candidate matched)


@dataclass
class _Result:
    orig: int = 0
    new: int = 0
    poison: bool = False
    validate: bool = True
    fail_memsz_adjust: bool = False
    orig_sz: int = 0
    new_sz: int = 0
    orig_type_id: int = 0
    new_type_id: int = 0


class _Poison(Exception):
    """libbpf's -EUCLEAN: the relocation cannot be satisfied; poison the instruction."""


# ---- BTF helpers, in libbpf's terms -------------------------------------------------------------------

def _skip(btf: Btf, type_id: int) -> BtfType:
    """skip_mods_and_typedefs: the type behind typedefs and modifiers (its `.id` is the resolved id)."""
    return btf.skip_modifiers(type_id)


def _resolve_size(btf: Btf, type_id: int) -> int:
    try:
        return btf.size_of(type_id)
    except BpforgeError as err:
        raise CoreError(f"cannot size BTF type [{type_id}]: {err.message}") from None


def _kind_compat(a: BtfType, b: BtfType) -> bool:
    """btf_kind_core_compat: same kind, or any two enums."""
    return a.kind == b.kind or (a.kind in _ENUMS and b.kind in _ENUMS)


def _enum_value(t: BtfType, idx: int) -> int:
    """The value libbpf reads for enumerator `idx`: a 32-bit enum's value sign-extended (it is __s32 in
    struct btf_enum), an enum64's as 64 bits."""
    value = t.members[idx].value
    if t.kind == "enum":
        return s32(value) & M64
    return value & M64


def _type_label(btf: Btf, type_id: int) -> str:
    t = btf[type_id]
    if t.kind in ("struct", "union", "enum", "enum64", "fwd"):
        return f"{'enum' if t.kind == 'enum64' else t.kind} {t.name or '<anon>'}"
    return f"{t.kind} {t.name}" if t.name else t.kind


# ---- 1. parsing the local access ----------------------------------------------------------------------

def parse_spec(btf: Btf, relo: CoreRelo) -> Spec:
    """bpf_core_parse_spec: the local spec of a relocation. CoreError when the access is malformed."""
    access, kind = relo.access, relo.kind
    bad = lambda why: CoreError(f"invalid CO-RE access '{access}' on {_type_label(btf, relo.type_id)}: {why}")  # noqa: E731
    if not access or access.startswith(":"):
        raise bad("empty")
    spec = Spec(btf, relo.type_id, kind)
    if kind in TYPE_KINDS:
        if access != "0":
            raise bad("type relocations take the access '0'")
        return spec
    # libbpf reads each step with strtol; only ASCII digits, and few enough of them for an index
    if not _ACCESS.fullmatch(access):
        raise bad("not a list of indexes")
    spec.raw = [int(part) for part in access.split(":")]
    if len(spec.raw) > SPEC_MAX_LEN:
        raise bad(f"more than {SPEC_MAX_LEN} steps")
    t = _skip(btf, relo.type_id)
    first = spec.raw[0]
    if kind in ENUMVAL_KINDS:
        if t.kind not in _ENUMS or len(spec.raw) > 1 or first >= len(t.members):
            raise bad("not an enumerator of an enum")
        spec.accessors.append(Accessor(t.id, first, t.members[first].name))
        return spec
    if kind not in FIELD_KINDS:
        raise CoreError(f"unrecognized CO-RE relocation kind {kind}")
    spec.accessors.append(Accessor(t.id, first, None))
    spec.bit_offset = first * _resolve_size(btf, t.id) * 8
    type_id = t.id
    for idx in spec.raw[1:]:
        t = _skip(btf, type_id)
        if t.kind in _COMPOSITE:
            if idx >= len(t.members):
                raise bad(f"{_type_label(btf, t.id)} has no member #{idx}")
            member = t.members[idx]
            spec.bit_offset += member.offset
            if member.name:
                spec.accessors.append(Accessor(t.id, idx, member.name))
            type_id = member.type
        elif t.kind == "array":
            elem = _skip(btf, t.array[0])
            if not _is_flex_array(btf, spec.accessors[-1], t) and idx >= t.array[2]:
                raise bad(f"index {idx} beyond an array of {t.array[2]}")
            spec.accessors.append(Accessor(elem.id, idx, None))
            spec.bit_offset += idx * _resolve_size(btf, elem.id) * 8
            type_id = elem.id
        else:
            raise bad(f"step {idx} goes into a {t.kind}")
    return spec


def _is_flex_array(btf: Btf, acc: Accessor, array: BtfType) -> bool:
    """A zero-length array that is the last member of the struct the previous accessor named."""
    if acc.name is None or array.array[2] > 0:
        return False
    return acc.idx == len(btf[acc.type_id].members) - 1


def describe(spec: Spec) -> str:
    """The local access as text: "struct sk_buff.len (0:0)"."""
    btf = spec.btf
    text = _type_label(btf, spec.root_type_id)
    if spec.kind in ENUMVAL_KINDS and spec.accessors:
        return f"{text}::{spec.accessors[0].name}"
    for n, acc in enumerate(spec.accessors):
        if acc.name is not None:
            text += f".{acc.name}"
        elif n > 0 or acc.idx:
            text += f"[{acc.idx}]"
    return f"{text} ({':'.join(map(str, spec.raw))})" if spec.raw else text


# ---- 2./3. matching against a target ------------------------------------------------------------------

def _fields_compat(lbtf: Btf, lid: int, tbtf: Btf, tid: int) -> bool:
    """bpf_core_fields_are_compat."""
    for _ in range(_MAX_DEPTH):
        lt, tt = _skip(lbtf, lid), _skip(tbtf, tid)
        if lt.kind in _COMPOSITE and tt.kind in _COMPOSITE:
            return True
        if not _kind_compat(lt, tt):
            return False
        if lt.kind in ("ptr", "float"):
            return True
        if lt.kind in ("fwd", "enum", "enum64"):
            ln, tn = essential_name(lt.name), essential_name(tt.name)
            return not ln or not tn or ln == tn
        if lt.kind == "int":
            return lt.int_offset == 0 and tt.int_offset == 0
        if lt.kind == "array":
            lid, tid = lt.array[0], tt.array[0]
            continue
        return False
    raise CoreError("types nest too deeply to compare")


def types_are_compat(lbtf: Btf, lid: int, tbtf: Btf, tid: int, level: int = _MAX_DEPTH) -> bool:
    """bpf_core_types_are_compat (TYPE_EXISTS / TYPE_SIZE / TYPE_ID_TARGET, and kfunc prototypes)."""
    if not _kind_compat(lbtf[lid], tbtf[tid]):
        return False
    for _ in range(_MAX_DEPTH):
        lt, tt = _skip(lbtf, lid), _skip(tbtf, tid)
        if not _kind_compat(lt, tt):
            return False
        if lt.kind in ("void", "struct", "union", "enum", "enum64", "fwd"):
            return True
        if lt.kind == "int":
            return lt.int_offset == 0 and tt.int_offset == 0
        if lt.kind == "ptr":
            lid, tid = lt.type, tt.type
            continue
        if lt.kind == "array":
            lid, tid = lt.array[0], tt.array[0]
            continue
        if lt.kind == "func_proto":
            if len(lt.members) != len(tt.members):
                return False
            for lp, tp in zip(lt.members, tt.members):
                if level <= 0:
                    raise CoreError("function prototypes nest too deeply to compare")
                if not types_are_compat(lbtf, _skip(lbtf, lp.type).id, tbtf, _skip(tbtf, tp.type).id, level - 1):
                    return False
            lid, tid = _skip(lbtf, lt.type).id, _skip(tbtf, tt.type).id
            continue
        return False
    raise CoreError("types nest too deeply to compare")


def _names_match(local: str, target: str) -> bool:
    """bpf_core_names_match: an anonymous target matches only an anonymous local type."""
    if not target:
        return not local
    return essential_name(local) == essential_name(target)


def types_match(lbtf: Btf, lid: int, tbtf: Btf, tid: int, behind_ptr: bool = False,
                level: int = _MAX_DEPTH) -> bool:
    """bpf_core_types_match (TYPE_MATCHES): stricter than compatibility — sizes, signedness, array lengths,
    and every local member / enumerator must have a namesake in the target."""
    if level <= 0:
        raise CoreError("types nest too deeply to match")
    for _ in range(_MAX_DEPTH):
        lt, tt = _skip(lbtf, lid), _skip(tbtf, tid)
        if not _names_match(lt.name, tt.name):
            return False
        lk, tk = lt.kind, tt.kind
        if lk == "void":
            return lk == tk
        if lk == "fwd":
            if behind_ptr and lk != tk:
                return (tk == "struct" and not lt.kflag) or (tk == "union" and lt.kflag)
            return lk == tk and lt.kflag == tt.kflag
        if lk in _ENUMS:
            return tk in _ENUMS and _enums_match(lbtf, lt, tbtf, tt)
        if lk in _COMPOSITE:
            if behind_ptr:
                if lk == tk:
                    return True
                return tk == "fwd" and (lk == "union") == tt.kflag
            return lk == tk and _composites_match(lbtf, lt, tbtf, tt, behind_ptr, level)
        if lk == "int":
            return lk == tk and lt.size == tt.size and \
                (lt.int_encoding & INT_SIGNED) == (tt.int_encoding & INT_SIGNED)
        if lk == "ptr":
            if lk != tk:
                return False
            behind_ptr = True
            lid, tid = lt.type, tt.type
            continue
        if lk == "array":
            if lk != tk or lt.array[2] != tt.array[2]:
                return False
            lid, tid = lt.array[0], tt.array[0]
            continue
        if lk == "func_proto":
            if lk != tk or len(lt.members) != len(tt.members):
                return False
            for lp, tp in zip(lt.members, tt.members):
                if not types_match(lbtf, lp.type, tbtf, tp.type, behind_ptr, level - 1):
                    return False
            lid, tid = lt.type, tt.type
            continue
        return False
    raise CoreError("types nest too deeply to match")


def _enums_match(lbtf: Btf, lt: BtfType, tbtf: Btf, tt: BtfType) -> bool:
    if lt.size != tt.size or len(lt.members) > len(tt.members):
        return False
    return all(any(_names_match(lm.name, tm.name) for tm in tt.members) for lm in lt.members)


def _composites_match(lbtf: Btf, lt: BtfType, tbtf: Btf, tt: BtfType, behind_ptr: bool, level: int) -> bool:
    if len(lt.members) > len(tt.members):
        return False
    for lm in lt.members:
        if not any(tm.name and _names_match(lm.name, tm.name)
                   and types_match(lbtf, lm.type, tbtf, tm.type, behind_ptr, level - 1) for tm in tt.members):
            return False
    return True


def _match_member(lbtf: Btf, lacc: Accessor, tbtf: Btf, tid: int, spec: Spec) -> tuple[int, int]:
    """bpf_core_match_member: (1, next target type id) when the local named member is found in target
    type `tid` (searching anonymous members too) with a compatible type, (0, 0) otherwise."""
    tt = _skip(tbtf, tid)
    if tt.kind not in _COMPOSITE:
        return 0, 0
    local_member = lbtf[lacc.type_id].members[lacc.idx]
    for i, m in enumerate(tt.members):
        if len(spec.raw) == SPEC_MAX_LEN:
            raise CoreError(f"target type nests deeper than {SPEC_MAX_LEN} levels")
        spec.bit_offset += m.offset
        spec.raw.append(i)
        if not m.name:
            found, next_id = _match_member(lbtf, lacc, tbtf, m.type, spec)
            if found:
                return found, next_id
        elif m.name == local_member.name:
            if not _fields_compat(lbtf, local_member.type, tbtf, m.type):
                return 0, 0
            spec.accessors.append(Accessor(tt.id, i, m.name))
            return 1, m.type
        spec.bit_offset -= m.offset
        spec.raw.pop()
    return 0, 0


def match_spec(local: Spec, tbtf: Btf, target_id: int) -> Spec | None:
    """bpf_core_spec_match: the target spec when candidate `target_id` matches the local spec, else None."""
    spec = Spec(tbtf, target_id, local.kind)
    if local.kind in TYPE_KINDS:
        if local.kind == TYPE_MATCHES:
            ok = types_match(local.btf, local.root_type_id, tbtf, target_id)
        else:
            ok = types_are_compat(local.btf, local.root_type_id, tbtf, target_id)
        return spec if ok else None
    if local.kind in ENUMVAL_KINDS:
        tt = _skip(tbtf, target_id)
        if tt.kind not in _ENUMS:
            return None
        wanted = essential_name(local.accessors[0].name or "")
        for i, m in enumerate(tt.members):
            if essential_name(m.name) == wanted:
                spec.accessors.append(Accessor(tt.id, i, m.name))
                spec.raw.append(i)
                return spec
        return None
    tid = target_id
    for n, lacc in enumerate(local.accessors):
        tt = _skip(tbtf, tid)
        tid = tt.id
        if lacc.name is not None:
            found, tid = _match_member(local.btf, lacc, tbtf, tid, spec)
            if not found:
                return None
            continue
        if n > 0:
            if tt.kind != "array":
                return None
            if not _is_flex_array(tbtf, spec.accessors[-1], tt) and lacc.idx >= tt.array[2]:
                return None
            tid = _skip(tbtf, tt.array[0]).id
        if len(spec.raw) == SPEC_MAX_LEN:
            raise CoreError(f"target type nests deeper than {SPEC_MAX_LEN} levels")
        spec.accessors.append(Accessor(tid, lacc.idx, None))
        spec.raw.append(lacc.idx)
        spec.bit_offset += lacc.idx * _resolve_size(tbtf, tid) * 8
    return spec


# ---- computing the values -------------------------------------------------------------------------------

def _field_value(kind: int, spec: Spec | None) -> tuple[int, int, int, bool]:
    """bpf_core_calc_field_relo: (value, field size for ldx/st/stx sizing, field type id, validate)."""
    if kind == FIELD_EXISTS:
        return (1 if spec is not None else 0), 0, 0, True
    if spec is None:
        raise _Poison
    btf = spec.btf
    acc = spec.accessors[-1]
    if acc.name is None:  # an array element
        size = _resolve_size(btf, acc.type_id)
        if kind == FIELD_BYTE_OFFSET:
            return spec.bit_offset // 8, size, acc.type_id, True
        if kind == FIELD_BYTE_SIZE:
            return size, 0, 0, True
        raise CoreError(f"relocation {KIND_NAMES[kind]} cannot be applied to an array access")
    holder = btf[acc.type_id]
    member = holder.members[acc.idx]
    mt = _skip(btf, member.type)
    bit_off, bit_sz = spec.bit_offset, member.size if holder.kflag else 0
    bitfield = bit_sz > 0
    if bitfield:
        byte_sz = mt.size
        byte_off = bit_off // 8 // byte_sz * byte_sz
        while bit_off + bit_sz - byte_off * 8 > byte_sz * 8:  # smallest load that holds the bitfield
            if byte_sz >= 8:
                raise CoreError(f"bitfield {member.name} cannot be read with a 64-bit load")
            byte_sz *= 2
            byte_off = bit_off // 8 // byte_sz * byte_sz
    else:
        byte_sz = _resolve_size(btf, mt.id)
        byte_off = bit_off // 8
        bit_sz = byte_sz * 8
    validate = not bitfield  # clang and libbpf may disagree on bitfield loads; only signedness is checked
    if kind == FIELD_BYTE_OFFSET:
        return byte_off, (0 if bitfield else byte_sz), (0 if bitfield else mt.id), validate
    if kind == FIELD_BYTE_SIZE:
        return byte_sz, 0, 0, validate
    if kind == FIELD_SIGNED:
        signed = (mt.kind in _ENUMS and mt.kflag) or (mt.kind == "int" and bool(mt.int_encoding & INT_SIGNED))
        return int(signed), 0, 0, True
    if kind == FIELD_LSHIFT_U64:
        return 64 - (bit_off + bit_sz - byte_off * 8), 0, 0, validate
    if kind == FIELD_RSHIFT_U64:
        return 64 - bit_sz, 0, 0, True
    raise CoreError(f"unrecognized CO-RE relocation kind {kind}")


def _type_value(kind: int, spec: Spec | None) -> tuple[int, bool]:
    """bpf_core_calc_type_relo: (value, validate)."""
    if spec is None:
        return 0, True
    if kind == TYPE_ID_TARGET:
        return spec.root_type_id, False  # ids change in linking: nothing to check
    if kind in (TYPE_EXISTS, TYPE_MATCHES):
        return 1, True
    if kind == TYPE_SIZE:
        return _resolve_size(spec.btf, spec.root_type_id), True
    raise CoreError(f"unrecognized CO-RE relocation kind {kind}")


def _enumval_value(kind: int, spec: Spec | None) -> int:
    if kind == ENUMVAL_EXISTS:
        return 1 if spec is not None else 0
    if spec is None:
        raise _Poison
    acc = spec.accessors[0]
    return _enum_value(spec.btf[acc.type_id], acc.idx)


def _calc(local: Spec, target: Spec | None) -> _Result:
    """bpf_core_calc_relo: the original (local) and new (target) values, or a poison request."""
    res = _Result()
    kind = local.kind
    try:
        if kind in FIELD_KINDS:
            res.orig, res.orig_sz, res.orig_type_id, res.validate = _field_value(kind, local)
            res.new, res.new_sz, res.new_type_id, _ = _field_value(kind, target)
            if res.orig_sz != res.new_sz:
                # Loads may only be resized where zero extension keeps the value: pointers (32-bit kernels)
                # and unsigned integers; anything else poisons the ldx/st/stx later.
                ot, nt = local.btf[res.orig_type_id], target.btf[res.new_type_id]
                unsigned = (ot.kind == nt.kind == "int" and ot.int_encoding != INT_SIGNED
                            and nt.int_encoding != INT_SIGNED)
                res.fail_memsz_adjust = not (ot.kind == nt.kind == "ptr" or unsigned)
        elif kind in TYPE_KINDS:
            res.orig, res.validate = _type_value(kind, local)
            res.new, _ = _type_value(kind, target)
        else:
            res.orig = _enumval_value(kind, local)
            res.new = _enumval_value(kind, target)
    except _Poison:
        res.poison = True
    return res


# ---- 4. patching -------------------------------------------------------------------------------------------

def _poisoned(insn: Insn) -> list[Insn]:
    call = Insn(_CALL, 0, 0, 0, POISON_HELPER)
    return [call, call] if insn.opcode == LDDW_OPCODE else [call]


def _patch(insn: Insn, res: _Result) -> list[Insn]:
    """bpf_core_patch_insn: the instruction(s) replacing `insn` (two for a poisoned lddw)."""
    if res.poison:
        return _poisoned(insn)
    orig, new = res.orig, res.new & M64
    cls = op.cls(insn.opcode)
    if cls in (op.ALU, op.ALU64):
        if insn.opcode & op.X:
            raise CoreError("CO-RE relocation of an ALU instruction with a register operand")
        if res.validate and insn.imm & M64 != orig:
            raise CoreError(f"unexpected ALU immediate {insn.imm & 0xFFFFFFFF}, expected {orig} -> {new}")
        value = new & 0xFFFFFFFF
        return [insn.replace(imm=s32(value))]
    if cls in (op.LDX, op.ST, op.STX):
        if res.validate and insn.off & M64 != orig:
            raise CoreError(f"unexpected memory offset {insn.off}, expected {orig} -> {new}")
        if new > 0x7FFF:
            raise CoreError(f"relocated offset {new} does not fit an instruction's 16-bit offset")
        if res.fail_memsz_adjust:
            # libbpf: "accesses field incorrectly. Make sure you are accessing pointers, unsigned integers,
            # or fields of matching type and size" — the instruction is poisoned, not the load failed.
            return _poisoned(insn)
        opcode = insn.opcode
        if res.new_sz != res.orig_sz:
            size = _SIZE_BYTES[opcode & _SIZE_MASK]
            if size != res.orig_sz:
                raise CoreError(f"memory access of {size} bytes, but the field has {res.orig_sz}")
            if res.new_sz not in op.SIZES:
                raise CoreError(f"the target field has {res.new_sz} bytes, which no load or store has")
            opcode = opcode & ~_SIZE_MASK | op.SIZES[res.new_sz]
        return [insn.replace(opcode=opcode, off=new)]
    if insn.opcode == LDDW_OPCODE:
        if insn.src != 0 or insn.off != 0 or insn.dst > 10:
            raise CoreError("CO-RE relocation of an lddw that is not a plain 64-bit constant")
        imm = (insn.imm & 0xFFFFFFFF) | (insn.imm_hi & 0xFFFFFFFF) << 32
        if res.validate and imm != orig:
            raise CoreError(f"unexpected 64-bit immediate {imm}, expected {orig} -> {new}")
        lo, hi = new & 0xFFFFFFFF, new >> 32
        return [insn.replace(imm=s32(lo), imm_hi=s32(hi))]
    raise CoreError(f"CO-RE relocation of an instruction (opcode {insn.opcode:#04x}) that holds no relocatable "
                    "value")


# ---- the whole program ---------------------------------------------------------------------------------

@dataclass
class CoreRelocated:
    """Instructions after CO-RE, the decisions, and where each original instruction went (`index_map`:
    old index -> new index; a poisoned lddw becomes two instructions)."""

    insns: list[Insn]
    decisions: list[CoreDecision]
    index_map: list[int]


def needs_target(relos: Sequence[tuple[int, CoreRelo]]) -> bool:
    """Whether any relocation needs the target BTF (all but TYPE_ID_LOCAL do)."""
    return any(r.kind != TYPE_ID_LOCAL for _, r in relos)


def relocate(insns: Sequence[Insn], relos: Sequence[tuple[int, CoreRelo]], local: Btf,
             target: KernelBtf | Callable[[], KernelBtf] | None, *, slots: Sequence[int] | None = None
             ) -> CoreRelocated:
    """Apply CO-RE relocations `relos` ((instruction index, record), in .BTF.ext order) to `insns`.

    `target` is the target BTF or a function that gives it (called only when a relocation needs it).
    CoreError, located at the instruction's slot (`slots[index]` when given), for what libbpf refuses."""
    out: list[list[Insn]] = [[insn] for insn in insns]
    decisions: list[CoreDecision] = []
    candidates: dict[int, list[int]] = {}  # local type id -> target candidates, pruned as they fail
    resolved: KernelBtf | None = None
    for number, (index, relo) in enumerate(relos):
        where = dict(insn=slots[index] if slots is not None else index)
        try:
            if not 0 <= index < len(insns):
                raise CoreError(f"CO-RE relocation #{number} refers to instruction {index} of {len(insns)}")
            if len(out[index]) != 1 or out[index][0] is not insns[index]:
                raise CoreError(f"CO-RE relocation #{number}: a second relocation of the same instruction")
            if relo.kind != TYPE_ID_LOCAL and resolved is None:
                resolved = target() if callable(target) else target
                if resolved is None:
                    raise CoreError("CO-RE relocations need a target BTF")
            decision, patched = _one(insns[index], index, relo, local, resolved, candidates)
        except CoreError as err:
            kind = KIND_NAMES.get(relo.kind, str(relo.kind))
            raise CoreError(f"CO-RE relocation #{number} ({kind}, access {relo.access} on "
                            f"{_safe_label(local, relo.type_id)}): {err.message}", **where) from None
        out[index] = patched
        decisions.append(decision)
    flat: list[Insn] = []
    index_map: list[int] = []
    for group in out:
        index_map.append(len(flat))
        flat.extend(group)
    return CoreRelocated(flat, decisions, index_map)


def _safe_label(btf: Btf, type_id: int) -> str:
    try:
        return _type_label(btf, type_id)
    except BpforgeError:
        return f"type [{type_id}]"


def _one(insn: Insn, index: int, relo: CoreRelo, local: Btf, target: KernelBtf | None,
         candidates: dict[int, list[int]]) -> tuple[CoreDecision, list[Insn]]:
    local_type = local[relo.type_id]
    spec = parse_spec(local, relo)
    what = describe(spec)
    kind = KIND_NAMES[relo.kind]
    if relo.kind == TYPE_ID_LOCAL:
        res = _Result(orig=relo.type_id, new=relo.type_id, validate=False)
        return CoreDecision(index, kind, what, res.orig, res.new, False, relo.type_id), _patch(insn, res)
    if not local_type.name:
        raise CoreError("relocations against anonymous types are not supported (libbpf: candidate search "
                        "needs a name)")
    if relo.type_id not in candidates:
        candidates[relo.type_id] = _find_candidates(local_type, target)
    chosen: _Result | None = None
    chosen_spec: Spec | None = None
    kept: list[int] = []
    for cand in candidates[relo.type_id]:
        cand_spec = match_spec(spec, target.btf, cand)
        if cand_spec is None:
            continue
        res = _calc(spec, cand_spec)
        if chosen is None:
            chosen, chosen_spec = res, cand_spec
        elif cand_spec.bit_offset != chosen_spec.bit_offset:
            raise CoreError(f"field offset ambiguity: {cand_spec.bit_offset} != {chosen_spec.bit_offset} bits "
                            f"(candidates [{chosen_spec.root_type_id}] and [{cand}] in {target.name})")
        elif res.poison != chosen.poison or res.new != chosen.new:
            raise CoreError("relocation decision ambiguity: "
                            f"{'failure' if res.poison else 'success'} {res.new} != "
                            f"{'failure' if chosen.poison else 'success'} {chosen.new} "
                            f"(candidates [{chosen_spec.root_type_id}] and [{cand}] in {target.name})")
        kept.append(cand)
    if kept:
        candidates[relo.type_id] = kept  # libbpf narrows the cached list to the matching candidates
    if chosen is None:
        chosen = _calc(spec, None)
    decision = CoreDecision(index, kind, what, chosen.orig, chosen.new & M64, chosen.poison,
                            chosen_spec.root_type_id if chosen_spec is not None else None)
    patched = _patch(insn, chosen)
    if chosen.fail_memsz_adjust and patched[0].imm == POISON_HELPER and patched[0].opcode == _CALL:
        decision = replace(decision, poisoned=True)
    return decision, patched


def _find_candidates(local_type: BtfType, target: KernelBtf) -> list[int]:
    """bpf_core_add_cands: target types of a compatible kind with the same essential name, in id order."""
    wanted = essential_name(local_type.name)
    return [tid for tid in target.ids_with_essential_name(wanted)
            if _kind_compat(target.btf.types[tid], local_type)]


# ---- linked programs -------------------------------------------------------------------------------------

def program_relos(obj: BpfObject, linked: LinkedProgram) -> list[tuple[int, CoreRelo]]:
    """The object's CO-RE records for the instructions of `linked` (index in it, record), in .BTF.ext
    order; a .text subprogram linked in carries its records along."""
    if obj.btf_ext is None or not obj.btf_ext.core_relos:
        return []
    placed: dict[tuple[str, int], list[int]] = {}
    for i, origin in enumerate(linked.origins):
        placed.setdefault(origin, []).append(i)
    out = []
    for section, relos in obj.btf_ext.core_relos.items():
        for relo in relos:
            for index in placed.get((section, relo.insn), ()):
                out.append((index, relo))
    return out


@dataclass
class CoreLinked:
    """A linked program after CO-RE (`program`), and what each relocation did."""

    program: LinkedProgram
    decisions: list[CoreDecision]


def relocate_linked(obj: BpfObject, linked: LinkedProgram, target: KernelBtf | Callable[[], KernelBtf] | None
                    ) -> CoreLinked:
    """CO-RE for one linked program of `obj` against `target` (the running kernel's BTF, usually a function
    returning it, so objects without CO-RE never read it). The result keeps relocations, function starts and
    origins in step with the instructions."""
    relos = program_relos(obj, linked)
    if not relos:
        return CoreLinked(linked, [])
    if obj.btf is None:
        raise CoreError("the object has CO-RE relocations but no .BTF", file=obj.filename, section=linked.section)
    try:
        done = relocate(linked.insns, relos, obj.btf, target, slots=slot_starts(linked.insns))
    except BpforgeError as err:
        raise err.at(file=obj.filename, section=linked.section) from None
    remap = done.index_map
    origins: list[tuple[str, int]] = []
    for i, origin in enumerate(linked.origins):
        end = remap[i + 1] if i + 1 < len(remap) else len(done.insns)
        origins.extend([origin] * (end - remap[i]))
    program = LinkedProgram(linked.name, linked.section, done.insns,
                            [(remap[i], replace(r, insn=remap[i])) for i, r in linked.relocations],
                            {remap[i]: name for i, name in linked.functions.items()}, origins)
    return CoreLinked(program, done.decisions)


__all__ = ["CoreDecision", "CoreError", "CoreLinked", "CoreRelocated", "KIND_NAMES", "POISON_HELPER", "Spec",
           "describe", "match_spec", "needs_target", "parse_spec", "program_relos", "relocate", "relocate_linked",
           "types_are_compat", "types_match"]
