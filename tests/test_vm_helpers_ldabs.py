"""LD_ABS / LD_IND at every kind of offset, interpreter = fast tier = kernel: positive offsets from
skb->data, SKF_NET_OFF (-0x100000) relative to the network header, SKF_LL_OFF (-0x200000) relative to the
link-layer header, the classic ancillary SKF_AD_OFF (-0x1000) which eBPF cannot use, and offsets past the
packet, which end the program with r0 = 0.

socket_filter programs start at the network header (test_run pulled the Ethernet header, whose bytes
are still in front of it), sched_cls at the Ethernet header.
"""

from __future__ import annotations

import pytest
from test_kernel_packets import ETH_P_IP, eth, ipv4, tcp
from vmdiff import run_asm, same

SKF_AD_OFF, SKF_NET_OFF, SKF_LL_OFF = -0x1000, -0x100000, -0x200000
FRAME = eth(ETH_P_IP, ipv4("10.0.0.1", "10.0.0.2", 6, tcp("10.0.0.1", "10.0.0.2", 1234, 80, payload=b"xyz")))


def ld_abs(size: int, offset: int) -> str:
    # r0 + 0x10000 so that a successful load of 0 differs from the failed load's 0
    return f"r6 = r1\nr0 = *(u{size} *)skb[{offset}]\nr0 += 0x10000\nexit"


def ld_ind(size: int, reg_value: int, imm: int) -> str:
    return f"r6 = r1\nr7 = {reg_value}\nr0 = *(u{size} *)skb[r7 + {imm}]\nr0 += 0x10000\nexit"


OFFSETS = [
    (1, 0), (2, 12), (4, 26), (1, len(FRAME) - 1), (1, len(FRAME)), (4, len(FRAME) - 3), (2, 0x7FFF), (4, 0x10000),
    (1, SKF_LL_OFF), (2, SKF_LL_OFF + 12), (4, SKF_LL_OFF + 6), (1, SKF_LL_OFF - 1), (1, SKF_LL_OFF + len(FRAME) - 1),
    (1, SKF_LL_OFF + len(FRAME)), (1, SKF_NET_OFF), (1, SKF_NET_OFF + 9), (4, SKF_NET_OFF + 12),
    (1, SKF_NET_OFF - 1), (4, SKF_NET_OFF + len(FRAME) - 17), (4, SKF_NET_OFF + len(FRAME) - 18),
    (4, SKF_AD_OFF), (4, SKF_AD_OFF + 4), (1, -1), (4, -0x7FFFFFFF), (2, SKF_LL_OFF - 0x100000),
]


@pytest.mark.parametrize("prog_type", ["socket_filter", "sched_cls"])
@pytest.mark.parametrize("size,offset", OFFSETS, ids=[f"u{s}@{o:#x}" for s, o in OFFSETS])
def test_ld_abs_matches_kernel(prog_type, size, offset, kernel):
    same(run_asm(ld_abs(size * 8, offset), prog_type, FRAME))


IND = [(0, 14), (14, 0), (SKF_LL_OFF, 12), (SKF_NET_OFF, 9), (SKF_NET_OFF - 4, 4), (-1, 1), (0x7FFFFFFF, 1),
       (0xFFFFFFFF, 2), (0x100000000, 12), (SKF_LL_OFF + 0x100000, 0)]


@pytest.mark.parametrize("prog_type", ["socket_filter", "sched_cls"])
@pytest.mark.parametrize("reg,imm", IND, ids=[f"{r:#x}+{i}" for r, i in IND])
def test_ld_ind_matches_kernel(prog_type, reg, imm, kernel):
    same(run_asm(ld_ind(16, reg, imm), prog_type, FRAME))


def test_a_failed_load_ends_the_program_with_zero_in_both_tiers():
    # No kernel needed: the VM's own rule, in both tiers (the kernel case is covered above).
    text = "r6 = r1\nr0 = *(u8 *)skb[-4096]\nr0 = 7\nexit"
    outcomes = run_asm(text, "socket_filter", FRAME, engines=("interp", "fast"))
    assert same(outcomes).retval == 0
