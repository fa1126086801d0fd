"""Writing objects back: unchanged round trips, edits that insert and remove instructions (checked against
the reader, llvm-objdump and the kernel's loader), the edit helpers' refusals, and build_object."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpforge.elf import (SectionEdit, build_object, insert_insns, read_object, remove_insns, splice,
                         write_object)
from bpforge.elf.edit import edited_view
from bpforge.elf.model import ProgramSection
from bpforge.errors import ElfError
from bpforge.isa import Insn, branch_target, encode, parse, slot_starts
from test_elf_support import (bpffs, bpftool_load, example_ids, example_objects, features_object,  # noqa: F401
                              last_lines, objdump)

OBJECTS = example_objects()
NOP = Insn.make("ja", off=0)  # `goto +0`: a no-op the verifier accepts anywhere, unlike `rX = rX` on a dead rX


def with_nops(obj, every: int = 3, sections=None):
    """Edits inserting a no-op before every `every`-th instruction of each (chosen) section."""
    return {s.name: insert_insns(s, {k: [NOP] for k in range(0, len(s.insns), every)})
            for s in obj.sections if sections is None or s.name in sections}


def without(obj, edits):
    """Edits of the re-read object removing exactly the instructions `edits` inserted."""
    return {name: remove_insns(obj.section(name), [j for j, o in enumerate(e.origins) if o is None])
            for name, e in edits.items()}


@pytest.mark.parametrize("path", OBJECTS, ids=example_ids())
def test_unchanged_round_trip_is_byte_identical(path: Path):
    raw = path.read_bytes()
    assert write_object(read_object(path)) == raw
    assert write_object(read_object(path), {}) == raw


def test_features_round_trip(features_object):  # noqa: F811
    assert write_object(read_object(features_object)) == features_object.read_bytes()


def _targets(insns):
    """Index each pc-relative instruction refers to (None for others)."""
    starts = slot_starts(insns)
    index = {slot: i for i, slot in enumerate(starts)}
    return [index.get(branch_target(insn, slot)) if insn.form.target_field else None
            for insn, slot in zip(insns, starts)]


def _same_code(old, new, edit):
    """`new` is `old` with instructions inserted: same instructions, jumps to where their targets went."""
    old_targets, new_targets = _targets(old.insns), _targets(new.insns)
    kept = [(j, o) for j, o in enumerate(edit.origins) if o is not None]
    assert [o for _, o in kept] == list(range(len(old.insns)))
    for j, o in kept:
        field = old.insns[o].form.target_field
        if field and o not in old.relocations:
            assert new_targets[j] == edit.positions[old_targets[o]]
            assert new.insns[j].replace(**{field: 0}) == old.insns[o].replace(**{field: 0})
        else:
            assert new.insns[j] == old.insns[o] or o in old.relocations


def _check_edited(original, edited_bytes, edits, tmp_path: Path, name: str):
    """The edited object reads back as the original plus the inserted instructions."""
    edited = read_object(edited_bytes, filename=name)
    for sec in original.sections:
        new = edited.section(sec.name)
        edit = edits.get(sec.name)
        if edit is None:  # untouched, but for the imm of calls into an edited section
            assert [i for k, i in enumerate(new.insns) if k not in sec.relocations] == \
                [i for k, i in enumerate(sec.insns) if k not in sec.relocations]
            continue
        _same_code(sec, new, edit)
        assert sorted(new.functions.values()) == sorted(sec.functions.values())
        for start, fname in new.functions.items():  # a function starts at its first insertion or first insn
            old_start = [k for k, v in sec.functions.items() if v == fname][0]
            assert edit.positions[old_start] == start
    # Relocations: same symbols, kinds and targets, at the instructions they came from.
    before = {(r.type, r.symbol, r.kind, r.target, r.offset if r.kind == "data" else 0, s.name, i)
              for s in original.sections for i, r in s.relocations.items()}
    after = set()
    for s in edited.sections:
        edit = edits.get(s.name)
        for i, r in s.relocations.items():
            after.add((r.type, r.symbol, r.kind, r.target, r.offset if r.kind == "data" else 0, s.name,
                       edit.origins[i] if edit else i))
    assert after == before
    if original.btf_ext is not None:
        for s in edited.sections:
            infos = edited.btf_ext.func_info.get(s.name, [])
            assert {f.insn: f.name for f in infos} == s.functions
            lines = [li.insn for li in edited.btf_ext.line_info.get(s.name, [])]
            assert lines == sorted(set(lines)) and set(s.functions) <= set(lines)
    out = tmp_path / name
    out.write_bytes(edited_bytes)
    if shutil.which("llvm-objdump-19"):
        dump = objdump(out)
        for s in edited.sections:
            assert [encode([i]) for i in s.insns] == [raw for _, raw in dump[s.name]["insns"]]
            assert s.functions == dump[s.name]["symbols"]
            starts = slot_starts(s.insns)
            assert {(starts[i] * 8, r.type, r.symbol) for i, r in s.relocations.items()} == set(dump[s.name]["relocs"])
    return out


@pytest.mark.parametrize("path", OBJECTS, ids=example_ids())
def test_insert_then_remove_no_ops(path: Path, tmp_path: Path):
    original = read_object(path)
    edits = with_nops(original)
    edited_bytes = write_object(original, edits)
    _check_edited(original, edited_bytes, edits, tmp_path, path.stem + ".nops.o")
    edited = read_object(edited_bytes)
    restored = write_object(edited, without(edited, edits))
    assert restored == path.read_bytes()


def _load_or_skip_original(path: Path) -> None:
    ok, log = bpftool_load(path)
    if not ok:
        pytest.skip(f"the original {path.name} does not load either: {last_lines(log, 2)}")


@pytest.mark.parametrize("path", OBJECTS, ids=example_ids())
def test_edited_examples_load_in_the_kernel(path: Path, tmp_path: Path, bpffs):  # noqa: F811
    _load_or_skip_original(path)
    original = read_object(path)
    edits = with_nops(original, every=4)
    out = _check_edited(original, write_object(original, edits), edits, tmp_path, path.stem + ".nops.o")
    ok, log = bpftool_load(out)
    assert ok, last_lines(log, 12)
    # ... and shortened again: the no-ops removed from the edited object, which then loads as well.
    edited = read_object(out)
    shorter = tmp_path / (path.stem + ".shorter.o")
    shorter.write_bytes(write_object(edited, without(edited, edits)))
    ok, log = bpftool_load(shorter)
    assert ok, last_lines(log, 12)


def test_bpf2bpf_text_edit_moves_calls_from_other_sections(tmp_path: Path, bpffs):  # noqa: F811
    path = Path(__file__).parent.parent / "examples" / "obj" / "bpf2bpf_loop.o"
    original = read_object(path)
    assert any(r.kind == "call" for s in original.sections if s.name != ".text" for r in s.relocations.values())
    text = original.section(".text")
    edits = {".text": insert_insns(text, {k: [NOP, NOP] for k in sorted(text.functions)[1:]})}  # between functions
    edited_bytes = write_object(original, edits)
    out = _check_edited(original, edited_bytes, edits, tmp_path, "bpf2bpf.o")
    ok, log = bpftool_load(out)
    assert ok, last_lines(log, 12)
    # The shorter object (no-ops removed from .text again, while xdp's calls point into it) loads too.
    edited = read_object(out)
    back = tmp_path / "bpf2bpf.back.o"
    back.write_bytes(write_object(edited, without(edited, edits)))
    assert back.read_bytes() == path.read_bytes()
    ok, log = bpftool_load(back)
    assert ok, last_lines(log, 12)


def test_global_data_edit_loads(tmp_path: Path, bpffs):  # noqa: F811
    path = Path(__file__).parent.parent / "examples" / "obj" / "global_data.o"
    original = read_object(path)
    xdp = original.section("xdp")
    lddws = [i for i, insn in enumerate(xdp.insns) if insn.form.kind == "lddw"]
    edits = {"xdp": insert_insns(xdp, {i: [NOP] for i in lddws})}  # right before every data reference
    out = _check_edited(original, write_object(original, edits), edits, tmp_path, "global_data.nops.o")
    ok, log = bpftool_load(out)
    assert ok, last_lines(log, 12)
    edited = read_object(out)
    assert edited.data == original.data and edited.maps == original.maps


def test_features_object_edits(features_object, tmp_path: Path, bpffs):  # noqa: F811
    """Section-symbol calls, function-symbol calls, a callback address and CO-RE records across edits."""
    original = read_object(features_object)
    _load_or_skip_original(features_object)
    edits = with_nops(original, every=2)
    out = _check_edited(original, write_object(original, edits), edits, tmp_path, "features.nops.o")
    edited = read_object(out)
    assert [c.insn for c in edited.btf_ext.core_relos["xdp"]] == \
        [edits["xdp"].origins.index(c.insn) for c in original.btf_ext.core_relos["xdp"]]
    ok, log = bpftool_load(out)
    assert ok, last_lines(log, 12)
    linked = edited.linked("main_prog")
    assert list(linked.functions.values()) == ["main_prog", "cb", "sub1", "sub2", "gsub"]
    assert write_object(edited, without(edited, edits)) == features_object.read_bytes()


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_insertions_round_trip(features_object, data):  # noqa: F811
    original = read_object(features_object)
    edits = {}
    for sec in original.sections:
        # (not at the very end: `goto +0` there would jump out of the section)
        where = data.draw(st.lists(st.integers(0, len(sec.insns) - 1), max_size=6, unique=True), label=sec.name)
        edits[sec.name] = insert_insns(sec, {k: [NOP] * data.draw(st.integers(1, 3)) for k in where})
    edited = read_object(write_object(original, edits))
    assert write_object(edited, without(edited, edits)) == features_object.read_bytes()


# ---- edit helpers ------------------------------------------------------------------------------------

def _section(text: str) -> ProgramSection:
    sec = parse(text).sections[0]
    return ProgramSection(sec.name, 1, sec.insns, {i: n for n, i in sec.functions.items()} or {0: sec.name})


def test_remove_retargets_jumps_and_local_calls():
    sec = _section("""
        .text
    f:
        if r1 == 0 goto skip
        r0 = 1
        r0 = 2
    skip:
        call g
        exit
    g:
        r0 = 3
        exit
    """)
    edit = remove_insns(sec, [1, 2])
    view = edited_view(sec, edit)
    assert [str(i) for i in view.insns] == ["if r1 == 0 goto +0", "call pc+1", "exit", "r0 = 3", "exit"]
    assert view.functions == {0: "f", 3: "g"}
    assert edit.positions == [0, 1, 1, 1, 2, 3, 4, 5]


def test_removed_jump_target_moves_to_its_successor_or_is_refused():
    sec = _section(".text\nf:\n if r1 == 0 goto out\n r0 = 1\nout:\n r0 = 2\n exit\n")
    edit = remove_insns(sec, [2])  # the target; its successor (exit) takes the jumps
    assert str(edit.insns[0]) == "if r1 == 0 goto +1"
    with pytest.raises(ElfError, match="target of the jeq_imm at slot 0, is removed and has no successor") as err:
        remove_insns(sec, [2, 3])
    assert err.value.where.section == ".text" and err.value.where.insn == 0


def test_successor_never_crosses_into_the_next_function():
    sec = _section(".text\n.globl g\nf:\n if r1 == 0 goto end\n r0 = 1\nend:\n exit\ng:\n r0 = 3\n exit\n")
    with pytest.raises(ElfError, match="no successor in its function"):
        remove_insns(sec, [2])


def test_jump_offset_overflow_is_refused():
    far = [Insn.make("ja", off=32767)] + [NOP] * 32767 + [Insn.make("exit")]
    sec = ProgramSection("xdp", 1, far, {0: "f"})
    with pytest.raises(ElfError, match="does not fit in the 16-bit off field"):
        insert_insns(sec, 5, [NOP])
    assert len(insert_insns(sec, 32768, [NOP]).insns) == 32770  # inserting at the target itself is fine


def test_splice_replaces_a_range():
    sec = _section(".text\nf:\n if r1 == 0 goto b\n r0 = 1\nb:\n r0 = 2\n r0 += 1\n exit\n")
    edit = splice(sec, 2, 4, [Insn.make("mov64_imm", dst=0, imm=3)])
    assert [str(i) for i in edit.insns] == ["if r1 == 0 goto +1", "r0 = 1", "r0 = 3", "exit"]
    assert edit.origins == [0, 1, None, 4]
    with pytest.raises(ElfError, match="is removed and has no successor"):
        splice(_section(".text\nf:\n goto c\n r0 = 1\nc:\n exit\n"), 1, 3, [Insn.make("exit")])


def test_writer_refuses_bad_edits(features_object):  # noqa: F811
    obj = read_object(features_object)
    xdp = obj.section("xdp")
    with pytest.raises(ElfError, match="no program section 'nope'") as err:
        write_object(obj, {"nope": SectionEdit("nope", [], [])})
    assert err.value.where.file == str(features_object)
    with pytest.raises(ElfError, match="origins"):
        write_object(obj, {"xdp": SectionEdit("xdp", list(xdp.insns), [])})
    with pytest.raises(ElfError, match="is removed entirely|start or end on a removed"):
        write_object(obj, {"xdp": remove_insns(xdp, range(0, 2))})  # all of `tail`
    # A function other sections call must not vanish: removing all of sub2 breaks sub1's local calls.
    text = obj.section(".text")
    start = [k for k, v in text.functions.items() if v == "sub2"][0]
    with pytest.raises(ElfError):
        write_object(obj, {".text": remove_insns(text, range(start, len(text.insns)))})
    # A relocation may only ride on an instruction of its kind.
    lddw = next(i for i, r in xdp.relocations.items() if r.kind == "map")
    bad = list(xdp.insns)
    bad[lddw] = Insn.make("mov64_imm", dst=1, imm=0)
    with pytest.raises(ElfError, match="R_BPF_64_64 relocation moved onto a mov64_imm"):
        write_object(obj, {"xdp": SectionEdit("xdp", bad, list(range(len(bad))))})


def test_writer_checks_jump_targets(features_object):  # noqa: F811
    obj = read_object(features_object)
    xdp = obj.section("xdp")
    insns = list(xdp.insns) + [Insn.make("ja", off=5)]
    with pytest.raises(ElfError, match="jump out of range"):
        write_object(obj, {"xdp": SectionEdit("xdp", insns, list(range(len(xdp.insns))) + [None])})


# ---- build_object ------------------------------------------------------------------------------------

XDP_ASM = """
    .section xdp
    .globl prog
prog:
    r2 = *(u32 *)(r1 + 0)
    r3 = *(u32 *)(r1 + 4)
    r0 = 2
    r4 = r2
    r4 += 14
    if r4 > r3 goto out
    call helper_fn
    r0 = 2
out:
    exit

    .text
helper_fn:
    r0 = 1
    exit
"""


def test_build_object_reads_back_and_disassembles(tmp_path: Path):
    data = build_object(parse(XDP_ASM))
    obj = read_object(data, filename="built.o")
    assert [(p.name, p.section, len(p.insns)) for p in obj.programs] == [("prog", "xdp", 9)]
    assert [p.name for p in obj.subprograms] == ["helper_fn"]
    assert obj.license == "GPL" and obj.maps == [] and obj.btf is None
    (call,) = obj.section("xdp").relocations.values()
    assert (call.kind, call.target, call.type) == ("call", "helper_fn", "R_BPF_64_32")
    assert write_object(obj) == data
    out = tmp_path / "built.o"
    out.write_bytes(data)
    if shutil.which("llvm-objdump-19"):
        dump = objdump(out)
        assert [raw for _, raw in dump["xdp"]["insns"]] == [encode([i]) for i in obj.section("xdp").insns]
        assert dump["xdp"]["symbols"] == {0: "prog"} and dump[".text"]["symbols"] == {0: "helper_fn"}
        assert dump["xdp"]["relocs"] == [(48, "R_BPF_64_32", "helper_fn")]


def test_build_object_keeps_undefined_symbols():
    obj = read_object(build_object(parse(".section xdp\nf:\n r1 = my_map ll\n r0 = 0\n exit\n"), license="MIT"))
    (reloc,) = obj.section("xdp").relocations.values()
    assert (reloc.kind, reloc.target) == ("extern", "my_map")
    assert obj.license == "MIT"


def test_built_object_loads(tmp_path: Path, bpffs):  # noqa: F811
    out = tmp_path / "built.o"
    out.write_bytes(build_object(parse(XDP_ASM)))
    ok, log = bpftool_load(out)
    assert ok, last_lines(log, 12)


def test_built_example_asm_loads(tmp_path: Path, bpffs):  # noqa: F811
    source = Path(__file__).parent.parent / "examples" / "asm" / "xdp_pass.s"
    out = tmp_path / "xdp_pass.o"
    out.write_bytes(build_object(parse(source.read_text(), filename=str(source))))
    ok, log = bpftool_load(out)
    assert ok, last_lines(log, 12)
    reference = read_object(Path(__file__).parent.parent / "examples" / "obj" / "asm_xdp_pass.o")
    assert read_object(out).section("xdp").insns == reference.section("xdp").insns


@pytest.mark.parametrize("source", sorted((Path(__file__).parent.parent / "examples" / "asm").glob("*.s")),
                         ids=lambda p: p.name)
def test_build_object_agrees_with_llvm_mc(source: Path):
    reference = Path(__file__).parent.parent / "examples" / "obj" / f"asm_{source.stem}.o"
    if not reference.exists():
        pytest.skip(f"{reference.name} not built")
    ours, theirs = read_object(build_object(parse(source.read_text()))), read_object(reference)
    assert [(s.name, s.insns, s.functions) for s in ours.sections] == \
        [(s.name, s.insns, s.functions) for s in theirs.sections]
    assert ours.license == (theirs.license or "GPL")
