"""The public Python API (`bpforge.load` -> `Program`): every input format loads; the engines agree with each
other and with the kernel; disasm and info are exactly what the command prints; bad input raises the library's
error with its location; the README's example runs; importing the package stays light."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bpforge
from bpforge.cli import main
from bpforge.errors import DecodeError
from bpforge.formats import format_words
from bpforge.isa import assemble, encode

from conftest import EXAMPLES, ROOT

K2 = ROOT.parent / "shared" / "bench" / "k2"
PROGRAM = "r0 = 1\nr1 = 2\nif r1 > 3 goto +1\nr0 += r1\nexit\n"  # returns 3
IPV4_TCP = bytes.fromhex("000000000000" "020000000001" "0800" "4500003200010000400600000a0000020a000001"
                         "3039005000000001000000005002200000000000" + "00" * 10)


def _input(kind: str, tmp_path: Path) -> tuple[Path, dict]:
    """A program file of each kind, with the options it loads with."""
    if kind == "elf":
        return EXAMPLES / "obj" / "xdp_counter.o", {}
    if kind == "asm":
        return EXAMPLES / "asm" / "mem_sum.s", {"prog_type": "mem"}
    if kind == "k2":
        if not (K2 / "xdp1.insns").exists():
            pytest.skip(f"K2 benchmarks not found in {K2}")
        return K2 / "xdp1.insns", {}
    path = tmp_path / ("p.words" if kind == "words" else "p.bin")
    insns = assemble(PROGRAM)
    if kind == "words":
        path.write_text(format_words(insns))
    else:
        path.write_bytes(encode(insns))
    return path, {}


KINDS = ["elf", "asm", "raw", "words", "k2"]
EXPECTED = {  # name, section, prog_type, instructions (an lddw is one)
    "elf": ("xdp_count", "xdp", "xdp", 74),
    "asm": ("mem_sum", ".text", "mem", 12),
    "raw": ("p", None, "xdp", 5),
    "words": ("p", None, "xdp", 5),
    "k2": ("xdp1", None, "xdp", 60),
}


def cli(capsys, *args) -> tuple[int, str, str]:
    """The command, in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def _same_run(report) -> dict:
    """A run report without its time, which differs from run to run."""
    return {k: v for k, v in report.as_json().items() if k != "ns_per_run"}


@pytest.mark.parametrize("kind", KINDS)
def test_load_every_format(kind, tmp_path):
    path, options = _input(kind, tmp_path)
    prog = bpforge.load(path, **options)
    assert isinstance(prog, bpforge.Program) and prog.format == kind and prog.filename == str(path)
    assert (prog.name, prog.section, prog.prog_type, len(prog.insns)) == EXPECTED[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_interp_and_fast_agree(kind, tmp_path):
    path, options = _input(kind, tmp_path)
    prog = bpforge.load(path, **options)
    data = bytes([1, 2, 3, 4, 5]) if kind == "asm" else IPV4_TCP
    interp = prog.run(data, engine="interp", dump_maps=True)
    fast = prog.run(data, engine="fast", dump_maps=True)
    assert interp.engine == "interp" and fast.engine == "fast"
    assert {**_same_run(interp), "engine": None} == {**_same_run(fast), "engine": None}
    if kind == "asm":
        assert interp.retval == 15  # the sum of the bytes
    if kind in ("raw", "words"):
        assert interp.retval == 3


def _per_cpu_totals(maps: list[dict]) -> dict:
    """Each map's entries, per-CPU values summed over the CPUs (a test run lands on whichever CPU it runs on)."""
    from bpforge.kernel.maps import possible_cpus

    cpus = possible_cpus()
    totals = {}
    for m in maps:
        entries = {}
        for e in m["entries"]:
            value = bytes.fromhex(e["value"])
            if m["type"].startswith("percpu") or m["type"].startswith("lru_percpu"):
                width = len(value) // cpus
                words = [sum(int.from_bytes(value[c * width + i:c * width + i + 8], "little") for c in range(cpus))
                         for i in range(0, width, 8)]
                value = tuple(words)
            entries[e["key"]] = value
        totals[m["name"]] = entries
    return totals


@pytest.mark.parametrize("kind", ["elf", "raw", "k2"])
def test_kernel_agrees_with_the_vm(kind, tmp_path, kernel):
    path, options = _input(kind, tmp_path)
    prog = bpforge.load(path, **options)
    for repeat in (1, 3):  # maps carry over from run to run of one call, as test_run's repeat does
        ours = prog.run(IPV4_TCP, engine="interp", repeat=repeat, dump_maps=True)
        theirs = prog.run(IPV4_TCP, engine="kernel", repeat=repeat, dump_maps=True)
        assert theirs.engine == "kernel" and theirs.repeat == repeat
        assert (ours.retval, ours.data_out, ours.ctx_out) == (theirs.retval, theirs.data_out, theirs.ctx_out)
        assert _per_cpu_totals(ours.maps) == _per_cpu_totals(theirs.maps)
        if kind != "raw":
            assert any(m["entries"] for m in theirs.maps)


@pytest.mark.parametrize("kind", KINDS)
def test_disasm_and_info_are_what_the_command_prints(kind, tmp_path, capsys):
    path, options = _input(kind, tmp_path)
    flags = ["--type", options["prog_type"]] if "prog_type" in options else []
    prog = bpforge.load(path, **options)
    assert cli(capsys, "disasm", path, *flags) == (0, prog.disasm(), "")
    assert cli(capsys, "disasm", path, "--bytes", *flags) == (0, prog.disasm(show_bytes=True), "")
    code, out, _ = cli(capsys, "disasm", path, "--json", *flags)
    assert code == 0 and json.loads(out) == prog.disasm_json()
    info = prog.info()
    assert cli(capsys, "info", path, *flags) == (0, info.text(), "")
    code, out, _ = cli(capsys, "info", path, "--json", *flags)
    assert code == 0 and json.loads(out) == info.as_json()
    assert info.format == kind and info.file == str(path)


def test_section_and_type_options(capsys):
    path = EXAMPLES / "obj" / "bpf2bpf_loop.o"
    whole = bpforge.load(path)
    assert "Disassembly of section .text:" in whole.disasm()
    only = bpforge.load(path, section="xdp")
    assert "Disassembly of section .text:" not in only.disasm() and "Disassembly of section xdp:" in only.disasm()
    assert cli(capsys, "disasm", path, "--section", "xdp")[1] == only.disasm()
    # insns: the program as libbpf loads it, its .text subprograms appended (calls pointed at them)
    own = next(s for s in only.loaded.sections if s.name == "xdp").insns
    assert len(only.insns) > len(own) and [i.opcode for i in only.insns[:len(own)]] == [i.opcode for i in own]
    typed = bpforge.load(path, prog_type="tc")
    assert typed.prog_type == "sched_cls"
    assert {p["type"] for p in typed.info().programs} == {"sched_cls"}
    assert cli(capsys, "info", path, "--type", "tc", "--json")[1].count('"sched_cls"') == len(typed.info().programs)


# ---- bad input: the library raises with the location; the command prints one line --------------------------

def test_bad_bytecode_names_file_and_insn(tmp_path, capsys):
    path = tmp_path / "opcode.bin"
    path.write_bytes(encode(assemble("r0 = 0")) + bytes([0xFF]) + bytes(7))  # opcode 0xff in slot 1
    with pytest.raises(DecodeError) as err:
        bpforge.load(path)
    assert (err.value.where.file, err.value.where.insn) == (str(path), 1) and "unknown opcode" in err.value.message
    code, out, stderr = cli(capsys, "disasm", path)
    assert (code, out) == (2, "") and stderr == f"bpforge: {err.value}\n" and "Traceback" not in stderr


def test_bad_object_names_section_and_insn(tmp_path):
    data = bytearray((EXAMPLES / "obj" / "xdp_counter.o").read_bytes())
    code = encode(bpforge.load(EXAMPLES / "obj" / "xdp_counter.o").loaded.sections[0].insns)
    offset = data.find(code)
    assert offset > 0 and data.find(code, offset + 1) == -1
    data[offset + 3 * 8] = 0xFF  # the opcode of slot 3
    path = tmp_path / "broken.o"
    path.write_bytes(bytes(data))
    with pytest.raises(bpforge.BpforgeError) as err:
        bpforge.load(path)
    where = err.value.where
    assert (where.file, where.section, where.insn) == (str(path), "xdp", 3) and "0xff" in err.value.message


def test_bad_assembly_names_line_and_column(tmp_path):
    path = tmp_path / "bad.s"
    path.write_text("r0 = 1\n  r0 +== 2\nexit\n")
    with pytest.raises(bpforge.BpforgeError) as err:
        bpforge.load(path)
    assert (err.value.where.file, err.value.where.line, err.value.where.col) == (str(path), 2, 3)


def test_run_time_fault_names_file_and_insn(tmp_path, capsys):
    path = tmp_path / "oob.s"
    path.write_text("r0 = 1\nr0 = *(u64 *)(r1 + 100)\nexit\n")
    prog = bpforge.load(path, prog_type="mem")
    for engine in ("interp", "fast"):
        with pytest.raises(bpforge.BpforgeError) as err:
            prog.run(b"\0", engine=engine)
        assert (err.value.where.file, err.value.where.insn) == (str(path), 1), err.value
    code, out, stderr = cli(capsys, "run", path, "--type", "mem", "--data", "00")
    assert (code, out) == (2, "") and len(stderr.splitlines()) == 1 and "insn 1" in stderr


def test_bad_run_arguments_raise_the_library_error():
    prog = bpforge.load(EXAMPLES / "asm" / "mem_sum.s", prog_type="mem")
    for options, words in [({"engine": "gpu"}, "unknown engine"), ({"repeat": 0}, "between 1 and"),
                           ({"engine": "kernel"}, "only in the VM engines"),
                           ({"preload": {"nomap": []}}, "no map named 'nomap'")]:
        with pytest.raises(bpforge.BpforgeError, match=words) as err:
            prog.run(b"\1", **options)
        assert err.value.where.file == prog.filename
    assert prog.run(bytearray(b"\1\2")).retval == prog.run(memoryview(b"\1\2")).retval == 3
    for wrong in (5, "0102"):  # not bytes: a TypeError, never a packet of five zeros
        with pytest.raises(TypeError):
            prog.run(wrong)


# ---- the README's example and the cost of `import bpforge` ---------------------------------------------------

def _readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    part = text[text.index("\n## Python API"):]
    part = part[:part.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", part, re.DOTALL)


def test_readme_python_example_runs(monkeypatch, capsys):
    blocks = _readme_python_blocks()
    assert blocks, "the README's Python API part has no ```python block"
    monkeypatch.chdir(ROOT)  # the example names files relative to the repository
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})


def test_import_is_light():
    """`import bpforge` (which every `import bpforge.isa` runs first) loads no reader, VM or kernel backend;
    `bpforge.load` brings in the readers, not the VM's fast tier or the kernel backend (they come with a run)."""
    code = ("import json, sys, bpforge\n"
            "before = [m for m in sys.modules if m.startswith('bpforge.')]\n"
            "bpforge.load(sys.argv[1])\n"
            "print(json.dumps([before, [m for m in sys.modules if m.startswith('bpforge.')]]))\n")
    out = subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "obj" / "xdp_counter.o")],
                         capture_output=True, text=True, check=True).stdout
    before, after = json.loads(out)
    heavy = ("bpforge.api", "bpforge.formats", "bpforge.elf", "bpforge.isa", "bpforge.vm", "bpforge.kernel")
    assert not [m for m in before if m.startswith(heavy)]
    assert "bpforge.formats" in after and not [m for m in after if m.startswith(("bpforge.vm", "bpforge.kernel"))]


def test_the_offload_marker_survives_the_offload_package_being_imported():
    # `bpforge.offload` is both the handler marker and, once imported, the offload package: both mark.
    import bpforge
    import bpforge.offload.check  # noqa: F401 - binds bpforge.offload to the package

    @bpforge.offload(hook="xdp", port=11211)
    def handle(p: bytes):
        return p

    assert handle(b"x") == b"x" and handle.__bpforge_offload__.port == 11211
