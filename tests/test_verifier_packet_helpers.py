"""Helpers that may move or resize the packet (bpf_helper_changes_pkt_data) make every packet pointer the
program holds stale: a load through one after the call is refused, as the kernel refuses it; after other
helpers the checked pointer stays good. Verdicts and messages against the kernel's."""

from __future__ import annotations

import pytest

from bpforge.isa import assemble
from bpforge.kernel.program import verify_insns
from bpforge.verifier.check import verify_program

CTX_DATA = {"xdp": (0, 4), "sched_cls": (76, 80)}  # offsets of data and data_end in the context
CALLS = [
    ("xdp", "r2 = 0\ncall bpf_xdp_adjust_head", False),
    ("xdp", "r2 = 0\ncall bpf_xdp_adjust_tail", False),
    ("xdp", "r2 = 0\ncall bpf_xdp_adjust_meta", False),
    ("xdp", "r2 = 0\nr3 = r10\nr3 += -8\nr4 = 4\ncall bpf_xdp_load_bytes", True),
    ("xdp", "r2 = 0\nr3 = r10\nr3 += -8\nr4 = 4\ncall bpf_xdp_store_bytes", True),
    ("xdp", "call bpf_xdp_get_buff_len", True),
    ("sched_cls", "r2 = 0\ncall bpf_skb_pull_data", False),
    ("sched_cls", "r2 = 0\nr3 = r10\nr3 += -8\nr4 = 4\nr5 = 0\ncall bpf_skb_store_bytes", False),
    ("sched_cls", "r2 = 0\nr3 = r10\nr3 += -8\nr4 = 4\ncall bpf_skb_load_bytes", True),
    ("sched_cls", "r2 = 0\nr3 = 0\nr4 = 0\nr5 = 0\ncall bpf_l3_csum_replace", False),
    ("sched_cls", "r2 = 0\nr3 = 0\nr4 = 0\nr5 = 0\ncall bpf_l4_csum_replace", False),
    ("sched_cls", "r2 = 0\nr3 = 0\ncall bpf_skb_change_tail", False),
    ("sched_cls", "r2 = 0\nr3 = 0\ncall bpf_skb_change_proto", False),
    ("sched_cls", "r2 = 0\nr3 = 0\nr4 = 0\ncall bpf_skb_adjust_room", False),
    ("sched_cls", "r2 = 0\ncall bpf_skb_change_type", True),
    ("sched_cls", "call bpf_get_hash_recalc", True),
]


def program(prog_type: str, call: str, spill: bool) -> str:
    data, data_end = CTX_DATA[prog_type]
    keep = "*(u64 *)(r10 - 16) = r7\n" if spill else ""
    reload = "r7 = *(u64 *)(r10 - 16)\n" if spill else ""
    return f"""r6 = r1
r7 = *(u32 *)(r6 + {data})
r8 = *(u32 *)(r6 + {data_end})
r9 = r7
r9 += 8
if r9 > r8 goto out
{keep}*(u64 *)(r10 - 8) = 0
r1 = r6
{call}
{reload}r0 = *(u8 *)(r7 + 0)
out:
r0 = 0
exit"""


@pytest.mark.parametrize("spill", [False, True], ids=["in a register", "spilled to the stack"])
@pytest.mark.parametrize("prog_type, call, keeps", CALLS, ids=[c[1].splitlines()[-1] for c in CALLS])
def test_packet_pointers_after_a_helper(kernel, prog_type, call, keeps, spill):
    insns = assemble(program(prog_type, call, spill))
    theirs = verify_insns(insns, prog_type)
    ours = verify_program(insns, prog_type)
    assert theirs.accepted == keeps, theirs.message  # the table of helpers is the kernel's
    assert ours.accepted == theirs.accepted, ours.message
    if not keeps:
        assert ours.message == theirs.message == "R7 invalid mem access 'scalar'"
