"""Optimized programs written back really shorter: transformations tracked through rewrites, and the ELF /
raw / asm / K2 writers (relocations, symbol sizes, line info kept on the surviving instructions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import EXAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st

from bpforge.elf import read_object
from bpforge.elf.lines import source_lines
from bpforge.errors import BpforgeError
from bpforge.formats import load_program
from bpforge.isa import assemble, slot_starts
from bpforge.opt.output import default_format, editable, original_insns, write_optimized
from bpforge.opt.rewrite import Rewrite
from bpforge.opt.track import Transformation, apply_rewrites
from bpforge.verifier.window import replace_window


def one_by_one(insns, rewrites):
    """Rewrites spliced in from the last to the first (what the old `rewrite.apply` did)."""
    out = list(insns)
    for r in sorted(rewrites, key=lambda r: r.start, reverse=True):
        out = replace_window(out, r.start, r.end, r.new)
    return out

K2 = Path("/work/shared/bench/k2")
COUNTER = EXAMPLES / "obj" / "xdp_counter.o"
LOOP = EXAMPLES / "obj" / "bpf2bpf_loop.o"
MOV_R3 = assemble("r3 = 7")[0]


def insert_at(slot: int, insns) -> Rewrite:
    return Rewrite(slot, slot, tuple(insns), "test insert")


# ---- track ---------------------------------------------------------------------------------------------

def test_remove_and_insert_track_origins_and_positions():
    prog = assemble("r1 = 1\nr2 = 2\nif r1 > 0 goto +1\nr3 = 3\nr0 = 0\nexit")
    t = Transformation.start(prog).apply([Rewrite(1, 2, (), "dead r2")])
    assert t.insns == one_by_one(prog, [Rewrite(1, 2, (), "dead r2")])
    assert t.origins == [0, 2, 3, 4, 5]
    assert t.positions == [0, 1, 1, 2, 3, 4, 5]  # removed: its successor took its place
    t2 = t.apply([insert_at(0, assemble("r4 = 4"))])
    assert t2.origins == [None, 0, 2, 3, 4, 5]
    assert t2.positions == [0, 2, 2, 3, 4, 5, 6]  # position 0 goes to the inserted instruction
    assert str(t2.insns[2]) == "if r1 > 0 goto +1"


def test_an_equal_instruction_of_the_window_keeps_its_origin_and_interiors_vanish():
    prog = assemble("r1 = 1\nr6 = map_fd(0) ll\nr2 = 2\nr0 = 0\nexit")
    new = tuple(assemble("r6 = map_fd(0) ll\nr2 = 3"))
    t = Transformation.start(prog).apply([Rewrite(1, 4, new, "swap")])
    assert t.origins == [0, 1, None, 3, 4]
    assert t.positions == [0, 1, None, 3, 4, 5]


def test_a_jump_of_a_window_that_crosses_another_window_lands_where_it_did():
    # Splicing one by one applies the later window first, so the earlier window's "goto +2" past its end would
    # then count slots of the shortened program; the tracker lays the batch out at once.
    prog = assemble("r0 = 0\nr1 = 1\nr2 = 2\nr3 = 3\nr0 = 1\nexit")
    first = Rewrite(0, 1, tuple(assemble("if r1 > 0 goto +3", check_jumps=False)), "jump over")
    second = Rewrite(2, 3, (), "drop r2")
    t = Transformation.start(prog).apply([first, second])
    assert str(t.insns[0]) == "if r1 > 0 goto +2"  # still lands on "r0 = 1"
    assert t.insns[3] == prog[4]


def _random_rewrites(draw, prog):
    n = len(prog)
    cuts = sorted(draw(st.sets(st.integers(0, n - 1), max_size=6)))
    rewrites, i = [], 0
    while i + 1 < len(cuts):
        a, b = cuts[i], cuts[i + 1]
        new = draw(st.lists(st.sampled_from(assemble("r1 = 9\nr2 += 1\nr7 = r1\nr3 = 7")), max_size=3))
        if draw(st.booleans()):
            new = new + [prog[a]]  # an equal instruction keeps its origin
        rewrites.append(Rewrite(a, b, tuple(new), "random"))
        i += 2
    return rewrites


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_rewrites_match_rewrite_apply_and_keep_positions_consistent(data):
    # Straight-line code (no jumps in the program or the windows): rewrite.apply agrees with the tracker.
    prog = assemble("\n".join(f"r{1 + i % 5} = {i}" for i in range(12)) + "\nexit")
    t = Transformation.start(prog)
    for _ in range(data.draw(st.integers(1, 3))):
        rewrites = _random_rewrites(data.draw, t.insns)
        new = t.apply(rewrites)
        assert new.insns == one_by_one(t.insns, rewrites) == apply_rewrites(t.insns, rewrites)
        t = new
        assert len(t.origins) == len(t.insns) and len(t.positions) == len(prog) + 1
        assert t.positions[-1] == len(t.insns)
        for j, origin in enumerate(t.origins):
            if origin is not None:
                assert t.insns[j] == prog[origin]  # straight-line: a carried instruction is unchanged
        kept = [p for p in t.positions if p is not None]
        assert kept == sorted(kept) and all(0 <= p <= len(t.insns) for p in kept)
        for k, p in enumerate(t.positions[:-1]):  # what took position k came from k or after it
            if p is not None and p < len(t.insns) and t.origins[p] is not None:
                assert t.origins[p] >= k


# ---- output: raw / asm / K2 ------------------------------------------------------------------------------

def _write_and_reload(loaded, t, fmt, tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    path.write_bytes(write_optimized(loaded, t, fmt))
    return path


def test_asm_and_raw_round_trip(tmp_path):
    src = tmp_path / "p.s"
    src.write_text("r1 = 1\nr2 = 2\nif r1 > 0 goto +1\nr0 = 1\nr0 = 0\nexit\n")
    loaded = load_program(src)
    assert default_format(loaded) == "asm" and editable(loaded) == frozenset(range(6))
    t = Transformation.start(loaded.insns).apply([Rewrite(1, 2, (), "dead")])
    for fmt, suffix in (("asm", ".s"), ("raw", ".bin")):
        back = load_program(_write_and_reload(loaded, t, fmt, tmp_path, suffix))
        assert back.insns == t.insns
    with pytest.raises(BpforgeError, match="ELF"):
        write_optimized(loaded, t, "elf")
    with pytest.raises(BpforgeError, match="unknown output format"):
        write_optimized(loaded, t, "pdf")


@pytest.mark.skipif(not K2.is_dir(), reason="K2 benchmarks absent (/work/shared/bench/k2)")
def test_k2_round_trip_keeps_map_fds(tmp_path):
    names = sorted(p.stem for p in K2.glob("*.insns"))
    with_maps = [n for n in names if any(i.form.name == "lddw_map_fd" for i in load_program(K2 / f"{n}.insns").insns)]
    name = (with_maps or names)[0]
    loaded = load_program(K2 / f"{name}.insns")
    assert default_format(loaded) == "k2"
    t = Transformation.start(loaded.insns).apply([insert_at(0, [MOV_R3])])
    out = tmp_path / f"{name}.insns"
    out.write_bytes(write_optimized(loaded, t, "k2"))
    for suffix in (".maps", ".desc"):
        (tmp_path / f"{name}{suffix}").write_bytes((K2 / f"{name}{suffix}").read_bytes())
    back = load_program(out)
    assert back.insns == t.insns and len(back.insns) == len(loaded.insns) + 1
    # Removing the inserted instruction again gives K2's program back, byte for byte.
    t2 = Transformation.start(back.insns).apply([Rewrite(0, 1, (), "dead")])
    assert write_optimized(back, t2, "k2") == (K2 / f"{name}.insns").read_bytes()


def test_k2_refuses_a_map_the_program_does_not_hold(tmp_path):
    loaded = load_program(COUNTER)
    t = Transformation.start(original_insns(loaded)).apply([insert_at(0, assemble("r1 = map_fd(7) ll"))])
    with pytest.raises(BpforgeError, match="map 7"):
        write_optimized(loaded, t, "k2")


# ---- output: ELF -----------------------------------------------------------------------------------------

def _sym(obj, name):
    return next(s for s in obj.symbols if s.name == name)


def _reloc_targets(loaded):
    """(linked index's instruction text, relocation target) of the program's map relocations."""
    return [(str(loaded.insns[i]), r.target) for i, r in loaded.object.linked(loaded.name).relocations]


def _lines(loaded):
    obj = loaded.object
    lines = source_lines(obj, obj.linked(loaded.name))
    return [(info.line if info else None) for info in lines]


def test_elf_insert_then_remove_keeps_relocations_symbols_and_lines(tmp_path):
    loaded = load_program(COUNTER)
    original = original_insns(loaded)
    assert default_format(loaded) == "elf"
    # Insert before the first map lddw: every relocation must move one slot on, with its instruction.
    first_map = next(i for i, insn in enumerate(original) if insn.form.name == "lddw_map_fd")
    slot = slot_starts(original)[first_map]
    t = Transformation.start(original).apply([insert_at(slot, [MOV_R3])])
    out = tmp_path / "grown.o"
    out.write_bytes(write_optimized(loaded, t, "elf"))
    grown = load_program(out)
    assert original_insns(grown) == t.insns
    assert _sym(grown.object, loaded.name).size == _sym(loaded.object, loaded.name).size + 8
    assert _reloc_targets(grown) == _reloc_targets(loaded)
    before, after = _lines(loaded), _lines(grown)
    for j, origin in enumerate(t.origins):
        if origin is not None:
            assert after[j] == before[origin]
    # Remove it again: the very same instructions, and a symbol as long as the original's.
    grown_insns = original_insns(grown)
    t2 = Transformation.start(grown_insns).apply([Rewrite(slot, slot + 1, (), "dead r3 = 7")])
    out2 = tmp_path / "shrunk.o"
    out2.write_bytes(write_optimized(grown, t2, "elf"))
    shrunk = load_program(out2)
    assert original_insns(shrunk) == original
    assert _sym(shrunk.object, loaded.name).size == _sym(loaded.object, loaded.name).size
    assert _lines(shrunk) == before
    assert _reloc_targets(shrunk) == _reloc_targets(loaded)


def test_elf_insert_and_remove_in_two_batches(tmp_path):
    loaded = load_program(COUNTER)
    original = original_insns(loaded)
    # Two new constants after the first instruction, then the first of them removed as dead.
    t = Transformation.start(original).apply([insert_at(1, assemble("r5 = 5\nr5 = 6"))])
    t = t.apply([Rewrite(1, 2, (), "dead r5 = 5")])
    out = tmp_path / "o.o"
    out.write_bytes(write_optimized(loaded, t, "elf"))
    back = load_program(out)
    assert original_insns(back) == t.insns and str(t.insns[1]) == "r5 = 6"
    assert len(back.insns) == len(loaded.insns) + 1
    assert _sym(back.object, loaded.name).size == _sym(loaded.object, loaded.name).size + 8


def test_elf_moved_map_lddw_keeps_its_relocation_and_a_new_copy_borrows_one(tmp_path):
    loaded = load_program(COUNTER)
    original = original_insns(loaded)
    k = next(i for i, insn in enumerate(original) if insn.form.name == "lddw_map_fd")
    slot = slot_starts(original)[k]
    lddw = original[k]
    copy = lddw.replace(dst=3)
    t = Transformation.start(original).apply([Rewrite(slot, slot + 2, (copy, lddw), "copy")])
    assert t.origins[k] is None and t.origins[k + 1] == k
    out = tmp_path / "o.o"
    out.write_bytes(write_optimized(loaded, t, "elf"))
    back = load_program(out)
    assert original_insns(back) == t.insns
    linked = back.object.linked(back.name)
    relocated = {i: r.target for i, r in linked.relocations}
    before = {i: r.target for i, r in loaded.object.linked(loaded.name).relocations}
    assert relocated[k] == relocated[k + 1] == before[k]


def test_elf_refuses_edits_of_subprograms(tmp_path):
    loaded = load_program(LOOP)
    original = original_insns(loaded)
    linked = loaded.object.linked(loaded.name)
    own = sum(1 for sec, _ in linked.origins if sec == linked.section)
    slots = editable(loaded)
    starts = slot_starts(original)
    assert starts[0] in slots and starts[own] not in slots
    t = Transformation.start(original).apply([insert_at(starts[own] + 1, [MOV_R3])])
    with pytest.raises(BpforgeError, match="may not be edited"):
        write_optimized(loaded, t, "elf")
    # An edit of the program's own section is fine, and its bpf2bpf call still reaches the subprogram.
    t = Transformation.start(original).apply([insert_at(0, [MOV_R3])])
    out = tmp_path / "o.o"
    out.write_bytes(write_optimized(loaded, t, "elf"))
    assert original_insns(load_program(out)) == t.insns


def test_elf_raw_output_of_an_object_is_the_linked_program(tmp_path):
    loaded = load_program(COUNTER)
    t = Transformation.start(original_insns(loaded))
    path = tmp_path / "p.bin"
    path.write_bytes(write_optimized(loaded, t, "raw"))
    assert load_program(path).insns == original_insns(loaded)


CORE_SOURCE = r"""
#include <linux/bpf.h>
#define SEC(x) __attribute__((section(x), used))
struct ctx_like { int a; int b; } __attribute__((preserve_access_index));
SEC("tc") int prog(struct __sk_buff *skb) {
    struct ctx_like *c = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    if ((void *)(c + 1) > end) return 0;
    return c->b + 1;
}
char _license[] SEC("license") = "GPL";
"""


def test_core_instructions_are_not_editable_and_keep_their_records(tmp_path):
    from conftest import compile_cases

    obj = compile_cases(tmp_path, "core", CORE_SOURCE, [1])[1]
    path = Path(obj.filename)
    loaded = load_program(path)
    relos = loaded.object.btf_ext.core_relos.get("tc", []) if loaded.object.btf_ext else []
    if not relos:
        pytest.skip("clang emitted no CO-RE record for this source")
    original = original_insns(loaded)
    starts = slot_starts(original)
    core = relos[0].insn
    assert starts[core] not in editable(loaded)
    with pytest.raises(BpforgeError, match="may not be edited"):
        t = Transformation.start(original).apply([Rewrite(starts[core], starts[core] + 1,
                                                          (original[core].replace(off=original[core].off + 4),),
                                                          "fold")])
        write_optimized(loaded, t, "elf")
    t = Transformation.start(original).apply([insert_at(0, [MOV_R3])])
    out = tmp_path / "o.o"
    out.write_bytes(write_optimized(loaded, t, "elf"))
    back = read_object(out)
    assert [r.insn for r in back.btf_ext.core_relos["tc"]] == [r.insn + 1 for r in relos]


# ---- kernel ----------------------------------------------------------------------------------------------

def test_kernel_accepts_the_written_object_and_runs_it_alike(kernel, tmp_path):
    from test_kernel_packets import udp4

    loaded = load_program(COUNTER)
    original = original_insns(loaded)
    t = Transformation.start(original).apply([insert_at(0, [MOV_R3]), insert_at(2, assemble("r5 = 1"))])
    t = t.apply([Rewrite(0, 1, (), "dead r3 = 7")])
    out = tmp_path / "o.o"
    out.write_bytes(write_optimized(loaded, t, "elf"))
    written = read_object(out)
    packet = udp4("10.0.0.1", "10.0.0.2", 1000, 53, b"hello")
    results = []
    for obj in (loaded.object, written):
        with kernel.load_linked(obj.linked(), obj, prog_type="xdp") as prog:
            results.append(kernel.test_run(prog, packet).retval)
    assert results[0] == results[1]
