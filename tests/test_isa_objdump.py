"""Every example object: our disassembly says what llvm-objdump-19 says, and llvm-objdump's own listing
(bytes, text and relocations) reassembles with our assembler to the very bytes it shows."""

import os
import re
import subprocess

import pytest

from bpforge.isa import decode, encode, format_insn, parse

from conftest import EXAMPLE_OBJECTS, EXAMPLES, tool

_LINE = re.compile(r"^\s*(\d+):\t((?:[0-9a-f]{2} ){7}[0-9a-f]{2}(?: (?:[0-9a-f]{2} ){7}[0-9a-f]{2})?)\s+(.*)$")


def normalise(text: str) -> str:
    """Spelling differences that carry no meaning: hex vs decimal, jump annotations, alu32 register names in
    memory operands, and our `call pc-N` for what llvm prints as `call -N` (a local call)."""
    text = re.sub(r"\s*<[^<>]*>\s*$", "", text)
    text = re.sub(r"(-?)0x([0-9a-f]+)", lambda m: str(int(m.group(1) + m.group(2), 16)), text)
    text = text.replace("call pc", "call ").replace("call +", "call ")
    if "*(" in text or "load_acquire" in text:
        text = re.sub(r"\bw(\d+)", r"r\1", text)
    return " ".join(text.split())


def section_bytes(listing: str) -> dict[str, bytes]:
    """The code bytes llvm-objdump shows, per section."""
    code: dict[str, bytes] = {}
    section = None
    for line in listing.splitlines():
        if line.startswith("Disassembly of section "):
            section = line.split()[-1].rstrip(":")
        elif m := _LINE.match(line):
            code[section] = code.get(section, b"") + bytes.fromhex(m.group(2).replace(" ", ""))
    return code


def objdump(path, *mattr: str) -> str:
    return subprocess.run([tool("llvm-objdump-19"), "-d", "-r", *mattr, str(path)], check=True,
                          capture_output=True, text=True).stdout


@pytest.mark.parametrize("mattr", [(), ("--mattr=+alu32",)], ids=["default", "alu32"])
@pytest.mark.parametrize("path", EXAMPLE_OBJECTS, ids=[p.name for p in EXAMPLE_OBJECTS])
def test_disassembly_matches_llvm_objdump(path, mattr):
    checked = 0
    for line in objdump(path, *mattr).splitlines():
        m = _LINE.match(line)
        if not m or m.group(3) == "<unknown>":  # llvm without alu32 has no text for 32-bit atomics
            continue
        raw = bytes.fromhex(m.group(2).replace(" ", ""))
        (insn,) = decode(raw)
        assert normalise(format_insn(insn)) == normalise(m.group(3)), f"slot {m.group(1)}: {line}"
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("path", EXAMPLE_OBJECTS, ids=[p.name for p in EXAMPLE_OBJECTS])
def test_llvm_objdump_listing_reassembles_byte_for_byte(path):
    listing = objdump(path, "--mattr=+alu32")
    program = parse(listing, filename=str(path))
    expected = {name: [encode([i]) for i in decode(code)] for name, code in section_bytes(listing).items()}
    assert [s.name for s in program.sections] == list(expected)
    for sec in program.sections:
        relocated = {r.insn for r in sec.relocations}
        ours = [encode([insn]) for insn in sec.insns]
        assert len(ours) == len(expected[sec.name])
        for index, (mine, theirs) in enumerate(zip(ours, expected[sec.name])):
            if theirs[:2] == b"\x85\x10" and index not in relocated:
                # llvm prints a bpf-to-bpf call it resolved itself exactly like a helper call ("call 0x36"):
                # the text has lost src_reg; only that field may differ.
                assert mine == theirs[:1] + b"\x00" + theirs[2:]
                continue
            assert mine == theirs, f"{sec.name} insn {index}: {format_insn(sec.insns[index])}"
    assert sum(len(s.relocations) for s in program.sections) == listing.count("R_BPF_")


SOURCES = sorted(EXAMPLES.glob("*.c"))


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_clang_assembly_output_assembles_to_the_object_code(source, tmp_path):
    """`clang -S` text (directives, .L labels, `r2 = w2` zero extensions) assembles to what clang -c emits,
    except bpf-to-bpf call offsets, which we resolve where clang leaves relocations."""
    clang = tool("clang-19")
    include = f"-I/usr/include/{os.uname().machine}-linux-gnu"
    flags = ["-O2", "-g", "-target", "bpf", "-mcpu=v3", include, "-fdebug-prefix-map=" + str(EXAMPLES) + "=."]
    subprocess.run([clang, *flags, "-S", str(source), "-o", str(tmp_path / "a.s")], check=True, cwd=EXAMPLES)
    program = parse((tmp_path / "a.s").read_text(), filename="a.s")
    listing = objdump(EXAMPLES / "obj" / source.with_suffix(".o").name, "--mattr=+alu32")
    reference = {s.name: s for s in parse(listing).sections}
    code = section_bytes(listing)
    assert [s.name for s in program.sections] == list(reference)
    for sec in program.sections:
        theirs_all = decode(code[sec.name])
        assert len(sec.insns) == len(theirs_all)
        for mine, theirs in zip(sec.insns, theirs_all):
            if theirs.form.name != "call_local":
                assert mine == theirs, f"{sec.name}: {format_insn(mine)} != {format_insn(theirs)}"
        lddw_relocated = {r.insn for r in sec.relocations if r.type == "R_BPF_64_64"}
        assert lddw_relocated == {r.insn for r in reference[sec.name].relocations if r.type == "R_BPF_64_64"}
