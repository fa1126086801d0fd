"""The `bpforge` command, run as a user runs it (the installed entry point in a subprocess, so a traceback
or a second line on stderr cannot hide): each verb on each input format, round trips through files,
--json shapes, and bad input -> one line on stderr naming the file, exit code 2."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bpforge import __version__
from bpforge.formats import format_words
from bpforge.isa import assemble, encode

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "obj"
_ENTRY = shutil.which("bpforge", path=str(Path(sys.executable).parent))
COMMAND = [_ENTRY] if _ENTRY else [sys.executable, "-c", "from bpforge.cli import main; main()"]


PROGRAM = "r0 = 1\nr1 = 2\nif r1 > 3 goto +1\nr0 += r1\nexit\n"
TEXT = ["       0:\tr0 = 1", "       1:\tr1 = 2", "       2:\tif r1 > 3 goto +1", "       3:\tr0 += r1",
        "       4:\texit"]
INSN_KEYS = {"section", "function", "index", "opcode", "name", "dst", "src", "off", "imm", "imm64", "slots",
             "text", "bytes", "relocations"}
INFO_KEYS = {"file", "format", "license", "programs", "sections", "maps", "relocations", "data", "k2"}


def bpforge(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=120)


def ok(*args, cwd=None) -> str:
    result = bpforge(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def bad_input(*args, names: tuple[str, ...] = ()) -> str:
    """Run a command that must fail on its input: exit 2, exactly one line on stderr, no traceback."""
    result = bpforge(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bpforge: ")
    for name in names:
        assert name in lines[0]
    return lines[0]


@pytest.fixture
def programs(tmp_path) -> dict[str, Path]:
    """The same program as assembly, raw bytecode and a word list."""
    insns = assemble(PROGRAM)
    paths = {"asm": tmp_path / "p.s", "raw": tmp_path / "p.bin", "words": tmp_path / "p.words"}
    paths["asm"].write_text(PROGRAM)
    paths["raw"].write_bytes(encode(insns))
    paths["words"].write_text(format_words(insns))
    return paths


def test_version_and_help():
    assert ok("--version").strip() == f"bpforge {__version__}"
    assert "disasm" in ok("--help") and "info" in ok("--help")


# ---- disasm ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["asm", "raw", "words"])
def test_disasm_text(programs, kind):
    lines = [line for line in ok("disasm", programs[kind]).splitlines() if line.strip()]
    if kind == "asm":  # assembly has a (default) section, which the listing names
        assert lines.pop(0) == "Disassembly of section .text:"
    assert lines == TEXT


def test_disasm_bytes(programs):
    out = ok("disasm", programs["raw"], "--bytes")
    assert "       0:\tb7 00 00 00 01 00 00 00\tr0 = 1" in out.splitlines()


@pytest.mark.parametrize("kind", ["asm", "raw", "words"])
def test_disasm_json(programs, kind):
    rows = json.loads(ok("disasm", programs[kind], "--json"))
    assert [row["text"] for row in rows] == [line.split("\t")[1] for line in TEXT]
    assert all(set(row) == INSN_KEYS for row in rows)
    first = rows[0]
    assert (first["index"], first["opcode"], first["name"], first["dst"], first["imm"], first["bytes"]) == (
        0, 0xB7, "mov64_imm", 0, 1, "b700000001000000")


def test_disasm_json_lddw_counts_slots(tmp_path):
    path = tmp_path / "l.s"
    path.write_text("r1 = 0x100000002 ll\nr0 = 0\nexit\n")
    rows = json.loads(ok("disasm", path, "--json"))
    assert [(r["index"], r["slots"], r["imm64"]) for r in rows] == [(0, 2, 0x100000002), (2, 1, None),
                                                                    (3, 1, None)]


# ---- asm and round trips -----------------------------------------------------------------------------------

def test_asm_raw_and_words_round_trip(programs, tmp_path):
    ok("asm", programs["asm"], "-o", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == programs["raw"].read_bytes()
    ok("asm", programs["asm"], "-o", tmp_path / "out.words")
    assert [line.split("#")[0].strip() for line in (tmp_path / "out.words").read_text().splitlines()] == [
        line.split("#")[0].strip() for line in programs["words"].read_text().splitlines()]
    # disasm output is assembly again: text -> bytes -> text -> bytes
    (tmp_path / "again.s").write_text(ok("disasm", tmp_path / "out.bin", "--bytes"))
    ok("asm", tmp_path / "again.s", "-o", tmp_path / "again.bin")
    assert (tmp_path / "again.bin").read_bytes() == programs["raw"].read_bytes()


def test_asm_object_round_trip(programs, tmp_path):
    ok("asm", programs["asm"], "-o", tmp_path / "p.o")
    assert [line for line in ok("disasm", tmp_path / "p.o").splitlines() if line.startswith("  ")] == TEXT


@pytest.mark.parametrize("example", ["xdp_lb.o", "bpf2bpf_loop.o", "global_data.o", "socket_filter.o",
                                     "legacy_maps.o", "tc_classifier.v4.o"])
def test_object_disasm_asm_disasm_is_identical(example, tmp_path):
    """An object's listing reassembles into an object with the same instructions, functions, relocations."""
    original = ok("disasm", EXAMPLES / example, "--json")
    (tmp_path / "x.s").write_text(ok("disasm", EXAMPLES / example))
    ok("asm", tmp_path / "x.s", "-o", tmp_path / "x.o")
    assert ok("disasm", tmp_path / "x.o", "--json") == original


# ---- info --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["asm", "raw", "words"])
def test_info(programs, kind):
    report = json.loads(ok("info", programs[kind], "--json"))
    assert set(report) == INFO_KEYS
    assert report["format"] == kind
    assert report["programs"] == [{"name": "p", "section": ".text" if kind == "asm" else None, "type": "xdp",
                                   "insns": 5, "slots": 5}]
    text = ok("info", programs[kind])
    assert text.splitlines()[0].startswith(str(programs[kind]))
    assert "xdp" in text


def test_info_type_option(programs):
    report = json.loads(ok("info", programs["raw"], "--json", "--type", "mem"))
    assert report["programs"][0]["type"] == "mem"
    assert "unknown program type 'nope'" in bad_input("info", programs["raw"], "--type", "nope")


def test_info_k2(tmp_path):
    insns = assemble("r1 = map_fd(0) ll\nr0 = 2\nexit\n")
    (tmp_path / "b.insns").write_bytes(encode(insns))
    (tmp_path / "b.maps").write_text("m { type = 2, key_size = 4, value_size = 8, max_entries = 4, fd = 0 }\n")
    (tmp_path / "b.desc").write_text("{ pgm_input_type = 1, }\n{ max_pkt_sz = 32, }\n")
    report = json.loads(ok("info", tmp_path / "b.insns", "--json"))
    assert report["format"] == "k2" and report["programs"][0]["type"] == "mem"
    assert report["maps"] == [{"name": "m", "type": 2, "type_name": "array", "key_size": 4, "value_size": 8,
                               "max_entries": 4, "flags": 0}]
    assert report["k2"] == {"pgm_input_type": 1, "input_type": "pkt", "max_pkt_sz": 32}
    assert "r1 = map_fd(0) ll" in ok("disasm", tmp_path / "b.insns")


def test_info_and_disasm_object():
    report = json.loads(ok("info", EXAMPLES / "xdp_lb.o", "--json"))
    assert report["format"] == "elf" and report["license"] == "GPL"
    assert [(p["name"], p["section"], p["type"]) for p in report["programs"]] == [("xdp_lb", "xdp", "xdp")]
    assert report["maps"] and set(report["maps"][0]) == {"name", "type", "type_name", "key_size", "value_size",
                                                         "max_entries", "flags"}
    assert report["relocations"] and set(report["relocations"][0]) == {"section", "index", "symbol", "type"}
    text = ok("disasm", EXAMPLES / "xdp_lb.o")
    assert "Disassembly of section xdp:" in text and "<xdp_lb>:" in text and "R_BPF_64_64" in text
    assert json.loads(ok("info", EXAMPLES / "global_data.o", "--json"))["data"]


def test_object_section_option():
    text = ok("disasm", EXAMPLES / "bpf2bpf_loop.o")
    assert "Disassembly of section .text:" in text and "Disassembly of section xdp:" in text
    only = ok("disasm", EXAMPLES / "bpf2bpf_loop.o", "--section", "xdp")
    assert "Disassembly of section xdp:" in only and "Disassembly of section .text:" not in only
    bad_input("disasm", EXAMPLES / "bpf2bpf_loop.o", "--section", "nope", names=("bpf2bpf_loop.o", "nope"))


# ---- bad input: one line, the file (and section/insn), exit 2 ----------------------------------------------

def slot(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


@pytest.mark.parametrize("name, data, where", [
    ("empty.bin", b"", ()),
    ("opcode.bin", slot(0xB7) + slot(0xFF), ("insn 1", "unknown opcode")),
    ("reserved.bin", slot(0xB7, imm=1) + slot(0x95, dst=3), ("insn 1", "reserved")),
    ("halflddw.bin", slot(0xB7) + slot(0x18, dst=1, imm=5), ("insn 1", "lddw")),
    ("jump.bin", slot(0x05, off=9) + slot(0x95), ("insn 0", "jump out of range")),
    ("odd.bin", slot(0x95)[:6], ("not a multiple of 8",)),
    ("bad.words", b"0x95\nexit\n", ("bad.words:2:1",)),
    ("syntax.s", b"r0 = 1\n  r0 +== 2\nexit\n", ("syntax.s:2:3",)),
    ("register.s", b"r0 = 1\nr12 = 2\nexit\n", ("register.s:2:1",)),
    ("shortelf.o", b"\x7fELF\x02\x01", ("truncated",)),
])
def test_bad_program(tmp_path, name, data, where):
    path = tmp_path / name
    path.write_bytes(data)
    for verb in ("disasm", "info"):
        bad_input(verb, path, names=(str(path), *where))


def test_missing_file_and_directory(tmp_path):
    bad_input("disasm", tmp_path / "nope.o", names=("nope.o", "No such file"))
    bad_input("info", tmp_path, names=(str(tmp_path), "directory"))
    bad_input("asm", tmp_path / "nope.s", "-o", tmp_path / "x.bin", names=("nope.s",))
    bad_input("asm", tmp_path, "-o", tmp_path / "x.bin", names=(str(tmp_path),))


def test_non_bpf_elf(tmp_path):
    if not Path("/bin/true").exists():
        pytest.skip("no /bin/true to copy")
    path = tmp_path / "true.o"
    path.write_bytes(Path("/bin/true").read_bytes())
    bad_input("disasm", path, names=(str(path), "not a BPF object"))


def test_truncated_object(tmp_path):
    path = tmp_path / "cut.o"
    path.write_bytes((EXAMPLES / "xdp_lb.o").read_bytes()[:300])
    bad_input("disasm", path, names=(str(path),))
    bad_input("info", path, names=(str(path),))


def test_asm_errors(tmp_path):
    src = tmp_path / "bad.s"
    src.write_text("r0 = 1\ngoto +7\nexit\n")
    bad_input("asm", src, "-o", tmp_path / "x.bin", names=(str(src) + ":2:1:", "jump out of range"))
    src.write_text("r0 = 1\nr0 = frob\nexit\n")
    line = bad_input("asm", src, "-o", tmp_path / "x.bin", names=(str(src) + ":2:",))
    assert not (tmp_path / "x.bin").exists(), line
    src.write_text("r0 = 0\nexit\n")
    bad_input("asm", src, "-o", tmp_path / "no" / "dir" / "x.bin", names=("x.bin",))
    bad_input("asm", EXAMPLES / "xdp_lb.o", "-o", tmp_path / "x.bin", names=("xdp_lb.o", "not assembly"))


def test_bad_instruction_in_object_names_section_and_insn(tmp_path):
    from elftools.elf.elffile import ELFFile

    data = bytearray((EXAMPLES / "xdp_counter.o").read_bytes())
    with open(EXAMPLES / "xdp_counter.o", "rb") as f:
        offset = ELFFile(f).get_section_by_name("xdp")["sh_offset"]
    data[offset + 3 * 8] = 0xFF  # opcode of the instruction in slot 3
    path = tmp_path / "broken.o"
    path.write_bytes(bytes(data))
    bad_input("disasm", path, names=(str(path), "section xdp", "insn 3", "0xff"))


def test_bad_k2_companion_names_its_file_and_line(tmp_path):
    (tmp_path / "b.insns").write_bytes(encode(assemble("r0 = 2\nexit\n")))
    (tmp_path / "b.maps").write_text("m { type = 2, key_size = 4, value_size = 8, fd = 0 }\nbroken line\n")
    bad_input("info", tmp_path / "b.insns", names=(str(tmp_path / "b.maps") + ":2:",))
