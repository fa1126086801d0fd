"""Socket helpers as a test run sees them, interpreter = fast tier = kernel: lookups that find nothing
(a tuple of addresses no host socket has), the dummy socket test_run hangs on its skb (a full socket, not
TCP, not listening, uid 0), the network namespace cookie; the socket cookie only as "non-zero" (the
kernel's comes from a global counter)."""

from __future__ import annotations

import pytest
from test_kernel_packets import ETH_P_IP, eth, ipv4, tcp
from vmdiff import run_asm, same

FRAME = eth(ETH_P_IP, ipv4("10.0.0.1", "10.0.0.2", 6, tcp("10.0.0.1", "10.0.0.2", 1234, 80)))
LOOKUPS = {"sk_lookup_tcp": 84, "sk_lookup_udp": 85, "skc_lookup_tcp": 99}


@pytest.mark.parametrize("prog_type", ["sched_cls", "xdp"])
@pytest.mark.parametrize("name", list(LOOKUPS))
@pytest.mark.parametrize("size,netns,flags", [(12, 0xFFFFFFFF, 0), (36, 0xFFFFFFFF, 0), (12, 0, 0), (12, 0xFFFFFFFF, 1),
                                              (5, 0xFFFFFFFF, 0), (12, 0x80000000, 0)])
def test_lookups_find_nothing(prog_type, name, size, netns, flags, kernel):
    text = f"""
    r6 = r1
    r1 = 0x02ffff0a01ffff0a ll
    *(u64 *)(r10 - 40) = r1
    r1 = 0x0e0d0c0b
    *(u64 *)(r10 - 32) = r1
    *(u64 *)(r10 - 24) = 0
    *(u64 *)(r10 - 16) = 0
    *(u64 *)(r10 - 8) = 0
    r1 = r6
    r2 = r10
    r2 += -40
    r3 = {size}
    r4 = {netns:#x} ll
    r4 = (s32)r4
    r5 = {flags}
    call {LOOKUPS[name]}
    if r0 == 0 goto none
    r1 = r0
    call 86
    r0 = 1
    exit
    none:
    r0 = 7
    exit
    """
    assert same(run_asm(text, prog_type, FRAME)).retval == 7


def test_the_dummy_socket(kernel):
    text = """
    r6 = r1
    r9 = 0
    r1 = *(u64 *)(r6 + 168)
    if r1 == 0 goto out
    call 95
    if r0 == 0 goto out
    r7 = r0
    r9 = 1
    r1 = r7
    call 96
    if r0 != 0 goto out
    r9 |= 2
    r1 = r7
    call 98
    if r0 != 0 goto out
    r9 |= 4
    r1 = r6
    call 47
    r0 <<= 8
    r9 |= r0
    r1 = r6
    call 46
    if r0 == 0 goto out
    r9 |= 0x10000
    out:
    r0 = r9
    exit
    """
    assert same(run_asm(text, "sched_cls", FRAME)).retval == 0x10007


@pytest.mark.parametrize("prog_type", ["sched_cls", "cgroup_skb"])
def test_netns_cookie_is_the_callers(prog_type, kernel):
    text = "r6 = r1\nr1 = r6\ncall 122\nr7 = r0\nr1 = 0\ncall 122\nr7 ^= r0\nr0 >>= 16\nr0 ^= r7\nexit\n"
    if prog_type == "cgroup_skb":
        text = text.replace("exit\n", "*(u32 *)(r6 + 8) = r0\nr0 = 1\nexit\n")
    same(run_asm(text, prog_type, FRAME))
