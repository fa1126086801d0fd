"""K2's benchmark format: the trio NAME.insns + NAME.maps + NAME.desc (K2, SIGCOMM'21, github smartnic/superopt).

Established from the public sources (K2's `read_insns` / `read_maps` / `read_desc` in measure/benchmark_ebpf.cc,
the `struct bpf_insn` of src/isa/ebpf/bpf.h, bpf-elf-tools' text-extractor `write_insns` / `write_maps` that
produce the files, and the inputs/ and k2-benchmarking sample files):

- NAME.insns (binary): the kernel's `struct bpf_insn` array as text-extractor fwrite()s it after libbpf's
  data relocation, i.e. plain 8-byte little-endian slots (lddw takes two). Map references are resolved the way
  libbpf resolves them for the kernel: lddw with src_reg = BPF_PSEUDO_MAP_FD (1) and imm = the map's `fd`,
  which the extractor sets to the map's index in NAME.maps (global data: BPF_PSEUDO_MAP_VALUE, 2).
- NAME.maps (text): one map per line, `name { type = 6, key_size = 4, value_size = 8, max_entries = 256,
  fd = 0 }`, type being the kernel's enum bpf_map_type. An empty file means no maps.
- NAME.desc (text): `{ pgm_input_type = 2, }` and `{ max_pkt_sz = 88, }`, one per line. pgm_input_type is K2's
  enum: 0 constant (r1 holds a number), 1 pkt (r1 points to the packet), 2 pkt_ptrs (r1 points to
  {u32 start, u32 end}, XDP's ctx layout), 3 skb (an __sk_buff, data/data_end at offsets 76/80).

K2 itself reads .desc positionally (line 1, line 2) and ignores the rest; some of its sample .desc files also
carry a map line, which is why named lines in .desc are skipped here rather than refused. K2's extractor also
writes some map lines without their closing brace (`name { ..., fd = 0`); the end of the line closes them.

Every attribute is a u32 in K2 (and in the kernel's bpf_attr), so a value outside [0, 2^32) is refused here,
before anything is sized by it; numbers are ASCII digits only and refused for length before conversion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FormatError
from ..isa.maptypes import MapSpec
from ..isa.numbers import U32_MAX, UNSIGNED, NumberError, parse_number

INSNS_SUFFIXES = (".insns", ".ins")  # .ins: the older extractor's name for the same binary file
COMPANION_SUFFIXES = (".maps", ".desc")
INPUT_TYPES = {0: "constant", 1: "pkt", 2: "pkt_ptrs", 3: "skb"}
# What bpforge's --type means closest to each K2 input type (constant has no program-type equivalent).
_PROG_TYPE_OF_INPUT = {1: "mem", 2: "xdp", 3: "sched_cls"}

_LINE = re.compile(r"\s*(?P<name>[^\s{}]+)?\s*\{(?P<body>[^{}]*)\}?\s*$", re.ASCII)
_ATTR = re.compile(rf"\s*(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>[+-]?{UNSIGNED})\s*$", re.ASCII)


@dataclass(frozen=True)
class K2Desc:
    """NAME.desc: how K2 sets up r1 and the packet for this program."""

    pgm_input_type: int
    max_pkt_sz: int | None = None
    extra: dict[str, int] = field(default_factory=dict)  # attributes K2 does not read, kept verbatim

    @property
    def input_type_name(self) -> str:
        return INPUT_TYPES[self.pgm_input_type]

    @property
    def prog_type(self) -> str | None:
        return _PROG_TYPE_OF_INPUT.get(self.pgm_input_type)


def k2_paths(path: str | Path) -> tuple[Path, Path, Path]:
    """(insns, maps, desc) of the trio any one of the three files names."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in INSNS_SUFFIXES + COMPANION_SUFFIXES else path
    insns = path if path.suffix in INSNS_SUFFIXES else stem.with_suffix(".insns")
    if not insns.exists() and stem.with_suffix(".ins").exists():
        insns = stem.with_suffix(".ins")
    return insns, stem.with_suffix(".maps"), stem.with_suffix(".desc")


def _lines(text: str, filename: str | None):
    """(line number, name or None, {attribute: value}) of every non-blank line."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise FormatError("expected 'name { key = value, ... }'", file=filename, line=lineno, col=1)
        attrs: dict[str, int] = {}
        body_col = m.start("body") + 1
        for piece in m.group("body").split(","):
            if piece.strip():
                a = _ATTR.match(piece)
                if not a:
                    found = piece.strip() if len(piece.strip()) <= 40 else piece.strip()[:37] + "..."
                    raise FormatError(f"expected 'key = number', found '{found}'",
                                      file=filename, line=lineno, col=body_col + len(piece) - len(piece.lstrip()))
                attrs[a.group("key")] = _u32(a.group("key"), a.group("value"), filename, lineno,
                                             body_col + len(piece) - len(piece.lstrip()))
            body_col += len(piece) + 1
        yield lineno, m.group("name"), attrs


def _u32(key: str, text: str, filename: str | None, line: int, col: int) -> int:
    """An attribute value: K2 keeps every one in a u32 (as bpf_attr does), so nothing larger is a size."""
    try:
        value = parse_number(text)
    except NumberError as err:
        raise FormatError(f"{key}: {err}", file=filename, line=line, col=col) from None
    if not 0 <= value <= U32_MAX:
        raise FormatError(f"{key} = {value} is outside the u32 range [0, {U32_MAX}]", file=filename, line=line,
                          col=col)
    return value


def parse_k2_maps(text: str, *, filename: str | None = None) -> list[MapSpec]:
    """The maps of NAME.maps, each with `ref` = its `fd` there (what the program's lddw names it by)."""
    maps: list[MapSpec] = []
    for lineno, name, attrs in _lines(text, filename):
        if name is None:
            raise FormatError("map line without a name", file=filename, line=lineno, col=1)
        missing = [k for k in ("key_size", "value_size") if k not in attrs]
        if missing:
            raise FormatError(f"map '{name}' lacks {' and '.join(missing)}", file=filename, line=lineno)
        maps.append(MapSpec(name, attrs.get("type", 0), attrs["key_size"], attrs["value_size"],
                            attrs.get("max_entries", 0), source="k2", ref=attrs.get("fd", len(maps))))
    fds = [m.ref for m in maps]
    if len(set(fds)) != len(fds):
        raise FormatError(f"two maps share an fd ({', '.join(map(str, fds))})", file=filename)
    return maps


def parse_k2_desc(text: str, *, filename: str | None = None) -> K2Desc:
    attrs: dict[str, int] = {}
    for _, name, line_attrs in _lines(text, filename):
        if name is None:  # a named line is a map some K2 samples repeat here; K2 ignores it too
            attrs.update(line_attrs)
    if "pgm_input_type" not in attrs:
        raise FormatError("no '{ pgm_input_type = N, }' line", file=filename)
    kind = attrs.pop("pgm_input_type")
    if kind not in INPUT_TYPES:
        known = ", ".join(f"{k} {v}" for k, v in INPUT_TYPES.items())
        raise FormatError(f"unknown pgm_input_type {kind} (K2 knows {known})", file=filename)
    return K2Desc(kind, attrs.pop("max_pkt_sz", None), attrs)


def format_k2_maps(maps) -> str:
    """NAME.maps text for maps with name/type/key_size/value_size/max_entries (fd = position)."""
    return "".join(f"{m.name} {{ type = {m.type}, key_size = {m.key_size}, value_size = {m.value_size}, "
                   f"max_entries = {m.max_entries}, fd = {i} }}\n" for i, m in enumerate(maps))


def format_k2_desc(desc: K2Desc) -> str:
    text = f"{{ pgm_input_type = {desc.pgm_input_type}, }}\n"
    if desc.max_pkt_sz is not None:
        text += f"{{ max_pkt_sz = {desc.max_pkt_sz}, }}\n"
    return text


__all__ = ["K2Desc", "format_k2_desc", "format_k2_maps", "k2_paths", "parse_k2_desc", "parse_k2_maps"]
