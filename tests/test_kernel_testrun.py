"""BPF_PROG_TEST_RUN semantics per program type (what the program sees, what comes back), contexts, growing
packets, repeat, and the reasons given when the kernel refuses a run."""

from __future__ import annotations

import errno

import pytest
from test_kernel_packets import ETH_P_IP, ETH_P_IPV6, no_leaked_fds, tcp4, tcp6  # noqa: F401

from bpforge.errors import BpforgeError
from bpforge.isa import Insn

XDP_PASS, XDP_TX = 2, 3
FRAME = tcp4("10.0.0.1", "10.0.0.2", 1234, 80, payload=b"hello")


def ret(value: int) -> list[Insn]:
    return [Insn.make("mov64_imm", dst=0, imm=value), Insn.make("exit")]


def call(helper: int) -> Insn:
    return Insn.make("call", imm=helper)


# r0 = skb->len, r2 = skb->protocol; cb[0] = r2; cb[4] = 77; return r0
SKB_LEN_AND_PROTO = [
    Insn.make("ldx32", dst=0, src=1, off=0), Insn.make("ldx32", dst=2, src=1, off=16),
    Insn.make("stx32", dst=1, src=2, off=48), Insn.make("st32", dst=1, off=64, imm=77), Insn.make("exit"),
]
# r0 = data_end - data (what the program sees of the packet)
XDP_VISIBLE_LEN = [Insn.make("ldx32", dst=2, src=1, off=0), Insn.make("ldx32", dst=0, src=1, off=4),
                   Insn.make("sub64_reg", dst=0, src=2), Insn.make("exit")]
TC_VISIBLE_LEN = [Insn.make("ldx32", dst=2, src=1, off=76), Insn.make("ldx32", dst=0, src=1, off=80),
                  Insn.make("sub64_reg", dst=0, src=2), Insn.make("exit")]


def test_xdp_sees_the_whole_frame_and_returns_it(kernel):
    with kernel.load_insns(XDP_VISIBLE_LEN, "xdp") as prog:
        result = kernel.test_run(prog, FRAME)
        assert result.retval == len(FRAME)
        assert result.data_out == FRAME and result.ctx_out is None and result.repeat == 1


def test_xdp_big_packets_continue_in_fragments(kernel):
    big = bytes(range(256)) * 20  # 5120 bytes
    with kernel.load_insns(XDP_VISIBLE_LEN, "xdp") as prog:
        result = kernel.test_run(prog, big)
        assert result.retval == 3520  # the linear part: a page less headroom and skb_shared_info
        assert result.data_out == big


def test_xdp_metadata_context(kernel):
    # The first xdp_md.data bytes of the input are metadata; data_out starts at data_meta.
    meta = b"\xaa" * 8
    with kernel.load_insns(XDP_VISIBLE_LEN, "xdp") as prog:
        result = kernel.test_run(prog, meta + FRAME, ctx=kernel.xdp_md(len(meta) + len(FRAME), meta_len=8))
        assert result.retval == len(FRAME)
        assert result.data_out == meta + FRAME
        md = kernel.parse_xdp_md(result.ctx_out)
        assert (md["data"], md["data_end"], md["data_meta"]) == (8, 8 + len(FRAME), 0)
        result = kernel.test_run(prog, FRAME, ctx=kernel.xdp_md(len(FRAME), ingress_ifindex=1))  # lo
        assert result.retval == len(FRAME)


def test_xdp_program_can_grow_the_packet(kernel):
    grow_tail = [Insn.make("mov64_imm", dst=2, imm=16), call(65)] + ret(XDP_PASS)   # bpf_xdp_adjust_tail
    grow_head = [Insn.make("mov64_imm", dst=2, imm=-8), call(44)] + ret(XDP_PASS)   # bpf_xdp_adjust_head
    with kernel.load_insns(grow_tail, "xdp") as prog:
        out = kernel.test_run(prog, FRAME).data_out
        assert len(out) == len(FRAME) + 16 and out.startswith(FRAME)
        with pytest.raises(kernel.TestRunError) as info:
            kernel.test_run(prog, FRAME, data_out_size=len(FRAME))
        assert info.value.errno == errno.ENOSPC and f"{len(FRAME) + 16} bytes" in str(info.value)
    with kernel.load_insns(grow_head, "xdp") as prog:
        out = kernel.test_run(prog, FRAME).data_out
        assert len(out) == len(FRAME) + 8 and out.endswith(FRAME)


def test_socket_filter_sees_the_network_header_and_gets_zeros_back(kernel):
    with kernel.load_insns(SKB_LEN_AND_PROTO, "socket_filter") as prog:
        result = kernel.test_run(prog, FRAME)
        assert result.retval == len(FRAME) - 14  # skb->len after the Ethernet header was pulled
        assert result.data_out == bytes(14) + FRAME[14:]  # the header comes back zeroed
        skb = kernel.parse_sk_buff(result.ctx_out)  # reported even without a context in
        assert skb["cb"][0] == int.from_bytes(ETH_P_IP.to_bytes(2, "big"), "little")  # protocol, as stored
        assert skb["cb"][4] == 77
        assert skb["wire_len"] == len(FRAME) - 14 and skb["ifindex"] == 1  # loopback


def test_tc_sees_the_ethernet_header(kernel):
    frame6 = tcp6("2001:db8::1", "2001:db8::2", 1, 2)
    for program, expected in ((SKB_LEN_AND_PROTO, len(frame6)), (TC_VISIBLE_LEN, len(frame6))):
        with kernel.load_insns(program, "sched_cls") as prog:
            result = kernel.test_run(prog, frame6)
            assert result.retval == expected
            assert result.data_out == frame6
    with kernel.load_insns(SKB_LEN_AND_PROTO, "sched_cls") as prog:
        skb = kernel.parse_sk_buff(kernel.test_run(prog, frame6).ctx_out)
        assert skb["cb"][0] == int.from_bytes(ETH_P_IPV6.to_bytes(2, "big"), "little")


def test_skb_context_in_and_out(kernel):
    with kernel.load_insns(SKB_LEN_AND_PROTO, "socket_filter") as prog:
        ctx = kernel.sk_buff(mark=5, priority=3, cb=(1, 2, 3), tstamp=1234, ifindex=1)
        skb = kernel.parse_sk_buff(kernel.test_run(prog, FRAME, ctx=ctx).ctx_out)
        assert (skb["mark"], skb["priority"], skb["tstamp"]) == (5, 3, 1234)
        assert skb["cb"] == (int.from_bytes(ETH_P_IP.to_bytes(2, "big"), "little"), 2, 3, 0, 77)


def test_repeat_gives_a_positive_duration(kernel):
    with kernel.load_insns(XDP_VISIBLE_LEN, "xdp") as prog:
        result = kernel.test_run(prog, FRAME, repeat=1000)
        assert result.repeat == 1000 and result.duration_ns > 0 and result.retval == len(FRAME)
        assert prog.test_run(FRAME).retval == len(FRAME)  # the method form
        assert kernel.test_run(prog.fd, FRAME, prog_type="xdp").retval == len(FRAME)  # a bare fd
        with pytest.raises(BpforgeError, match="repeat"):
            kernel.test_run(prog, FRAME, repeat=0)
    with pytest.raises(BpforgeError, match="closed"):
        kernel.test_run(prog, FRAME)


def test_repeat_does_not_reset_the_packet(kernel):
    # ++data[0] when the packet has a byte, then pass; five runs leave 5 (XDP and tc alike)
    bump = [Insn.make("mov64_reg", dst=4, src=2), Insn.make("add64_imm", dst=4, imm=1),
            Insn.make("jgt_reg", dst=4, src=3, off=3), Insn.make("ldx8", dst=5, src=2, off=0),
            Insn.make("add64_imm", dst=5, imm=1), Insn.make("stx8", dst=2, src=5, off=0)] + ret(XDP_PASS)
    xdp_bounds = [Insn.make("ldx32", dst=2, src=1, off=0), Insn.make("ldx32", dst=3, src=1, off=4)]
    tc_bounds = [Insn.make("ldx32", dst=2, src=1, off=76), Insn.make("ldx32", dst=3, src=1, off=80)]
    for bounds, prog_type in ((xdp_bounds, "xdp"), (tc_bounds, "sched_cls")):
        with kernel.load_insns(bounds + bump, prog_type) as prog:
            assert kernel.test_run(prog, bytes(20), repeat=5).data_out == b"\x05" + bytes(19)
    shrink_head = [Insn.make("mov64_imm", dst=2, imm=2), call(44)] + ret(XDP_PASS)
    with kernel.load_insns(shrink_head, "xdp") as prog:
        assert len(kernel.test_run(prog, bytes(30), repeat=5).data_out) == 20


@pytest.mark.parametrize("prog_type, data, ctx, err, reason", [
    ("xdp", b"\0" * 13, None, errno.EINVAL, "at least ETH_HLEN (14)"),
    ("socket_filter", b"", None, errno.EINVAL, "at least ETH_HLEN (14)"),
    ("sched_cls", FRAME * 80, None, errno.EINVAL, "at most 3712"),
    ("xdp", FRAME, "xdp_md(len(FRAME) + 1)", errno.EINVAL, "data_end is"),
    ("xdp", FRAME, "xdp_md(len(FRAME), meta_len=6)", errno.EINVAL, "multiple of 4"),
    ("xdp", FRAME, "xdp_md(len(FRAME), rx_queue_index=1)", errno.EINVAL, "needs an ingress_ifindex"),
    ("xdp", FRAME, "xdp_md(len(FRAME), ingress_ifindex=99999)", errno.ENODEV, "does not exist"),
    ("socket_filter", FRAME, "sk_buff(tc_classid=1)", errno.EINVAL, "tc_classid must be 0"),
    ("socket_filter", FRAME, "sk_buff(len=1, mark=2)", errno.EINVAL, "len must be 0"),
    ("sched_cls", FRAME, "sk_buff(wire_len=3)", errno.EINVAL, "wire_len = 3"),
    ("sched_cls", FRAME, "sk_buff(ifindex=99999)", errno.ENODEV, "does not exist"),
    ("sched_cls", FRAME, "sk_buff() + b'\\1'", errno.E2BIG, "past the kernel's struct"),
])
def test_refused_runs_say_why(kernel, prog_type, data, ctx, err, reason):
    context = eval(ctx, {"xdp_md": kernel.xdp_md, "sk_buff": kernel.sk_buff, "FRAME": FRAME}) if ctx else None
    with kernel.load_insns(ret(0), prog_type) as prog, pytest.raises(kernel.TestRunError) as info:
        kernel.test_run(prog, data, ctx=context)
    assert info.value.errno == err
    assert reason in str(info.value)


def test_type_without_a_test_run(kernel):
    if not kernel.prog_type_supported("kprobe"):
        pytest.skip("this kernel does not load kprobe programs")
    with kernel.load_insns(ret(0), "kprobe") as prog, pytest.raises(kernel.TestRunError) as info:
        kernel.test_run(prog, FRAME)
    assert "no test run for kprobe programs" in str(info.value)
