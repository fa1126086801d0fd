"""Memory kinds in proofs (K2's memory-type concretization): accesses through pointers into different kinds of
memory (stack, packet, map value, context) that both happen are apart, so a copy from a map value into the
packet may be reordered and widened — and nothing is assumed where the kinds are the same or unknown. The
moves pass widening such a copy end to end on an XDP program with a filled map: proved, kernel-accepted,
same packets out."""

from __future__ import annotations

import random

import pytest

from bpforge import vm
from bpforge.formats import load_program
from bpforge.isa import assemble, helper_id
from bpforge.isa.codec import encode
from bpforge.isa.maptypes import MapSpec
from bpforge.kernel import kernel_available
from bpforge.kernel.maps import KernelMap
from bpforge.kernel.program import load_insns
from bpforge.kernel.testrun import test_run as kernel_test_run
from bpforge.opt.optimize import OptimizeOptions
from bpforge.opt.run import optimize_loaded
from bpforge.opt.smt.equiv import PROVED, REFUTED, prove_equivalent
from bpforge.verifier.window import ExitTarget
from bpforge.vm.maps import create_map

AFTER = ExitTarget("after", 0)

# Three u16 moves from a map value (r0) into the packet (r7), highest first, as clang inlines a MAC copy.
COPY = """
r1 = *(u16 *)(r0 + 4)
*(u16 *)(r7 + 4) = r1
r1 = *(u16 *)(r0 + 2)
*(u16 *)(r7 + 2) = r1
r1 = *(u16 *)(r0 + 0)
*(u16 *)(r7 + 0) = r1
"""
WIDE = """
r1 = *(u32 *)(r0 + 0)
*(u32 *)(r7 + 0) = r1
r1 = *(u16 *)(r0 + 4)
*(u16 *)(r7 + 4) = r1
"""
NOTHING_LIVE = {AFTER: 1 << 10}


def test_a_copy_between_different_memories_is_widened():
    proof = prove_equivalent(assemble(COPY), assemble(WIDE), NOTHING_LIVE, regions={0: "map_value", 7: "packet"},
                             contexts=())
    assert proof.status == PROVED, proof.reason


def test_no_kinds_or_one_kind_assume_nothing():
    for regions in (None, {0: "map_value"}, {0: "packet", 7: "packet"}):
        proof = prove_equivalent(assemble(COPY), assemble(WIDE), NOTHING_LIVE, regions=regions, contexts=())
        assert proof.status == REFUTED, regions
        # The counterexample overlaps the two ranges: what the kinds would have ruled out.
        r0, r7 = proof.counterexample.registers[0], proof.counterexample.registers[7]
        assert abs(r0 - r7) < 6 or abs(r0 - r7) > 2**63


def test_kinds_follow_copies_and_pointer_arithmetic():
    # r2 = r0 + 8 is still the map value; r3 = r7 is still the packet.
    original = assemble("r2 = r0\nr2 += 8\nr3 = r7\n" + COPY.replace("r0", "r2").replace("r7", "r3"))
    candidate = assemble("r2 = r0\nr2 += 8\nr3 = r7\n" + WIDE.replace("r0", "r2").replace("r7", "r3"))
    proof = prove_equivalent(original, candidate, NOTHING_LIVE, regions={0: "map_value", 7: "packet"}, contexts=())
    assert proof.status == PROVED, proof.reason


def test_an_access_that_does_not_happen_buys_nothing():
    # The map value is read only where r0 != r7; were the kinds assumed apart regardless, r0 == r7 would be
    # ruled out and this wrong candidate (r2 = 1 exactly there) proved.
    original = assemble("if r0 == r7 goto +1\nr1 = *(u8 *)(r0 + 0)\nr2 = 0\n*(u8 *)(r7 + 0) = r4")
    candidate = assemble("r2 = 0\nif r0 != r7 goto +1\nr2 = 1\n*(u8 *)(r7 + 0) = r4")
    live = {AFTER: (1 << 10) | (1 << 2)}
    proof = prove_equivalent(original, candidate, live, regions={0: "map_value", 7: "packet"}, contexts=())
    assert proof.status == REFUTED
    assert proof.counterexample.registers[0] == proof.counterexample.registers[7]


# ---- the moves pass end to end ------------------------------------------------------------------------------

LOOKUP = helper_id("map_lookup_elem")
PROGRAM = f"""
r2 = *(u32 *)(r1 + 4)
r7 = *(u32 *)(r1 + 0)
r3 = r7
r3 += 14
if r3 > r2 goto +16
r1 = 0
*(u32 *)(r10 - 4) = r1
r2 = r10
r2 += -4
r1 = map_fd(0) ll
call {LOOKUP}
if r0 == 0 goto +8
{COPY}
r0 = 3
exit
r0 = 2
exit
"""
VALUE = bytes(range(0xA1, 0xA9))
ARRAY = MapSpec("macs", 2, key_size=4, value_size=8, max_entries=1)


def _k2_trio(tmp_path):
    (tmp_path / "copy.insns").write_bytes(encode(assemble(PROGRAM)))
    (tmp_path / "copy.maps").write_text("macs { type = 2, key_size = 4, value_size = 8, max_entries = 1, fd = 0 }\n")
    (tmp_path / "copy.desc").write_text("{ pgm_input_type = 2, }\n{ max_pkt_sz = 64, }\n")
    return load_program(tmp_path / "copy.insns", prog_type="xdp")


def _vm_out(insns, frame):
    array = create_map(ARRAY)
    array.update(bytes(4), VALUE)
    result = vm.run(vm.from_insns(insns, [array]), frame, "xdp")
    return result.retval, result.data_out


def test_the_moves_pass_widens_a_mac_copy_and_keeps_what_the_program_does(tmp_path):
    loaded = _k2_trio(tmp_path)
    report = optimize_loaded(loaded, OptimizeOptions(search=False, jobs=1))
    assert any(c.why.startswith("moves") and c.proof == "proved" for c in report.outcome.changes), \
        [c.why for c in report.outcome.changes]
    assert report.after <= report.before - 2
    original, optimized = report.outcome.original, report.outcome.insns
    rng = random.Random(5)
    frames = [rng.randbytes(rng.randrange(14, 40)) for _ in range(50)]
    for frame in frames:
        assert _vm_out(original, frame) == _vm_out(optimized, frame)
    assert _vm_out(optimized, bytes(20))[1][:6] == VALUE[:6]  # the copy ran
    if kernel_available() is None:
        assert report.kernel_accepted is True, report.notes


@pytest.mark.skipif(kernel_available() is not None, reason=f"needs bpf(): {kernel_available()}")
def test_the_widened_copy_gives_the_kernel_the_same_packets(tmp_path):
    loaded = _k2_trio(tmp_path)
    report = optimize_loaded(loaded, OptimizeOptions(search=False, jobs=1))
    rng = random.Random(6)
    frames = [rng.randbytes(rng.randrange(14, 60)) for _ in range(40)]
    outs = []
    for insns in (report.outcome.original, report.outcome.insns):
        array = KernelMap.create(ARRAY)
        try:
            array.update(bytes(4), VALUE)
            with load_insns(insns, "xdp", maps={0: array}) as prog:
                outs.append([(r.retval, r.data_out) for r in (kernel_test_run(prog, f) for f in frames)])
        finally:
            array.close()
    assert outs[0] == outs[1]
    assert outs[1][0][1][:6] == VALUE[:6]
