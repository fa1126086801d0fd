"""Program files as others write them (K2's own benchmark trios) and as an attacker would: devices, FIFOs,
numbers of thousands of digits, sizes beyond their field, non-ASCII digits, reserved section names. Each
loads correctly or is one BpforgeError naming the file (and line); nothing blocks, nothing grows unbounded."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from bpforge.errors import AsmError, BpforgeError, FormatError
from bpforge.files import read_input
from bpforge.formats import assemble_file, load_program, parse_k2_desc, parse_k2_maps, parse_words
from bpforge.isa import assemble, parse
from bpforge.isa.numbers import NumberError, parse_number

K2_BENCH = Path("/work/shared/bench/k2")
HUGE = "9" * 5000


def k2_table() -> dict[str, int]:
    """program -> clang -O2 slot count, from the README of the K2 benchmark folder."""
    readme = K2_BENCH / "README.md"
    if not readme.exists():
        return {}
    rows = re.findall(r"^\| (\S+) \| [^|]+ \| [^|]+ \| (\d+) \| \d+ \|", readme.read_text(), re.M)
    return {name: int(slots) for name, slots in rows}


def test_k2_benchmark_trios_load_as_k2_wrote_them():
    table = k2_table()
    if not table:
        pytest.skip(f"K2's benchmark files are not in {K2_BENCH}")
    assert len(table) == 19
    for name, slots in table.items():
        loaded = load_program(K2_BENCH / f"{name}.insns")
        assert sum(i.slots for i in loaded.insns) == slots, name
        text = (K2_BENCH / f"{name}.maps").read_text()
        assert [m.name for m in loaded.maps] == [line.split()[0] for line in text.splitlines() if line.strip()]


def test_k2_map_lines_without_their_closing_brace():
    maps = parse_k2_maps("a { type = 2, key_size = 4, value_size = 8, max_entries = 16, fd = 0\n"
                         "b { type = 1, key_size = 8, value_size = 4, max_entries = 9, fd = 1 }\n")
    assert [(m.name, m.type, m.key_size, m.value_size, m.max_entries, m.ref) for m in maps] == [
        ("a", 2, 4, 8, 16, 0), ("b", 1, 8, 4, 9, 1)]
    with pytest.raises(FormatError, match="expected 'name"):
        parse_k2_maps("a type = 2, key_size = 4 }\n")


@pytest.mark.parametrize("value, message", [
    ("4294967296", "value_size = 4294967296 is outside the u32 range"),
    ("-1", "value_size = -1 is outside the u32 range"),
    (HUGE, "value_size: number of 5000 digits"),
    ("\uff18", "expected 'key = number'"),  # a full-width 8
    ("\u0663", "expected 'key = number'"),  # an Arabic-Indic 3
])
def test_k2_values_beyond_a_u32_or_not_ascii_digits(value: str, message: str):
    with pytest.raises(FormatError, match=re.escape(message)) as err:
        parse_k2_maps(f"m {{ type = 2, key_size = 4, value_size = {value}, max_entries = 1, fd = 0 }}\n",
                      filename="x.maps")
    assert (err.value.where.file, err.value.where.line) == ("x.maps", 1)
    assert len(str(err.value)) < 200
    with pytest.raises(FormatError):
        parse_k2_desc(f"{{ pgm_input_type = {value}, }}\n")


def test_word_lists_refuse_long_numbers_with_their_own_message():
    with pytest.raises(FormatError, match="number of 5000 digits .* does not fit in a 64-bit slot") as err:
        parse_words(f"0x95\n{HUGE}\n", filename="w.words")
    assert (err.value.where.line, err.value.where.col) == (2, 1)
    assert parse_words("00000000000000000000000000000149\n") == (149).to_bytes(8, "little")  # zeros are free
    with pytest.raises(FormatError, match="is not a number"):
        parse_words("\uff19\n")


@pytest.mark.parametrize("line, message", [
    ("r0 = " + HUGE, "number of 5000 digits"),
    ("r0 = 0x" + "f" * 5000, "number of 5000 digits"),
    ("r" + HUGE + " = 1", "invalid register"),
    ("r\uff10 = 1", "unknown instruction"),  # r０
    ("r0 = \u0661", "unknown instruction"),  # Arabic-Indic 1
    ("r0 = 08", "not an octal number"),
    ("if r1 > 2 goto +" + HUGE, "number of 5000 digits"),
    ("call " + HUGE, "number of 5000 digits"),
    ("r1 = *(u32 *)(r2 + \uff14)", "unknown instruction"),
])
def test_assembly_numbers(line: str, message: str):
    with pytest.raises(AsmError, match=message) as err:
        assemble(line + "\nexit\n", filename="t.s")
    assert err.value.where.line == 1 and len(str(err.value)) < 200


def test_assembly_octal_as_llvm_mc_reads_it():
    assert assemble("r0 = 010\nr1 = 0x10\nr2 = 10\nexit\n")[:3] == assemble("r0 = 8\nr1 = 16\nr2 = 10\nexit\n")[:3]


def test_parse_number():
    assert [parse_number(t) for t in ("0", "-12", "+ 7", "0x1F", "0000000000000000000000000000001")] == \
        [0, -12, 7, 31, 1]
    for bad in ("", "x", "1.0", "0x", "1_000", "\uff11", "0x" + "1" * 18):
        with pytest.raises(NumberError):
            parse_number(bad)


@pytest.mark.parametrize("name", [".BTF", ".BTF.ext", ".maps", "maps", "maps/x", "license", "version", ".symtab",
                                  ".strtab", ".shstrtab", ".data", ".rodata.str1.1", ".bss", ".relxdp",
                                  ".debug_info", ".kconfig", ".struct_ops", ""])
def test_asm_refuses_section_names_loaders_read_as_something_else(tmp_path, name: str):
    src = tmp_path / "bad.s"
    src.write_text(f"r0 = 0\n.section \"{name}\"\nr0 = 1\nexit\n")
    with pytest.raises(AsmError, match="code cannot go in section") as err:
        assemble_file(src, "elf")
    assert (err.value.where.file, err.value.where.line) == (str(src), 2)
    assert parse(src.read_text()).sections[1].name == name


# ---- files: only regular ones, never unbounded -----------------------------------------------------------

def finishes(call, seconds: float = 20):
    """call() run in a thread: its result or exception, failing the test instead of hanging it."""
    box: dict = {}

    def run():
        try:
            box["value"] = call()
        except BaseException as err:  # noqa: BLE001  (handed to the test)
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_devices_fifos_and_directories_are_refused(tmp_path):
    fifo = tmp_path / "prog.o"
    os.mkfifo(fifo)  # no writer: open() for reading would block forever
    for path, what in (("/dev/zero", "character device"), (str(fifo), "FIFO"), (str(tmp_path), "Is a directory")):
        with pytest.raises(FormatError, match=what) as err:
            finishes(lambda: load_program(path))
        assert err.value.where.file == path
    with pytest.raises(BpforgeError, match="FIFO"):
        finishes(lambda: assemble_file(fifo, "elf"))
    from bpforge.elf import read_object
    with pytest.raises(BpforgeError, match="character device"):
        finishes(lambda: read_object("/dev/zero"))


def test_read_input_caps_size(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(1001))
    assert read_input(path, limit=1001) == bytes(1001)
    with pytest.raises(FormatError, match="the packet is 1001 bytes, more than the 1000 bytes") as err:
        read_input(path, what="packet", limit=1000)
    assert err.value.where.file == str(path)
    with pytest.raises(FormatError, match="cannot read the map file: No such file"):
        read_input(tmp_path / "none", what="map file")
