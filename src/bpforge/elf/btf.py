"""BTF (.BTF) as the kernel's uapi/linux/btf.h lays it out: every kind is parsed, enough is interpreted
to size map keys and values (typedefs and modifiers resolved) and to name functions."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ElfError

BTF_MAGIC = 0xEB9F
KINDS = ("void", "int", "ptr", "array", "struct", "union", "enum", "fwd", "typedef", "volatile", "const",
         "restrict", "func", "func_proto", "var", "datasec", "float", "decl_tag", "type_tag", "enum64")
_MODIFIERS = {"typedef", "volatile", "const", "restrict", "type_tag"}
_HEADER = struct.Struct("<HBBIIIII")


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


@dataclass
class Btf:
    types: list[BtfType]  # index = type id; 0 is void
    strings: bytes

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

    def find(self, kind: str, name: str) -> BtfType | None:
        for t in self.types:
            if t.kind == kind and t.name == name:
                return t
        return None


def _s64(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


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
    pos = 0
    while pos < len(types_data):
        if pos + 12 > len(types_data):
            raise ElfError(f"BTF type {len(types)} truncated", section=".BTF")
        name_off, info, size_or_type = struct.unpack_from("<III", types_data, pos)
        pos += 12
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
        if kind in ("int", "var"):
            t["extra"] = take(1, "I")[0][0]
        elif kind == "decl_tag":  # component_idx is an s32: -1 tags the whole type, else a member/parameter
            t["extra"] = take(1, "i")[0][0]
        elif kind == "array":
            t["array"] = take(1, "III")[0]
        elif kind in ("struct", "union"):
            t["members"] = tuple(Member(_cstr(strings, n), ty, off & 0xFFFFFF if kflag else off,
                                        off >> 24 if kflag else 0)  # size: bitfield bits (0: not one)
                                 for n, ty, off in take(vlen, "III"))
        elif kind == "enum":
            t["members"] = tuple(Member(_cstr(strings, n), value=v) for n, v in take(vlen, "Ii" if kflag else "II"))
        elif kind == "enum64":
            # kflag: a signed enum, so the 64-bit value is two's complement (as for 32-bit enums above)
            t["members"] = tuple(Member(_cstr(strings, n), value=_s64(hi << 32 | lo) if kflag else hi << 32 | lo)
                                 for n, lo, hi in take(vlen, "III"))
        elif kind == "func_proto":
            t["members"] = tuple(Member(_cstr(strings, n), ty) for n, ty in take(vlen, "II"))
        elif kind == "datasec":
            t["members"] = tuple(Member("", ty, off, sz) for ty, off, sz in take(vlen, "III"))
        elif kind == "func":
            t["extra"] = vlen
        types.append(BtfType(**t))
    return Btf(types, strings)
