"""BTF (.BTF) as the kernel's uapi/linux/btf.h lays it out: every kind is parsed, enough is interpreted
to size and align types (typedefs and modifiers resolved), read int encodings and name functions.

This is the one module that knows BTF's bytes and walks its type chains: the readers of maps, CO-RE,
externs and the kernel's BTF ask it (`skip_modifiers`, `size_of`, `align_of`, `int_encoding`), and what
libbpf changes in an object's BTF before BPF_BTF_LOAD is written through `BtfPatch`, at the positions the
parse recorded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import ElfError
from ..isa.numbers import s64

BTF_MAGIC = 0xEB9F
KINDS = ("void", "int", "ptr", "array", "struct", "union", "enum", "fwd", "typedef", "volatile", "const",
         "restrict", "func", "func_proto", "var", "datasec", "float", "decl_tag", "type_tag", "enum64")
_MODIFIERS = {"typedef", "volatile", "const", "restrict", "type_tag"}
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")  # name_off, info (vlen | kind << 24 | kflag << 31), size or type
# The records that follow a type's header, per member (struct btf_member, btf_enum, btf_param, ...).
_MEMBER_RECORD = {"struct": "III", "union": "III", "enum": "II", "enum64": "III", "func_proto": "II",
                  "datasec": "III"}
_EXTRA_RECORD = {"int": "I", "var": "I", "decl_tag": "i", "array": "III"}  # one record after the header

# BTF_INT_* encoding bits (of an INT's extra word, bits 24-27), BTF_VAR_* and BTF_FUNC_* linkage.
INT_SIGNED, INT_CHAR, INT_BOOL = 1, 2, 4
VAR_STATIC, VAR_GLOBAL_ALLOCATED, VAR_GLOBAL_EXTERN = 0, 1, 2
FUNC_STATIC, FUNC_GLOBAL, FUNC_EXTERN = 0, 1, 2


@dataclass(frozen=True)
class Member:
    """A struct/union member (`offset` in bits, `size` its bitfield width in bits, 0 if not a bitfield),
    enum value (`value`), function parameter, or datasec variable (`offset`, `size` in bytes)."""

    name: str
    type: int = 0
    offset: int = 0
    size: int = 0
    value: int = 0


@dataclass(frozen=True)
class BtfType:
    id: int
    kind: str
    name: str
    size: int = 0  # int, struct, union, enum, enum64, datasec, float
    type: int = 0  # ptr, typedef, modifiers, func, func_proto (return), var, decl_tag, type_tag
    members: tuple[Member, ...] = ()
    array: tuple[int, int, int] | None = None  # (element type, index type, number of elements)
    extra: int = 0  # int encoding, var linkage, decl_tag component index; func linkage (vlen)
    kflag: bool = False

    @property
    def int_encoding(self) -> int:
        """An INT's BTF_INT_* bits (INT_SIGNED, INT_CHAR, INT_BOOL)."""
        return self.extra >> 24 & 0x0F

    @property
    def int_offset(self) -> int:
        """An INT's bit offset (BTF_INT_OFFSET)."""
        return self.extra >> 16 & 0xFF

    @property
    def int_bits(self) -> int:
        """An INT's width in bits (BTF_INT_BITS)."""
        return self.extra & 0xFF


@dataclass
class Btf:
    types: list[BtfType]  # index = type id; 0 is void
    strings: bytes
    # Where each type's record starts in the parsed .BTF bytes (index = type id; void has none: -1).
    record_offsets: list[int] = field(default_factory=list, repr=False, compare=False)

    def string(self, offset: int) -> str:
        return _cstr(self.strings, offset)

    def __getitem__(self, type_id: int) -> BtfType:
        if not 0 <= type_id < len(self.types):
            raise ElfError(f"BTF type id {type_id} out of range (have {len(self.types) - 1})", section=".BTF")
        return self.types[type_id]

    def skip_modifiers(self, type_id: int) -> BtfType:
        """The type behind typedefs and const/volatile/restrict/type_tag."""
        t = self[type_id]
        for _ in range(len(self.types)):
            if t.kind not in _MODIFIERS:
                return t
            t = self[t.type]
        raise ElfError(f"BTF type {type_id}: cycle of typedefs/modifiers", section=".BTF")

    def size_of(self, type_id: int) -> int:
        t, factor = self.skip_modifiers(type_id), 1
        for _ in range(len(self.types)):
            if t.kind == "ptr":
                return 8 * factor
            if t.kind in ("int", "struct", "union", "enum", "enum64", "float", "datasec"):
                return t.size * factor
            if t.kind == "array":
                factor *= t.array[2]
                t = self.skip_modifiers(t.array[0])
                continue
            if t.kind == "var":
                t = self.skip_modifiers(t.type)
                continue
            raise ElfError(f"BTF type {t.id} ({t.kind} '{t.name}') has no size", section=".BTF")
        raise ElfError(f"BTF type {type_id}: cycle of arrays", section=".BTF")

    def align_of(self, type_id: int) -> int:
        """btf__align_of: the alignment of a type (a struct's: its most aligned member's)."""
        t = self.skip_modifiers(type_id)
        for _ in range(len(self.types)):
            if t.kind in ("int", "enum", "enum64", "float"):
                return min(8, t.size)
            if t.kind == "ptr":
                return 8
            if t.kind == "array":
                t = self.skip_modifiers(t.array[0])
                continue
            if t.kind in ("struct", "union"):
                return max((self.align_of(m.type) for m in t.members), default=1)
            return 1
        raise ElfError(f"BTF type {type_id}: cycle of arrays", section=".BTF")

    def find(self, kind: str, name: str) -> BtfType | None:
        for t in self.types:
            if t.kind == kind and t.name == name:
                return t
        return None

    def member_offset(self, type_id: int, index: int) -> int:
        """Where member `index` of a struct, union, enum, function prototype or datasec is recorded in the
        parsed .BTF bytes (for `BtfPatch`)."""
        t = self[type_id]
        record = struct.calcsize("<" + _MEMBER_RECORD[t.kind])
        if not 0 <= index < len(t.members):
            raise ElfError(f"BTF type {type_id} has no member {index}", section=".BTF")
        return self.record_offsets[type_id] + _TYPE.size + index * record


class BtfPatch:
    """Edits of a parsed .BTF, made in its bytes at the positions the parse recorded (so that string
    offsets, which .BTF.ext and the kernel refer to, stay as they are), plus appended VARs."""

    def __init__(self, btf: Btf, data: bytes) -> None:
        self.btf = btf
        self.data = bytearray(data)
        self._types = b""  # appended type records
        self._strings = b""  # appended strings
        self._next_id = len(btf.types)

    def set_size(self, type_id: int, size: int) -> None:
        """The size word of a sized type (a DATASEC's size)."""
        struct.pack_into("<I", self.data, self.btf.record_offsets[type_id] + 8, size)

    def set_type(self, type_id: int, ref: int) -> None:
        """The type word of a VAR, FUNC, pointer or modifier."""
        struct.pack_into("<I", self.data, self.btf.record_offsets[type_id] + 8, ref)

    def set_var_linkage(self, type_id: int, linkage: int) -> None:
        struct.pack_into("<I", self.data, self.btf.record_offsets[type_id] + _TYPE.size, linkage)

    def set_func_linkage(self, type_id: int, linkage: int) -> None:
        """A FUNC keeps its linkage in the vlen bits of its info word."""
        at = self.btf.record_offsets[type_id] + 4
        info = struct.unpack_from("<I", self.data, at)[0]
        struct.pack_into("<I", self.data, at, info & ~0xFFFF | linkage)

    def set_param_name(self, proto_id: int, index: int, name_off: int) -> None:
        struct.pack_into("<I", self.data, self.btf.member_offset(proto_id, index), name_off)

    def param_name_off(self, proto_id: int, index: int) -> int:
        return struct.unpack_from("<I", self.data, self.btf.member_offset(proto_id, index))[0]

    def set_datasec(self, type_id: int, size: int, entries: list[tuple[int, int, int]]) -> None:
        """A DATASEC's size and its (variable type, offset, size) entries, as many as it has."""
        self.set_size(type_id, size)
        for i, entry in enumerate(entries):
            struct.pack_into("<III", self.data, self.btf.member_offset(type_id, i), *entry)

    def datasec_entries(self, type_id: int) -> list[tuple[int, int, int]]:
        """(variable type, offset, size) of a DATASEC's entries as the bytes have them now."""
        return [struct.unpack_from("<III", self.data, self.btf.member_offset(type_id, i))
                for i in range(len(self.btf[type_id].members))]

    def add_string(self, text: str) -> int:
        """Append a string; its offset in the string section."""
        _, _, _, _, _, _, _, str_len = _HEADER.unpack_from(self.data)
        offset = str_len + len(self._strings)
        self._strings += text.encode() + b"\0"
        return offset

    def add_var(self, name_off: int, type_id: int, linkage: int) -> int:
        """Append a VAR; its type id."""
        self._types += _TYPE.pack(name_off, KINDS.index("var") << 24, type_id) + struct.pack("<I", linkage)
        self._next_id += 1
        return self._next_id - 1

    def bytes(self) -> bytes:
        if not self._types and not self._strings:
            return bytes(self.data)
        _, _, _, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(self.data)
        types = bytes(self.data[hdr_len + type_off:hdr_len + type_off + type_len]) + self._types
        strings = bytes(self.data[hdr_len + str_off:hdr_len + str_off + str_len]) + self._strings
        header = bytearray(self.data[:hdr_len])
        struct.pack_into("<IIII", header, 8, 0, len(types), len(types), len(strings))
        return bytes(header) + types + strings


def scalar_btf(value_size: int) -> bytes:
    """A .BTF of three types, [1] int (signed, 32 bits), [2] char, [3] char[value_size]: the key and value
    types a loader's BTF gives a map that needs BTF (local storage)."""
    strings = b"\0int\0char\0"
    kind = KINDS.index
    types = (_TYPE.pack(1, kind("int") << 24, 4) + struct.pack("<I", INT_SIGNED << 24 | 32)
             + _TYPE.pack(5, kind("int") << 24, 1) + struct.pack("<I", 8)
             + _TYPE.pack(0, kind("array") << 24, 0) + struct.pack("<III", 2, 1, value_size))
    return _HEADER.pack(BTF_MAGIC, 1, 0, _HEADER.size, 0, len(types), len(types), len(strings)) + types + strings


def _cstr(table: bytes, offset: int) -> str:
    if not 0 <= offset < max(len(table), 1):
        raise ElfError(f"BTF string offset {offset} beyond the string section ({len(table)} bytes)", section=".BTF")
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)].decode("utf-8", "replace")


def check_header(data: bytes, section: str) -> tuple[int, int]:
    if len(data) < 8:
        raise ElfError(f"{section} is {len(data)} bytes, shorter than its header", section=section)
    magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data)
    if magic != BTF_MAGIC:
        detail = " (big-endian)" if magic == 0x9FEB else ""
        raise ElfError(f"bad {section} magic {magic:#06x}{detail}", section=section)
    if version != 1:
        raise ElfError(f"unsupported {section} version {version}", section=section)
    if not 8 <= hdr_len <= len(data):
        raise ElfError(f"{section} header length {hdr_len} is invalid", section=section)
    return version, hdr_len


def parse_btf(data: bytes) -> Btf:
    """Parse a .BTF section. ElfError (section .BTF) on anything malformed."""
    _, hdr_len = check_header(data, ".BTF")
    if hdr_len < _HEADER.size:
        raise ElfError(f"BTF header length {hdr_len} is shorter than {_HEADER.size}", section=".BTF")
    _, _, _, _, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
    base = hdr_len
    if base + type_off + type_len > len(data) or base + str_off + str_len > len(data):
        raise ElfError("BTF type or string section runs past the end of .BTF", section=".BTF")
    strings = data[base + str_off: base + str_off + str_len]
    types_data = data[base + type_off: base + type_off + type_len]
    types = [BtfType(0, "void", "")]
    offsets = [-1]
    pos = 0
    while pos < len(types_data):
        offsets.append(base + type_off + pos)
        if pos + _TYPE.size > len(types_data):
            raise ElfError(f"BTF type {len(types)} truncated", section=".BTF")
        name_off, info, size_or_type = _TYPE.unpack_from(types_data, pos)
        pos += _TYPE.size
        vlen, kind_no, kflag = info & 0xFFFF, info >> 24 & 0x1F, bool(info >> 31)
        if not 1 <= kind_no < len(KINDS):
            raise ElfError(f"BTF type {len(types)} has unknown kind {kind_no}", section=".BTF")
        kind = KINDS[kind_no]
        tid = len(types)
        name = _cstr(strings, name_off)

        def take(count: int, fmt: str) -> list[tuple]:
            nonlocal pos
            rec = struct.Struct("<" + fmt)
            if pos + count * rec.size > len(types_data):
                raise ElfError(f"BTF type {tid} ({kind}) truncated", section=".BTF")
            items = [rec.unpack_from(types_data, pos + i * rec.size) for i in range(count)]
            pos += count * rec.size
            return items

        sized = kind in ("int", "struct", "union", "enum", "enum64", "datasec", "float")
        t = dict(id=tid, kind=kind, name=name, kflag=kflag)
        if sized:
            t["size"] = size_or_type
        else:
            t["type"] = size_or_type
        if kind in _EXTRA_RECORD:  # decl_tag's component_idx is an s32: -1 tags the whole type
            (extra,) = take(1, _EXTRA_RECORD[kind])
            if kind == "array":
                t["array"] = extra
            else:
                t["extra"] = extra[0]
        elif kind in _MEMBER_RECORD:
            records = take(vlen, "Ii" if kind == "enum" and kflag else _MEMBER_RECORD[kind])
            if kind in ("struct", "union"):
                t["members"] = tuple(Member(_cstr(strings, n), ty, off & 0xFFFFFF if kflag else off,
                                            off >> 24 if kflag else 0)  # size: bitfield bits (0: not one)
                                     for n, ty, off in records)
            elif kind == "enum":
                t["members"] = tuple(Member(_cstr(strings, n), value=v) for n, v in records)
            elif kind == "enum64":
                # kflag: a signed enum, so the 64-bit value is two's complement (as for 32-bit enums above)
                t["members"] = tuple(Member(_cstr(strings, n), value=s64(hi << 32 | lo) if kflag else hi << 32 | lo)
                                     for n, lo, hi in records)
            elif kind == "func_proto":
                t["members"] = tuple(Member(_cstr(strings, n), ty) for n, ty in records)
            else:  # datasec
                t["members"] = tuple(Member("", ty, off, sz) for ty, off, sz in records)
        if kind == "func":
            t["extra"] = vlen
        types.append(BtfType(**t))
    return Btf(types, strings, offsets)
