"""Bad objects give ElfError (or the DecodeError of the instruction at fault) naming the file, the section
and the instruction; nothing else ever escapes, whatever the bytes."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpforge.elf import build_object, insert_insns, read_object, write_object
from bpforge.elf.layout import SHDR, read_image, serialize
from bpforge.errors import BpforgeError, DecodeError, ElfError
from bpforge.isa import Insn, parse
from test_elf_support import need

OBJ = Path(__file__).parent.parent / "examples" / "obj"
SMALL = build_object(parse(".section xdp\n.globl f\nf:\n r1 = 0x1122334455667788 ll\n r0 = 2\n exit\n"))


def patched(data: bytes, section: str, *, size: int | None = None, body: bytes | None = None) -> bytes:
    """The object with one section's size or contents changed (through the writer's own layout)."""
    image = read_image(data)
    sec = image.sections[image.index(section)]
    if body is not None:
        sec.data = body
    if size is not None:
        sec.data = sec.data[:size]
    return serialize(image)


def error_of(data: bytes, name: str = "bad.o") -> BpforgeError:
    with pytest.raises(BpforgeError) as err:
        read_object(data, filename=name)
    assert err.value.where.file == name
    return err.value


def test_missing_file(tmp_path: Path):
    with pytest.raises(ElfError, match="cannot read") as err:
        read_object(tmp_path / "nope.o")
    assert err.value.where.file == str(tmp_path / "nope.o")


def test_empty_file(tmp_path: Path):
    (tmp_path / "empty.o").write_bytes(b"")
    with pytest.raises(ElfError, match="empty file") as err:
        read_object(tmp_path / "empty.o")
    assert str(err.value).startswith(str(tmp_path / "empty.o"))


@pytest.mark.parametrize("data, message", [
    (b"hello, world", "not an ELF file"),
    (b"\x7fELF", "truncated ELF header"),
    (b"\x7fELF\x01\x01\x01" + bytes(60), "32-bit ELF"),
    (b"\x7fELF\x02\x02\x01" + bytes(60), "big-endian"),
])
def test_not_a_bpf_elf(data: bytes, message: str):
    err = error_of(data)
    assert isinstance(err, ElfError) and message in err.message


def test_other_machines():
    x86 = bytearray(SMALL)
    x86[18:20] = struct.pack("<H", 62)
    assert "machine 62" in error_of(bytes(x86)).message
    true = Path("/bin/true")
    if true.exists():
        assert "not a BPF object" in error_of(true.read_bytes()).message or "program headers" in \
            error_of(true.read_bytes()).message


def test_compiled_x86_object(tmp_path: Path):
    clang = need("clang-19")
    (tmp_path / "x86.c").write_text("int f(void) { return 1; }\n")
    out = tmp_path / "x86.o"
    if subprocess.run([clang, "-c", "-target", "x86_64-linux-gnu", str(tmp_path / "x86.c"), "-o", str(out)],
                      capture_output=True).returncode:
        pytest.skip("clang-19 cannot target x86_64 here")
    with pytest.raises(ElfError, match="not a BPF object: ELF machine 62") as err:
        read_object(out)
    assert err.value.where.file == str(out)


def test_section_size_not_a_multiple_of_8():
    err = error_of(patched(SMALL, "xdp", size=20))
    assert isinstance(err, ElfError) and "not a multiple of 8" in err.message
    assert err.where.section == "xdp"


def test_lddw_cut_in_half_at_the_section_end():
    code = read_image(SMALL).sections[read_image(SMALL).index("xdp")].data
    err = error_of(patched(SMALL, "xdp", body=code[16:32] + code[:8]))  # r0 = 2; exit; first half of lddw
    assert isinstance(err, DecodeError) and "lddw is missing its second slot" in err.message
    assert (err.where.section, err.where.insn) == ("xdp", 2)


def test_unknown_opcode():
    code = bytearray(read_image(SMALL).sections[read_image(SMALL).index("xdp")].data)
    code[16] = 0xFF  # the `r0 = 2` after the lddw
    err = error_of(patched(SMALL, "xdp", body=bytes(code)))
    assert isinstance(err, DecodeError) and "unknown opcode 0xff" in err.message
    assert (err.where.section, err.where.insn) == ("xdp", 2)
    assert str(err).startswith("bad.o: section xdp: insn 2: ")


@pytest.mark.parametrize("cut", [1, 17, 63, 64, 100, 200, 300, 400, -200, -64, -24, -1])
def test_truncated_objects(cut: int):
    data = (OBJ / "global_data.o").read_bytes()
    err = error_of(data[:cut])
    assert isinstance(err, ElfError)


def test_truncated_section_is_named():
    data = (OBJ / "global_data.o").read_bytes()
    image = read_image(data)
    xdp = image.sections[image.index("xdp")].header
    err = error_of(data[:xdp.offset + 8] + bytes(0), "t.o")
    assert "truncated" in err.message


def test_relocation_on_the_wrong_instruction():
    data = build_object(parse(".section xdp\nf:\n r1 = m ll\n r0 = 0\n exit\n"))
    image = read_image(data)
    rel = image.sections[image.index(".relxdp")]
    offset, info = struct.unpack("<QQ", rel.data)
    rel.data = struct.pack("<QQ", offset + 16, info)  # onto `r0 = 0`
    err = error_of(serialize(image))
    assert "R_BPF_64_64 relocation against 'm' on a mov64_imm" in err.message
    assert (err.where.section, err.where.insn) == ("xdp", 2)
    rel.data = struct.pack("<QQ", offset + 4, info)
    err = error_of(serialize(image))
    assert "not at the start of an instruction" in err.message


def test_bad_section_header_table():
    data = bytearray(SMALL)
    shoff = struct.unpack_from("<Q", data, 40)[0]
    struct.pack_into("<Q", data, 40, shoff + 10_000)
    assert "section header table" in error_of(bytes(data)).message
    data = bytearray(SMALL)
    struct.pack_into("<H", data, 58, SHDR.size - 1)
    assert "section header size" in error_of(bytes(data)).message


def _only_bpforge_errors(data: bytes) -> None:
    """Reading, writing back and linking either work or raise a BpforgeError; nothing else escapes."""
    try:
        obj = read_object(data, filename="fuzz.o")
    except BpforgeError as err:
        assert err.where.file == "fuzz.o"
        return
    try:
        write_object(obj)
        for prog in obj.programs + obj.subprograms:
            obj.linked(prog)
    except BpforgeError:
        pass
    try:  # and an edit of every section
        nop = Insn.make("ja", off=0)
        write_object(obj, {s.name: insert_insns(s, {k: [nop] for k in range(0, len(s.insns) - 1, 5)})
                           for s in obj.sections})
    except BpforgeError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_truncated_or_bit_flipped_objects_only_raise_bpforge_errors(data):
    name = data.draw(st.sampled_from(["global_data.o", "bpf2bpf_loop.o", "asm_xdp_pass.o", "legacy_maps.o"]))
    raw = bytearray((OBJ / name).read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="length")]
    flips = data.draw(st.lists(st.tuples(st.integers(0, max(len(raw) - 1, 0)), st.integers(0, 7)), max_size=8))
    for pos, bit in flips:
        if raw:
            raw[pos] ^= 1 << bit
    _only_bpforge_errors(bytes(raw))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_after_an_elf_header(tail: bytes):
    _only_bpforge_errors(SMALL[:64] + tail)


@pytest.mark.parametrize("section", [".BTF", ".BTF.ext", ".maps", ".symtab", ".strtab", ".relxdp"])
@pytest.mark.parametrize("keep", [0, 3, 24, 100])
def test_truncated_metadata_sections(section: str, keep: int):
    raw = (OBJ / "bpf2bpf_loop.o").read_bytes()
    image = read_image(raw)
    if image.index(section) is None:
        pytest.skip(f"no {section}")
    _only_bpforge_errors(patched(raw, section, size=keep))
