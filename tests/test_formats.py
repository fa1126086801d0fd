"""The program formats and the loader: detection, raw slots, word lists, K2's trio, assembly, ELF objects."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from bpforge.errors import AsmError, BpforgeError, FormatError
from bpforge.formats import (
    K2Desc, assemble_file, detect_format, format_k2_desc, format_k2_maps, format_words, k2_paths,
    load_program, looks_like_words, output_kind, parse_k2_desc, parse_k2_maps, parse_words,
)
from bpforge.isa import Insn, assemble, decode, encode
from bpforge.isa.progtypes import check_prog_type, prog_type_of_section

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "obj"

PROGRAM = "r0 = 1\nr1 = 2\nif r1 > 3 goto +1\nr0 += r1\nexit\n"


def slot(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One kernel `struct bpf_insn`, packed by hand (not through isa.encode) so tests check the layout."""
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


# ---- detection ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, data, kind", [
    ("prog.bin", b"\x7fELF\x02\x01\x01" + bytes(57), "elf"),
    ("prog.s", b"\x7fELF" + bytes(60), "elf"),  # the magic beats the name
    ("prog.s", b"r0 = 0\nexit\n", "asm"),
    ("prog.asm", b"exit\n", "asm"),
    ("bench.insns", slot(0x95), "k2"),
    ("bench.ins", slot(0x95), "k2"),
    ("bench.desc", b"{ pgm_input_type = 1, }\n", "k2"),
    ("prog.words", b"0x95\n", "words"),
    ("prog.txt", b"0x95\n", "words"),
    ("prog", b"0x00000001000000b7, 149 # exit\n", "words"),  # sniffed: only numbers
    ("prog", b"r0 = 0\nexit\n", "raw"),  # text, but not numbers: raw (and a hint when it fails to decode)
    ("prog.bin", slot(0x95), "raw"),
    ("prog.bin", b"", "raw"),
])
def test_detect_format(name, data, kind):
    assert detect_format(name, data) == kind


def test_looks_like_words():
    assert looks_like_words(b"0x95")
    assert looks_like_words(b"# exit\n0x95, 0\n")
    assert not looks_like_words(b"")
    assert not looks_like_words(b"# only a comment\n")
    assert not looks_like_words(slot(0xB7, imm=1) + slot(0x95))
    assert not looks_like_words(b"0x95 exit")


# ---- word lists --------------------------------------------------------------------------------------------

def test_words_are_little_endian_slots():
    assert decode(parse_words("0x0000000000000095")) == [Insn(0x95)]
    assert parse_words("0x00000001000000b7") == slot(0xB7, imm=1)
    # decimal, commas, comments, blank lines
    assert parse_words("4294967479, # r0 = 1\n\n149 # exit\n") == slot(0xB7, imm=1) + slot(0x95)


def test_words_round_trip_including_lddw():
    insns = assemble("r1 = 0x1122334455667788 ll\nr0 = 1\nexit\n")
    text = format_words(insns)
    assert len(text.splitlines()) == 4  # lddw takes two words
    assert "# r0 = 1" in text
    assert parse_words(text) == encode(insns)


@pytest.mark.parametrize("text, line, col, what", [
    ("0x95\n0xzz\n", 2, 1, "'0xzz' is not a number"),
    ("0x95, exit", 1, 7, "'exit' is not a number"),
    ("  0x10000000000000000", 1, 3, "does not fit"),
    ("-1", 1, 1, "'-1' is not a number"),
])
def test_words_errors_name_line_and_column(text, line, col, what):
    with pytest.raises(FormatError) as info:
        parse_words(text, filename="p.words")
    err = info.value
    assert (err.where.file, err.where.line, err.where.col) == ("p.words", line, col)
    assert what in err.message


# ---- K2's .insns / .maps / .desc ---------------------------------------------------------------------------

def test_k2_maps_line_format():
    maps = parse_k2_maps("counts { type = 2, key_size = 4, value_size = 8, max_entries = 16, fd = 0 }\n"
                         "\n"
                         "flows { type = 1, key_size = 12, value_size = 16, max_entries = 1024, fd = 1 }\n")
    assert [(m.name, m.type, m.type_name, m.key_size, m.value_size, m.max_entries, m.ref) for m in maps] == [
        ("counts", 2, "array", 4, 8, 16, 0), ("flows", 1, "hash", 12, 16, 1024, 1)]
    assert parse_k2_maps("") == []
    assert parse_k2_maps(format_k2_maps(maps)) == maps


@pytest.mark.parametrize("text, what, line", [
    ("m { type = 2, value_size = 8 }\n", "lacks key_size", 1),
    ("m { type = 2 key_size = 4 }\n", "expected 'key = number'", 1),
    ("{ type = 2, key_size = 4, value_size = 4 }\n", "without a name", 1),
    ("a { key_size = 4, value_size = 4, fd = 0 }\nb { key_size = 4, value_size = 4, fd = 0 }", "share an fd",
     None),
    ("m type = 2\n", "expected 'name { key = value, ... }'", 1),
])
def test_k2_maps_errors(text, what, line):
    with pytest.raises(FormatError) as info:
        parse_k2_maps(text, filename="b.maps")
    assert what in info.value.message
    assert info.value.where.file == "b.maps" and info.value.where.line == line


def test_k2_desc():
    desc = parse_k2_desc("{ pgm_input_type = 2, }\n{ max_pkt_sz = 88, }")  # no final newline, as K2's samples
    assert desc == K2Desc(2, 88)
    assert (desc.input_type_name, desc.prog_type) == ("pkt_ptrs", "xdp")
    assert parse_k2_desc(format_k2_desc(desc)) == desc
    # some K2 samples carry a map line in .desc; K2 ignores it and so do we
    assert parse_k2_desc("{ pgm_input_type = 1, }\n{ max_pkt_sz = 64, }\nm { type = 6, key_size = 4 }\n") == \
        K2Desc(1, 64)
    assert parse_k2_desc("{ pgm_input_type = 3, }\n").prog_type == "sched_cls"
    assert parse_k2_desc("{ pgm_input_type = 0, }\n").prog_type is None


@pytest.mark.parametrize("text, what", [
    ("{ max_pkt_sz = 64, }\n", "pgm_input_type"),
    ("{ pgm_input_type = 7, }\n", "unknown pgm_input_type 7"),
])
def test_k2_desc_errors(text, what):
    with pytest.raises(FormatError, match=what):
        parse_k2_desc(text, filename="b.desc")


def test_k2_paths(tmp_path):
    base = tmp_path / "bench"
    assert k2_paths(f"{base}.insns") == (base.with_suffix(".insns"), base.with_suffix(".maps"),
                                         base.with_suffix(".desc"))
    assert k2_paths(f"{base}.desc")[0] == base.with_suffix(".insns")


def write_k2(tmp_path: Path, maps: str | None = None, desc: str | None = None) -> Path:
    """A small XDP-like benchmark written by hand from the format's description: bounds-check the packet,
    look up key 0 in map fd 0 (lddw src_reg=1 imm=0, two slots), return XDP_PASS or XDP_DROP."""
    insns = b"".join([
        slot(0x61, dst=2, src=1, off=0),    # r2 = *(u32 *)(r1 + 0)   pkt start (pkt_ptrs input)
        slot(0x61, dst=3, src=1, off=4),    # r3 = *(u32 *)(r1 + 4)   pkt end
        slot(0x07, dst=2, imm=14),          # r2 += 14
        slot(0xB7, dst=0, imm=1),           # r0 = 1 (XDP_DROP)
        slot(0x2D, dst=2, src=3, off=7),    # if r2 > r3 goto +7 -> exit
        slot(0x62, dst=10, off=-4, imm=0),  # *(u32 *)(r10 - 4) = 0
        slot(0xBF, dst=2, src=10),          # r2 = r10
        slot(0x07, dst=2, imm=-4),          # r2 += -4
        slot(0x18, dst=1, src=1, imm=0),    # r1 = map_fd(0) ll ...
        slot(0x00),                         # ... second slot
        slot(0x85, imm=1),                  # call map_lookup_elem
        slot(0xB7, dst=0, imm=2),           # r0 = 2 (XDP_PASS)
        slot(0x95),                         # exit
    ])
    (tmp_path / "bench.insns").write_bytes(insns)
    if maps is not None:
        (tmp_path / "bench.maps").write_text(maps)
    if desc is not None:
        (tmp_path / "bench.desc").write_text(desc)
    return tmp_path / "bench.insns"


K2_MAPS = "counts { type = 6, key_size = 4, value_size = 8, max_entries = 1, fd = 0 }\n"
K2_DESC = "{ pgm_input_type = 2, }\n{ max_pkt_sz = 64, }\n"


def test_load_k2_trio(tmp_path):
    path = write_k2(tmp_path, K2_MAPS, K2_DESC)
    loaded = load_program(path)
    assert (loaded.kind, loaded.name, loaded.section, loaded.prog_type) == ("k2", "bench", None, "xdp")
    assert len(loaded.insns) == 12 and sum(i.slots for i in loaded.insns) == 13
    assert loaded.insns[8].form.name == "lddw_map_fd" and loaded.insns[8].imm == 0
    assert str(loaded.insns[4]) == "if r2 > r3 goto +7"
    assert [(m.name, m.type_name, m.key_size, m.value_size) for m in loaded.maps] == [
        ("counts", "percpu_array", 4, 8)]
    assert loaded.k2 == K2Desc(2, 64)
    # the companions name the same trio
    assert load_program(tmp_path / "bench.desc").insns == loaded.insns
    assert load_program(path, prog_type="sched_cls").prog_type == "sched_cls"


def test_load_k2_without_desc_and_map_checks(tmp_path):
    path = write_k2(tmp_path, K2_MAPS)
    loaded = load_program(path)
    assert loaded.k2 is None and loaded.prog_type == "xdp"
    (tmp_path / "bench.maps").unlink()
    with pytest.raises(FormatError) as info:
        load_program(path)
    assert (info.value.where.file, info.value.where.insn) == (str(path), 8)
    assert "bench.maps is missing" in info.value.message
    (tmp_path / "bench.maps").write_text(K2_MAPS.replace("fd = 0", "fd = 1"))
    with pytest.raises(FormatError, match="no map with fd 0"):
        load_program(path)


# ---- raw slots and the loader's errors ---------------------------------------------------------------------

def test_load_raw_and_words(tmp_path):
    insns = assemble(PROGRAM)
    (tmp_path / "p.bin").write_bytes(encode(insns))
    (tmp_path / "p.words").write_text(format_words(insns))
    for name, kind in (("p.bin", "raw"), ("p.words", "words")):
        loaded = load_program(tmp_path / name)
        assert (loaded.kind, loaded.insns, loaded.name, loaded.section) == (kind, insns, "p", None)
        assert loaded.prog_type == "xdp" and loaded.maps == [] and loaded.relocations == []
        assert [s.insns for s in loaded.sections] == [insns]
    assert load_program(tmp_path / "p.bin", prog_type="mem").prog_type == "mem"


@pytest.mark.parametrize("data, insn, what", [
    (b"", None, "empty file"),
    (slot(0xFF), 0, "unknown opcode 0xff"),
    (slot(0xB7, imm=1) + slot(0x95, imm=1), 1, "reserved field imm=1"),
    (slot(0xB7, imm=1) + slot(0x18, dst=1), 1, "lddw is missing its second slot"),
    (slot(0x05, off=5) + slot(0x95), 0, "jump out of range"),
    (slot(0x95)[:5], 0, "not a multiple of 8"),
    (b"r0 = 1\nexit\n", 1, "this looks like text"),
])
def test_raw_errors_name_file_and_slot(tmp_path, data, insn, what):
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    with pytest.raises(BpforgeError) as info:
        load_program(path)
    assert info.value.where.file == str(path)
    assert info.value.where.insn == insn
    assert what in info.value.message


def test_missing_file_and_directory(tmp_path):
    for path, what in ((tmp_path / "nope.o", "No such file"), (tmp_path, "Is a directory")):
        with pytest.raises(FormatError, match=what) as info:
            load_program(path)
        assert info.value.where.file == str(path)


def test_prog_types():
    assert check_prog_type("XDP") == "xdp"
    assert check_prog_type("BPF_PROG_TYPE_SCHED_CLS") == "sched_cls" == check_prog_type("tc")
    with pytest.raises(BpforgeError, match="unknown program type 'bogus'"):
        check_prog_type("bogus")
    assert [prog_type_of_section(s) for s in ("xdp", "xdp.frags", "tc/ingress", "socket", "kprobe/do_exit",
                                              ".text", None)] == [
        "xdp", "xdp", "sched_cls", "socket_filter", "kprobe", None, None]


# ---- assembly ----------------------------------------------------------------------------------------------

TWO_SECTIONS = """\
\t.section\txdp,"ax",@progbits
\t.globl\tfirst
first:
\tr0 = 2
\texit
\t.section\tsocket,"ax",@progbits
\t.globl\tsecond
second:
\tr1 = counter ll
\tr0 = 0
\texit
"""


def test_load_asm_sections(tmp_path):
    path = tmp_path / "two.s"
    path.write_text(TWO_SECTIONS)
    loaded = load_program(path)
    assert (loaded.kind, loaded.name, loaded.section, loaded.prog_type) == ("asm", "first", "xdp", "xdp")
    assert [(s.name, len(s.insns), s.functions) for s in loaded.sections] == [
        ("xdp", 2, {0: "first"}), ("socket", 3, {0: "second"})]
    second = load_program(path, section="second")
    assert (second.section, second.prog_type) == ("socket", "socket_filter")
    assert [(r.insn, r.symbol) for r in second.relocations] == [(0, "counter")]
    assert load_program(path, section="socket").name == "second"
    with pytest.raises(FormatError, match="no section or function named 'nope'"):
        load_program(path, section="nope")


def test_asm_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "bad.s"
    path.write_text("r0 = 1\n  r0 +== 2\nexit\n")
    with pytest.raises(AsmError) as info:
        load_program(path)
    assert (info.value.where.file, info.value.where.line, info.value.where.col) == (str(path), 2, 3)


def test_assemble_file_outputs(tmp_path):
    src = tmp_path / "p.s"
    src.write_text(PROGRAM)
    assert output_kind("x.o") == "elf" and output_kind("x.words") == "words" and output_kind("x.bin") == "raw"
    assert assemble_file(src, "raw") == encode(assemble(PROGRAM))
    assert parse_words(assemble_file(src, "words").decode()) == encode(assemble(PROGRAM))
    src.write_text("goto +5\nexit\n")
    with pytest.raises(AsmError, match="jump out of range") as info:
        assemble_file(src, "raw")
    assert (info.value.where.file, info.value.where.line, info.value.where.col) == (str(src), 1, 1)
    elf_file = tmp_path / "x.o"
    elf_file.write_bytes(b"\x7fELF" + bytes(60))
    with pytest.raises(FormatError, match="ELF object, not assembly"):
        assemble_file(elf_file, "raw")


# ---- ELF objects (examples/obj, built by the examples' Makefile) -------------------------------------------

def test_non_bpf_elf_is_refused(tmp_path):
    path = tmp_path / "true"
    path.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(9) + (1).to_bytes(2, "little") + (62).to_bytes(2, "little")
                     + bytes(44))  # the header of an x86-64 relocatable object
    with pytest.raises(BpforgeError, match="not a BPF object") as info:
        load_program(path)
    assert info.value.where.file == str(path)


def test_load_elf_object():
    loaded = load_program(EXAMPLES / "xdp_lb.o")
    assert (loaded.kind, loaded.name, loaded.section, loaded.prog_type) == ("elf", "xdp_lb", "xdp", "xdp")
    assert loaded.license == "GPL"
    assert loaded.maps and all(m.key_size > 0 for m in loaded.maps)
    assert loaded.relocations and loaded.object is not None
    assert [p.name for p in loaded.programs] == ["xdp_lb"]
    assert load_program(EXAMPLES / "socket_filter.o").prog_type == "socket_filter"
    assert load_program(EXAMPLES / "tc_classifier.o").prog_type == "sched_cls"


def test_elf_errors_name_the_file(tmp_path):
    data = (EXAMPLES / "xdp_lb.o").read_bytes()
    path = tmp_path / "cut.o"
    path.write_bytes(data[:200])
    with pytest.raises(BpforgeError) as info:
        load_program(path)
    assert info.value.where.file == str(path)
    with pytest.raises(BpforgeError, match="nope"):
        load_program(EXAMPLES / "xdp_lb.o", section="nope")


def test_object_program_is_linked_unless_only_listed():
    path = EXAMPLES / "bpf2bpf_loop.o"
    linked = load_program(path)
    alone = load_program(path, link=False)
    assert alone.insns == [i for s in alone.sections if s.name == "xdp" for i in s.insns]
    assert len(linked.insns) > len(alone.insns) and linked.insns[0] == alone.insns[0]
    assert alone.insns[1].imm == -1 and linked.insns[1].imm > 0  # the call now reaches its appended callee
    assert {"walk_tlvs", "payload_offset"} <= set(linked.functions.values())
