"""isa/ctx_access.py against the running kernel: every context offset, size and direction of every program
type the module states, accepted or refused as the verifier decides, and loads giving the same pointer kinds."""

from __future__ import annotations

import re

import pytest

from bpforge.isa import Insn
from bpforge.isa.ctx_access import BPF_XDP_DEVMAP, ctx_access, known_types
from bpforge.isa.contexts import SK_BUFF
from bpforge.isa.progtypes import ATTACH_TYPE_IDS, return_range
from bpforge.kernel.program import verify_insns

# How far past each context's end the comparison goes (the large ones: a window, plus their far end).
_SPAN = {"xdp": 32, "flow_dissector": SK_BUFF.size + 8, "sk_lookup": 80, "kprobe": 176, "perf_event": 192,
         "raw_tracepoint": 104, "tracepoint": 96, "syscall": 64}
_FAR = {"tracepoint": (8176, 8184, 8188, 8192), "syscall": (32752, 32760, 32764, 32766)}  # `off` is 16-bit
_KIND = re.compile(r"^0: \(\w+\) r0 = \*\(u\d+ \*\)\(r1 \+\d+\)\s*;\s*R0_?w?=([a-z_]+)", re.M)


def _kernel_access(prog_type: str, off: int, size: int, write: bool, attach: int = 0):
    """(accepted, the kind of value a load gave) as the kernel's verifier says."""
    if write:
        insns = [Insn.make("mov64_imm", dst=2, imm=0), Insn.make(f"stx{size * 8}", dst=1, src=2, off=off)]
    else:
        insns = [Insn.make(f"ldx{size * 8}", dst=0, src=1, off=off)]
    insns += [Insn.make("mov64_imm", dst=0, imm=0), Insn.make("exit")]
    verdict = verify_insns(insns, prog_type, log_level=2, expected_attach_type=attach)
    if not verdict.accepted or write:
        return verdict.accepted, None
    match = _KIND.search(verdict.log)
    return True, match.group(1) if match else "scalar"


def _ours(prog_type: str, off: int, size: int, write: bool, attach: int = 0):
    access = ctx_access(prog_type, off, size, write, attach=attach)
    return access is not None, None if access is None or write else access.yields


@pytest.mark.parametrize("prog_type", sorted(known_types()))
def test_every_context_access_is_decided_as_the_kernel_decides(kernel, prog_type):
    span = _SPAN.get(prog_type, SK_BUFF.size + 8)
    offsets = list(range(span)) + list(_FAR.get(prog_type, ()))
    differences = []
    for off in offsets:
        for size in (1, 2, 4, 8):
            for write in (False, True):
                theirs = _kernel_access(prog_type, off, size, write)
                ours = _ours(prog_type, off, size, write)
                if theirs != ours:
                    differences.append(f"{'write' if write else 'read'} off={off} size={size}: kernel {theirs}, "
                                       f"ours {ours}")
    assert not differences, f"{prog_type}: {len(differences)} differences, first: {differences[:8]}"


def test_xdp_egress_ifindex_needs_a_devmap_program(kernel):
    off = 20
    assert _ours("xdp", off, 4, False) == _kernel_access("xdp", off, 4, False) == (False, None)
    assert _ours("xdp", off, 4, False, BPF_XDP_DEVMAP) == _kernel_access("xdp", off, 4, False, BPF_XDP_DEVMAP) \
        == (True, "scalar")


def test_pointer_fields_and_narrow_loads():
    assert ctx_access("xdp", 0, 4, False).yields == "pkt"
    assert ctx_access("sched_cls", SK_BUFF.offset("data_meta"), 4, False).yields == "pkt_meta"
    assert ctx_access("socket_filter", SK_BUFF.offset("data"), 4, False) is None
    narrow = ctx_access("socket_filter", SK_BUFF.offset("len") + 2, 2, False)
    assert narrow is not None and narrow.field_size == 4
    assert ctx_access("sched_cls", SK_BUFF.offset("mark"), 4, True) is not None
    assert ctx_access("sched_cls", SK_BUFF.offset("mark"), 2, True) is None  # stores write whole fields
    with pytest.raises(KeyError):
        ctx_access("struct_ops", 0, 8, False)


_CHECKED_ATTACH = [("cgroup_skb", "cgroup_inet_egress"), ("cgroup_sock_addr", "cgroup_udp4_recvmsg"),
                   ("cgroup_sock_addr", "cgroup_inet4_bind"), ("cgroup_sock_addr", "cgroup_inet6_connect")]


@pytest.mark.parametrize("prog_type, attach", [(t, None) for t in (
    "xdp", "socket_filter", "sched_cls", "cgroup_skb", "lwt_in", "sk_skb", "flow_dissector", "sk_lookup", "kprobe",
    "tracepoint", "raw_tracepoint", "perf_event", "syscall", "cgroup_sock", "cgroup_sock_addr", "cgroup_sysctl",
    "cgroup_sockopt", "cgroup_device", "sock_ops", "sk_msg", "netfilter")] + _CHECKED_ATTACH)
def test_return_ranges_are_the_kernels(kernel, prog_type, attach):
    attach_id = ATTACH_TYPE_IDS[attach] if attach else 0
    allowed = return_range(prog_type, attach_id)
    for value in (-1, 0, 1, 2, 3, 4, 100):
        insns = [Insn.make("mov64_imm", dst=0, imm=value), Insn.make("exit")]
        accepted = verify_insns(insns, prog_type, expected_attach_type=attach_id).accepted
        assert accepted == (allowed is None or allowed[0] <= value <= allowed[1]), (prog_type, attach, value)
