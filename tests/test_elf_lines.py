"""elf/lines.py: the source line of every instruction, as the kernel's verifier log cites it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bpforge.elf import read_object
from bpforge.elf.lines import source_lines, where
from bpforge.elf.build import build_object
from bpforge.isa import parse, slot_starts
from bpforge.kernel.program import verify_linked

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "obj"
_LINE = re.compile(r"^; .* @ (\S+:\d+)$")
_INSN = re.compile(r"^(\d+): \(")


def _objects():
    return sorted(p for p in EXAMPLES.glob("*.o") if not p.name.startswith("asm_"))


def _kernel_lines(log: str) -> dict[int, str]:
    """slot -> file:line, for the instructions the log prints right after a source line."""
    cited, pending = {}, None
    for line in log.splitlines():
        match = _LINE.match(line)
        if match:
            pending = match.group(1)
            continue
        match = _INSN.match(line)
        if match and pending is not None:
            cited.setdefault(int(match.group(1)), pending)
        pending = None
    return cited


@pytest.mark.parametrize("path", _objects(), ids=lambda p: p.name)
def test_lines_are_the_ones_the_kernel_cites(kernel, path):
    obj = read_object(path)
    if obj.btf_ext is None:
        pytest.skip(f"{path.name} has no .BTF.ext")
    for program in obj.programs:
        linked = obj.linked(program.name)
        verdict = verify_linked(linked, obj, log_level=2)
        if not verdict.btf:
            pytest.skip(f"the kernel took {path.name} without its BTF: {verdict.btf_error}")
        cited = _kernel_lines(verdict.log)
        assert cited, "the kernel's log cites no source line"
        ours = source_lines(obj, linked)
        index_of = {slot: i for i, slot in enumerate(slot_starts(linked.insns))}
        for slot, expected in cited.items():
            assert where(ours[index_of[slot]]) == expected, (program.name, slot)


def test_objects_without_line_info_have_no_lines(tmp_path):
    path = tmp_path / "p.o"  # objects built from assembly carry no .BTF.ext
    path.write_bytes(build_object(parse('.section "xdp"\nr0 = 2\nexit\n')))
    obj = read_object(path)
    assert source_lines(obj, obj.linked()) == [None, None]
