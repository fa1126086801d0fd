"""kernel/verifier_log.py reads the kernel verifier's log into data."""

from __future__ import annotations

from pathlib import Path

from bpforge.elf import read_object
from bpforge.isa import slot_starts
from bpforge.kernel.program import verify_linked
from bpforge.kernel.verifier_log import parse_log, parse_state

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "obj"


def test_states_split_at_blanks_outside_parentheses():
    state = parse_state("R1_w=scalar(smin=0,smax=umax=255,var_off=(0x0; 0xff)) R6=pkt_end() fp-8=mmmm????")
    assert state == {"r1": "scalar(smin=0,smax=umax=255,var_off=(0x0; 0xff))", "r6": "pkt_end()",
                     "fp-8": "mmmm????"}
    assert parse_state("") == {}


def test_a_log_of_an_example_reads_whole(kernel):
    obj = read_object(EXAMPLES / "xdp_counter.o")
    linked = obj.linked()
    verdict = verify_linked(linked, obj, log_level=2 | 4)  # level 2 and the statistics
    assert verdict.accepted and not verdict.log_truncated
    log = parse_log(verdict.log)
    slots = slot_starts(linked.insns)
    assert sorted(log.live) == slots  # the liveness table has every instruction
    assert log.processed == verdict.processed_insns and log.processed >= len(log.insns) > 0
    assert log.verification_usec is not None and log.total_states and log.peak_states
    assert {insn.slot for insn in log.insns} <= set(slots)
    assert log.states[0] == (0, {"r1": "ctx()", "r10": "fp0"})
    first = log.insns[0]
    assert (first.slot, first.text, first.changed, first.line) == (0, "w3 = 10", {"r3": "10"}, "xdp_counter.c:101")
    assert all(path.pruned or path.state for path in log.paths)
    assert log.live[0] == frozenset({1})  # only the context is live at the start
