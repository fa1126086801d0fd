"""In-kernel ns/packet with BPF_PROG_TEST_RUN (kernel tests skip without bpf()). Timing is asserted only
to be positive and finite: the machine is shared."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bpforge.errors import BpforgeError
from bpforge.formats import load_program
from bpforge.isa.asm import assemble
from bpforge.isa.maptypes import MapSpec
from bpforge.kernel import VerifierRejected
from bpforge.opt.measure import compare_ns, ns_per_packet, ratio

K2 = Path("/work/shared/bench/k2")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "asm"

# Counts packets per first byte in an array map (the map named by ref 4, as in a K2 .maps file).
COUNTER = """
    r2 = *(u32 *)(r1 + 4)
    r1 = *(u32 *)(r1 + 0)
    r3 = r1
    r3 += 1
    if r3 > r2 goto pass
    r3 = *(u8 *)(r1 + 0)
    *(u32 *)(r10 - 4) = r3
    r1 = map_fd(4) ll
    r2 = r10
    r2 += -4
    call 1
    if r0 == 0 goto pass
    r1 = 1
    lock *(u64 *)(r0 + 0) += r1
pass:
    r0 = 2
    exit
"""
COUNTER_MAPS = [MapSpec.of("array", 4, 8, 256, name="per_byte", ref=4)]


def positive(ns: float) -> bool:
    return ns > 0 and math.isfinite(ns)


def test_ns_per_packet_of_an_xdp_example(kernel):
    insns = load_program(EXAMPLES / "xdp_pass.s").insns
    assert positive(ns_per_packet(insns, "xdp", packets=[bytes(64), bytes(200)], repeat=1000))


def test_ns_per_packet_with_maps_by_ref(kernel):
    insns = assemble(COUNTER)
    assert positive(ns_per_packet(insns, "xdp", COUNTER_MAPS, [bytes([1]) + bytes(63)], repeat=1000))


def test_compare_ns_times_both(kernel):
    before = assemble(COUNTER)
    after = assemble(COUNTER.replace("    r3 = r1\n    r3 += 1\n", "    r3 = r1\n    r3 += 1\n    r3 += 0\n"))
    ns_before, ns_after = compare_ns(before, after, "xdp", COUNTER_MAPS, [bytes(64), bytes([9]) + bytes(63)],
                                     repeat=500, rounds=3)
    assert positive(ns_before) and positive(ns_after)
    assert positive(ratio(ns_before, ns_after))


def test_k2_program_times(kernel):
    if not K2.is_dir():
        pytest.skip(f"{K2} absent (K2's benchmark programs)")
    prog = load_program(K2 / "xdp_pktcntr.insns")
    assert positive(ns_per_packet(prog.insns, "xdp", prog.maps, [bytes(64)], repeat=1000))


def test_a_rejected_program_says_so(kernel):
    with pytest.raises(VerifierRejected):
        ns_per_packet(assemble("r0 = *(u64 *)(r1 + 4096)\nexit"), "xdp", repeat=10)


def test_untimeable_inputs_are_errors():
    insns = assemble("r0 = 2\nexit")
    with pytest.raises(BpforgeError, match="cannot be run"):
        ns_per_packet(insns, "kprobe")
    with pytest.raises(BpforgeError, match="cannot repeat"):
        ns_per_packet(insns, "syscall")
    with pytest.raises(BpforgeError, match="sample packet"):
        ns_per_packet(insns, "xdp", packets=[])
    with pytest.raises(BpforgeError, match="rounds"):
        compare_ns(insns, insns, "xdp", rounds=0)


def test_ratio():
    assert ratio(10.0, 5.0) == 0.5
    assert math.isnan(ratio(0.0, 5.0))
