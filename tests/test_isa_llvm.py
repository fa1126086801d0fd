"""Our assembler and disassembler against llvm-mc-19 / llvm-objdump-19 on the same text."""

import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpforge.isa import FORMS, encode, format_insn

from conftest import tool
from isa_strategies import any_insn, insn_of


def llvm_assemble(text: str) -> bytes:
    """The .text bytes llvm-mc-19 makes of `text`."""
    mc, objcopy = tool("llvm-mc-19"), tool("llvm-objcopy-19")
    with tempfile.TemporaryDirectory() as tmp:
        src, obj, raw = Path(tmp, "a.s"), Path(tmp, "a.o"), Path(tmp, "a.bin")
        src.write_text(text)
        subprocess.run([mc, "-triple", "bpf", "-filetype=obj", str(src), "-o", str(obj)], check=True,
                       capture_output=True)
        subprocess.run([objcopy, "-O", "binary", "--only-section=.text", str(obj), str(raw)], check=True)
        return raw.read_bytes()


@settings(max_examples=25)
@given(st.lists(any_insn(llvm_only=True), min_size=1, max_size=200))
def test_llvm_mc_encodes_our_text_to_our_bytes(insns):
    text = "".join(f"\t{format_insn(i)}\n" for i in insns)
    ours = encode(insns)
    theirs = llvm_assemble(text)
    if ours != theirs:  # name the first differing instruction
        for i, insn in enumerate(insns):
            mine = encode([insn])
            assert llvm_assemble(f"\t{format_insn(insn)}\n") == mine, format_insn(insn)
    assert ours == theirs


@settings(max_examples=3, suppress_health_check=[HealthCheck.large_base_example, HealthCheck.data_too_large])
@given(st.data())
def test_every_llvm_form_at_once(data):
    insns = [data.draw(insn_of(form, llvm_only=True)) for form in FORMS if form.llvm for _ in range(4)]
    assert llvm_assemble("".join(f"\t{format_insn(i)}\n" for i in insns)) == encode(insns)
