"""`bpforge prog show|dump` and `bpforge map show|dump` against bpftool on programs loaded into the running
kernel for the test (root; skipped without bpf() or bpftool): JSON field for field, text line for line,
xlated instructions as bpftool spells them, jited code checked against the kernel's image size (bpftool
here may have no disassembler), map contents written by the test. Only the ids this module created are
looked at, whatever else the machine runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bpforge.isa.kernel_syntax import kernel_text, raw_insns

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "obj"
_ENTRY = shutil.which("bpforge", path=str(Path(sys.executable).parent))
COMMAND = [_ENTRY] if _ENTRY else [sys.executable, "-c", "from bpforge.cli import main; main()"]
# Loaded for the tests: one function; bpf-to-bpf calls; global data (frozen .rodata, a name longer than
# the kernel's 15 characters, a helper call); hash maps and a helper call.
OBJECTS = ("xdp_counter.o", "bpf2bpf_loop.o", "global_data.o", "tc_classifier.o")


def bpforge(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "src"))
    return subprocess.run([*COMMAND, *map(str, args)], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=120, env=env)


def ours(*args) -> str:
    result = bpforge(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.fixture(scope="module")
def bpftool():
    path = shutil.which("bpftool") or ("/usr/sbin/bpftool" if os.access("/usr/sbin/bpftool", os.X_OK) else None)
    if path is None:
        pytest.skip("bpftool is not installed")

    def run(*args, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([path, *map(str, args)], capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        return result
    return run


@pytest.fixture(scope="module")
def loaded(kernel):
    """Object name -> (KernelProgram, program id), with entries written into some of their maps."""
    from bpforge.elf import read_object
    from bpforge.kernel.info import prog_info

    progs = {}
    try:
        for name in OBJECTS:
            obj = read_object((EXAMPLES / name).read_bytes(), filename=str(EXAMPLES / name))
            prog = kernel.load_linked(obj.linked(), obj)
            progs[name] = (prog, prog_info(prog.fd).id)
        counter = progs["xdp_counter.o"][0]
        ncpus = counter.maps["class_stats"].ncpus
        counter.maps["size_hist"].update(struct.pack("<I", 3), struct.pack("<Q", 0x1122334455667788))
        counter.maps["class_stats"].update(struct.pack("<I", 2), b"".join(
            struct.pack("<QQ", cpu + 1, 1000 * (cpu + 1)) for cpu in range(ncpus)))
        classifier = progs["tc_classifier.o"][0]
        for port in (80, 443, 8080):
            classifier.maps["port_class"].update(struct.pack("<I", port), bytes(range(port % 7, port % 7 + 20)))
        yield progs
    finally:
        for prog, _ in progs.values():
            prog.close()


def prog_id(loaded, name: str) -> int:
    return loaded[name][1]


def map_id(loaded, name: str, map_name: str) -> int:
    from bpforge.kernel.info import map_info

    return map_info(loaded[name][0].maps[map_name].fd).id


def same_loaded_at(a: int, b: int) -> bool:
    # both compute boot time + load_time from two clock reads of their own: they may fall either side of
    # a second boundary
    return abs(a - b) <= 1


# ---- prog show -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", OBJECTS)
def test_prog_show_json_matches_bpftool(loaded, bpftool, name):
    pid = prog_id(loaded, name)
    mine = json.loads(ours("prog", "show", "id", pid, "--json"))
    theirs = json.loads(bpftool("-j", "prog", "show", "id", pid).stdout)
    assert list(mine) == [k for k in theirs if k in mine]  # bpftool's order
    assert set(theirs) - set(mine) <= {"pinned", "pids", "metadata", "orphaned"}
    assert same_loaded_at(mine.pop("loaded_at"), theirs.pop("loaded_at"))
    assert mine == {k: v for k, v in theirs.items() if k in mine}


@pytest.mark.parametrize("name", OBJECTS)
def test_prog_show_text_matches_bpftool(loaded, bpftool, name):
    pid = prog_id(loaded, name)
    mine = ours("prog", "show", "id", pid).splitlines()
    theirs = [line for line in bpftool("prog", "show", "id", pid).stdout.splitlines()
              if not line.startswith("\tpids ")]
    assert len(mine) == len(theirs)
    when = re.compile(r"loaded_at (\S+)")
    for a, b in zip(mine, theirs):
        if when.search(a) and a != b:  # a second boundary between the two reads of the clocks
            assert when.sub("", a) == when.sub("", b)
            continue
        assert a == b


def test_prog_show_all_lists_ours(loaded):
    listed = {p["id"]: p for p in json.loads(ours("prog", "show", "--json"))}
    for name in OBJECTS:
        assert prog_id(loaded, name) in listed


def test_prog_show_by_name_and_full_name(loaded, bpftool):
    # the kernel keeps 15 characters; the name comes from the program's BTF, as bpftool prints it
    mine = json.loads(ours("prog", "show", "id", prog_id(loaded, "global_data.o"), "--json"))
    assert mine["name"] == "xdp_fault_inject"
    by_name = json.loads(ours("prog", "show", "name", "xdp_fault_inject", "--json"))
    ids = {p["id"] for p in (by_name if isinstance(by_name, list) else [by_name])}
    assert prog_id(loaded, "global_data.o") in ids


# ---- prog dump -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", OBJECTS)
def test_prog_dump_xlated_matches_bpftool(loaded, bpftool, name):
    pid = prog_id(loaded, name)
    assert ours("prog", "dump", "xlated", "id", pid) == bpftool("prog", "dump", "xlated", "id", pid).stdout
    assert ours("prog", "dump", "xlated", "id", pid, "--opcodes") == \
        bpftool("prog", "dump", "xlated", "id", pid, "opcodes").stdout


@pytest.mark.parametrize("name", OBJECTS)
def test_prog_dump_xlated_json_matches_bpftool(loaded, bpftool, name):
    pid = prog_id(loaded, name)
    assert json.loads(ours("prog", "dump", "xlated", "id", pid, "--json")) == \
        json.loads(bpftool("-j", "prog", "dump", "xlated", "id", pid).stdout)
    assert json.loads(ours("prog", "dump", "xlated", "id", pid, "--json", "--opcodes")) == \
        json.loads(bpftool("-j", "prog", "dump", "xlated", "id", pid, "opcodes").stdout)


def test_xlated_names_helpers_maps_and_functions(loaded):
    text = ours("prog", "dump", "xlated", "id", prog_id(loaded, "bpf2bpf_loop.o"))
    assert re.search(r"call pc[+-]\d+#bpf_prog_[0-9a-f]{16}_payload_offset", text)
    assert re.search(r"r1 = map\[id:\d+\]", text)
    text = ours("prog", "dump", "xlated", "id", prog_id(loaded, "global_data.o"))
    assert re.search(r"map\[id:\d+\]\[0\]\+\d+", text)
    assert re.search(r"call bpf_\w+#\d+", text)


@pytest.mark.parametrize("name", OBJECTS)
def test_prog_dump_jited(loaded, bpftool, name):
    from bpforge.kernel.info import find_programs

    pid = prog_id(loaded, name)
    [info] = find_programs(prog_id=pid, code=True, symbols=True)
    functions = json.loads(ours("prog", "dump", "jited", "id", pid, "--json", "--opcodes"))
    assert len(functions) == len(info.jited_func_lens)
    # every byte of the kernel's image decoded, function by function
    for fn, length in zip(functions, info.jited_func_lens):
        assert sum(len(insn["opcodes"]) for insn in fn["insns"]) == length
        assert fn["name"].startswith("bpf_prog_")
    assert sum(info.jited_func_lens) == json.loads(bpftool("-j", "prog", "show", "id", pid).stdout)["bytes_jited"]
    text = ours("prog", "dump", "jited", "id", pid)
    native = [line for line in text.splitlines() if re.match(r"\s*[0-9a-f]+:\t", line)]
    assert len(native) == sum(len(fn["insns"]) for fn in functions)
    theirs = bpftool("prog", "dump", "jited", "id", pid, check=False)
    if theirs.returncode == 0:  # a bpftool with a disassembler: the same instructions, one per line
        assert len([line for line in theirs.stdout.splitlines() if re.match(r"\s*[0-9a-f]+:\t", line)]) == \
            len(native)


# ---- map show / dump -----------------------------------------------------------------------------------------

MAPS = [("xdp_counter.o", "size_hist"), ("xdp_counter.o", "class_stats"), ("tc_classifier.o", "port_class"),
        ("tc_classifier.o", "dscp_class"), ("global_data.o", ".rodata"), ("global_data.o", ".bss")]


@pytest.mark.parametrize("obj,name", MAPS)
def test_map_show_matches_bpftool(loaded, bpftool, obj, name):
    mid = map_id(loaded, obj, name)
    assert ours("map", "show", "id", mid) == bpftool("map", "show", "id", mid).stdout
    mine = json.loads(ours("map", "show", "id", mid, "--json"))
    theirs = json.loads(bpftool("-j", "map", "show", "id", mid).stdout)
    assert set(theirs) - set(mine) <= {"pinned", "pids"}
    assert mine == {k: v for k, v in theirs.items() if k in mine}


@pytest.mark.parametrize("obj,name", MAPS)
def test_map_dump_matches_bpftool(loaded, bpftool, obj, name):
    mid = map_id(loaded, obj, name)
    assert ours("map", "dump", "id", mid) == bpftool("map", "dump", "id", mid).stdout
    assert json.loads(ours("map", "dump", "id", mid, "--json")) == \
        json.loads(bpftool("-j", "map", "dump", "id", mid).stdout)


def test_map_dump_shows_what_was_written(loaded):
    rows = json.loads(ours("map", "dump", "id", map_id(loaded, "xdp_counter.o", "size_hist"), "--json"))
    assert rows[3] == {"key": ["0x03", "0x00", "0x00", "0x00"],
                       "value": [f"0x{b:02x}" for b in struct.pack("<Q", 0x1122334455667788)]}
    rows = json.loads(ours("map", "dump", "id", map_id(loaded, "xdp_counter.o", "class_stats"), "--json"))
    values = rows[2]["values"]
    assert [v["cpu"] for v in values] == list(range(len(values)))
    assert values[0]["value"] == [f"0x{b:02x}" for b in struct.pack("<QQ", 1, 1000)]
    hashed = json.loads(ours("map", "dump", "id", map_id(loaded, "tc_classifier.o", "port_class"), "--json"))
    assert sorted(struct.unpack("<I", bytes(int(b, 16) for b in row["key"]))[0] for row in hashed) == [80, 443, 8080]


# ---- pinned objects ------------------------------------------------------------------------------------------

def test_pinned_program_and_map(loaded, bpftool):
    if not os.path.isdir("/sys/fs/bpf"):
        pytest.skip("no bpffs at /sys/fs/bpf")
    pid, mid = prog_id(loaded, "xdp_counter.o"), map_id(loaded, "xdp_counter.o", "size_hist")
    where = Path("/sys/fs/bpf") / f"bpforge-test-{uuid.uuid4().hex[:8]}"
    where.mkdir()
    try:
        bpftool("prog", "pin", "id", pid, where / "prog")
        bpftool("map", "pin", "id", mid, where / "map")
        assert json.loads(ours("prog", "show", "pinned", where / "prog", "--json"))["id"] == pid
        assert ours("map", "show", "pinned", where / "map") == bpftool("map", "show", "id", mid).stdout
        assert ours("map", "dump", "pinned", where / "map") == bpftool("map", "dump", "id", mid).stdout
        wrong = bpforge("prog", "show", "pinned", where / "map")
        assert wrong.returncode == 2 and len(wrong.stderr.splitlines()) == 1
    finally:
        for pin in ("prog", "map"):
            if (where / pin).exists():
                os.unlink(where / pin)
        where.rmdir()


# ---- the Python API ------------------------------------------------------------------------------------------

def test_python_api(loaded):
    import bpforge

    pid = prog_id(loaded, "xdp_counter.o")
    [info] = bpforge.kernel_programs(prog_id=pid)
    assert info.name == "xdp_count" and info.type_name == "xdp" and len(info.map_ids) == 2
    maps = bpforge.kernel_maps(map_id=info.map_ids[0])
    assert maps[0].id == info.map_ids[0]
    entries = bpforge.kernel_map_entries(map_id(loaded, "xdp_counter.o", "size_hist"))
    assert entries[3].value == struct.pack("<Q", 0x1122334455667788)


# ---- errors and program files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("prog", "show", "id", 4294967295), ("map", "dump", "id", 4294967295),
                                  ("prog", "show", "id"), ("prog", "show", "tag", "1"),
                                  ("prog", "dump", "flat", "id", 1), ("map", "show", "name", "no-such-map-here")])
def test_errors_are_one_line_exit_2(kernel, args):
    result = bpforge(*args)
    assert result.returncode == 2, result.stdout
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_dump_of_a_program_file():
    xlated = bpforge("prog", "dump", "xlated", EXAMPLES / "xdp_counter.o")
    assert xlated.returncode == 0, xlated.stderr
    assert xlated.stdout.startswith("   0: (b4) w3 = 10\n")
    jited = bpforge("prog", "dump", "jited", EXAMPLES / "xdp_counter.o", "--arch", "arm64")
    if "capstone" in jited.stderr:
        pytest.skip(jited.stderr.strip())
    assert jited.returncode == 0, jited.stderr
    assert jited.stdout.startswith("xdp_count: arm64")


# ---- the kernel's spelling, without a kernel --------------------------------------------------------------------

@pytest.mark.parametrize("hexcode,text", [
    ("b703000000000000", "(b7) r3 = 0"),
    ("bf21000000000000", "(bf) r1 = r2"),
    ("7912080000000000", "(79) r2 = *(u64 *)(r1 +8)"),
    ("633afcff00000000", "(63) *(u32 *)(r10 -4) = r3"),
    ("1601 0e00 dd860000", "(16) if w1 == 0x86dd goto pc+14"),
    ("a501 ffff ffffffff", "(a5) if r1 < 0xffffffff goto pc-1"),
    ("dc01000010000000", "(dc) r1 = be16 r1"),
    ("db10000000000000", "(db) lock *(u64 *)(r0 +0) += r1"),
    ("db10000001000000", "(db) r1 = atomic64_fetch_add((u64 *)(r0 +0), r1)"),
    ("8500000001000000", "(85) call bpf_map_lookup_elem#1"),
    ("8510000002000000", "(85) call pc+2"),
    ("0500fbff00000000", "(05) goto pc-5"),
    ("9500000000000000", "(95) exit"),
    ("bf21080000000000", "(bf) r1 = (s8)r2"),
    ("3f21010000000000", "(3f) r1 s/= r2"),
])
def test_kernel_syntax(hexcode, text):
    [(_, insn)] = raw_insns(bytes.fromhex(hexcode.replace(" ", "")))
    assert kernel_text(insn) == text
