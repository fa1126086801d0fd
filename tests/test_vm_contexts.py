"""Program contexts as BPF_PROG_TEST_RUN builds them, in every engine: what the program reads from its context
(xdp_md with metadata and ingress device, __sk_buff fields from the Ethernet header and the caller's context,
the dummy socket, flow keys, sk_lookup), what comes back (data_out, ctx_out), and the inputs the kernel refuses.
Each case runs in the reference interpreter, the fast tier and, where bpf() works, the kernel."""

from __future__ import annotations

import errno
import struct

import pytest
from test_kernel_packets import ETH_P_IP, eth, no_leaked_fds, tcp4, tcp6  # noqa: F401

from bpforge.errors import BpforgeError
from bpforge.formats import load_program
from bpforge.isa.contexts import FLOW_KEYS, SK_BUFF, SK_LOOKUP, XDP_MD, input_refusal
from bpforge.kernel.testrun import flow_keys, sk_buff, sk_lookup, xdp_md
from bpforge.runner import run_loaded
from bpforge.vm.context import TestRunRefused

FRAME = tcp4("10.0.0.1", "10.0.0.2", 1234, 80, payload=b"hello")
ALL_ENGINES = ("interp", "fast", "kernel")


@pytest.fixture
def engines(request):
    """The engines to compare: both VM tiers, and the kernel where bpf() works."""
    from bpforge.kernel import kernel_available

    return ALL_ENGINES if kernel_available() is None else ALL_ENGINES[:2]


def run_all(tmp_path, engines, source: str, prog_type: str, data: bytes, ctx: bytes | None = None, **options):
    path = tmp_path / "prog.s"
    path.write_text(source)
    loaded = load_program(path, prog_type=prog_type)
    reports = {e: run_loaded(loaded, data, engine=e, ctx=ctx, **options) for e in engines}
    shapes = {(r.retval, r.data_out, r.ctx_out) for r in reports.values()}
    assert len(shapes) == 1, {e: (r.retval, r.data_out.hex(), r.ctx_out and r.ctx_out.hex()) for e, r in reports.items()}
    return reports["interp"]


def read_field(offset: int, size: int = 4) -> str:
    return f"r0 = *(u{size * 8} *)(r1 + {offset})\nexit\n"


XDP_VISIBLE = "r2 = *(u32 *)(r1 + 0)\nr0 = *(u32 *)(r1 + 4)\nr0 -= r2\nexit\n"
XDP_META_LEN = "r2 = *(u32 *)(r1 + 8)\nr0 = *(u32 *)(r1 + 0)\nr0 -= r2\nexit\n"


# ---- xdp ---------------------------------------------------------------------------------------------------

def test_xdp_metadata_comes_from_the_context(tmp_path, engines):
    # The repro: xdp_md.data = 8 makes the first 8 input bytes metadata, so 56 of 64 are visible.
    packet = bytes(range(64))
    ctx = bytes.fromhex("0800000040000000") + bytes(16)
    result = run_all(tmp_path, engines, XDP_VISIBLE, "xdp", packet, ctx)
    assert result.retval == 56 and result.data_out == packet
    assert XDP_MD.unpack(result.ctx_out) == dict(data=8, data_end=64, data_meta=0, ingress_ifindex=0,
                                                 rx_queue_index=0, egress_ifindex=0)
    assert run_all(tmp_path, engines, XDP_META_LEN, "xdp", packet, ctx).retval == 8


def test_xdp_ingress_device(tmp_path, engines):
    source = read_field(XDP_MD.offset("ingress_ifindex"))
    assert run_all(tmp_path, engines, source, "xdp", FRAME).retval == 1  # no context: loopback's queue
    assert run_all(tmp_path, engines, source, "xdp", FRAME, xdp_md(len(FRAME))).retval == 1
    assert run_all(tmp_path, engines, source, "xdp", FRAME, xdp_md(len(FRAME), ingress_ifindex=1)).retval == 1
    assert run_all(tmp_path, engines, "r0 = 0\nexit\n", "xdp", FRAME).ctx_out is None  # only when given


def test_xdp_packets_past_a_page_continue_in_fragments(tmp_path, engines):
    big = bytes(range(256)) * 20  # 5120 bytes: 3520 linear, the rest in a fragment
    result = run_all(tmp_path, engines, XDP_VISIBLE, "xdp", big)
    assert result.retval == 3520 and result.data_out == big
    with_meta = run_all(tmp_path, engines, XDP_VISIBLE, "xdp", big, xdp_md(len(big), meta_len=8))
    assert with_meta.retval == 3520  # the metadata came out of the headroom, so the linear part grew by 8


def test_xdp_adjust_meta_output_starts_at_the_metadata(tmp_path, engines):
    source = ("r6 = r1\nr2 = -8\ncall bpf_xdp_adjust_meta\n"
              "r0 = *(u32 *)(r6 + 0)\nr1 = *(u32 *)(r6 + 8)\nr0 -= r1\nexit\n")
    result = run_all(tmp_path, engines, source, "xdp", FRAME)
    assert result.retval == 8 and result.data_out == bytes(8) + FRAME


def test_xdp_repeat_continues_from_the_last_run(tmp_path, engines):
    # bpf_xdp_adjust_head(+2) five times on one xdp_buff: the kernel does not reset between repeats.
    source = "r2 = 2\ncall bpf_xdp_adjust_head\nr0 = 2\nexit\n"
    result = run_all(tmp_path, engines, source, "xdp", bytes(range(40)), repeat=5)
    assert result.data_out == bytes(range(10, 40))


# ---- sk_buff -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dst, pkt_type", [
    ("000000000000", 0),  # loopback's own address: PACKET_HOST
    ("020000000002", 3),  # someone else's unicast address: PACKET_OTHERHOST
    ("010203040506", 2),  # multicast
    ("ffffffffffff", 2),  # broadcast is multicast to a device whose broadcast address is all zeros (lo)
])
def test_pkt_type_from_the_destination_address(tmp_path, engines, dst, pkt_type):
    frame = bytes.fromhex(dst) + FRAME[6:]
    assert run_all(tmp_path, engines, read_field(SK_BUFF.offset("pkt_type")), "sched_cls", frame).retval == pkt_type


@pytest.mark.parametrize("ethertype, first_payload, protocol", [
    ("0800", "4500", 0x0008),  # IPv4: htons(ETH_P_IP) read as a u32
    ("86dd", "6000", 0xDD86),
    ("0040", "ffff", 0x0100),  # an 802.3 length field, raw IPX: htons(ETH_P_802_3)
    ("0040", "aaaa", 0x0400),  # an 802.3 length field, 802.2 LLC: htons(ETH_P_802_2) = 1024
])
def test_protocol_as_eth_type_trans_sets_it(tmp_path, engines, ethertype, first_payload, protocol):
    frame = FRAME[:12] + bytes.fromhex(ethertype + first_payload) + FRAME[16:]
    assert run_all(tmp_path, engines, read_field(SK_BUFF.offset("protocol")), "sched_cls", frame).retval == protocol


@pytest.mark.parametrize("prog_type", ["socket_filter", "sched_cls", "lwt_in", "lwt_xmit"])
def test_skb_len_and_data_out(tmp_path, engines, prog_type):
    result = run_all(tmp_path, engines, read_field(SK_BUFF.offset("len")), prog_type, FRAME)
    l2 = prog_type == "sched_cls"
    assert result.retval == (len(FRAME) if l2 else len(FRAME) - 14)
    assert result.data_out == (FRAME if l2 else bytes(14) + FRAME[14:])  # the pulled header comes back zeroed


def test_skb_context_in_and_out(tmp_path, engines):
    # The fields test_run takes from the caller's context reach the program; the program's writes to
    # mark/priority/cb come back; tc_classid (not copied back) does not.
    source = ("r2 = *(u32 *)(r1 + 8)\nr3 = *(u32 *)(r1 + 32)\nr2 += r3\nr3 = *(u32 *)(r1 + 48)\nr2 += r3\n"
              "r3 = *(u32 *)(r1 + 40)\nr2 += r3\nr3 = *(u32 *)(r1 + 160)\nr2 += r3\n"
              "*(u32 *)(r1 + 8) = r2\n*(u32 *)(r1 + 52) = r2\n*(u32 *)(r1 + 72) = 99\n"
              "*(u32 *)(r1 + 32) = 7\nr0 = r2\nexit\n")
    ctx = sk_buff(mark=5, priority=3, cb=(11, 0, 0, 0, 4), tstamp=1234, ifindex=1, wire_len=200, gso_segs=2)
    result = run_all(tmp_path, engines, source, "sched_cls", FRAME, ctx)
    assert result.retval == 5 + 3 + 11 + 1 + 200
    out = SK_BUFF.unpack(result.ctx_out)
    assert out["mark"] == out["cb"][1] == result.retval and out["priority"] == 7
    assert out["tc_classid"] == 0 and out["tstamp"] == 1234 and out["wire_len"] == 200 and out["gso_segs"] == 2


def test_wire_len_defaults_to_the_skb_length(tmp_path, engines):
    assert run_all(tmp_path, engines, read_field(SK_BUFF.offset("wire_len")), "sched_cls", FRAME).retval == len(FRAME)


CGROUP_SKB = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 8); __type(key, __u32); __type(value, __u32); }
    out SEC(".maps");
static void put(__u32 key, __u32 value) { bpf_map_update_elem(&out, &key, &value, BPF_ANY); }
SEC("cgroup_skb/ingress")
int fields(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    put(0, skb->family); put(1, skb->remote_ip4); put(2, skb->local_ip4); put(3, skb->len);
    put(4, skb->ifindex); put(5, skb->protocol); put(6, data_end - data); put(7, skb->pkt_type);
    return 1;
}
char _license[] SEC("license") = "GPL";
"""


def test_cgroup_skb_sees_the_dummy_socket(tmp_path, engines):
    # cgroup_skb programs return 0 or 1, so the fields go through a map.
    import subprocess
    import sysconfig

    from conftest import tool

    src, obj = tmp_path / "cg.c", tmp_path / "cg.o"
    src.write_text(CGROUP_SKB)
    arch = f"/usr/include/{sysconfig.get_config_var('MULTIARCH') or 'x86_64-linux-gnu'}"
    subprocess.run([tool("clang-19"), "-O2", "-g", "-target", "bpf", f"-I{arch}", "-c", str(src), "-o", str(obj)],
                   check=True)
    loaded = load_program(obj)
    dumps = set()
    for engine in engines:
        report = run_loaded(loaded, FRAME, engine=engine, dump_maps=True)
        assert report.retval == 1
        dumps.add(tuple(e["value"] for e in report.maps[0]["entries"]))
    assert len(dumps) == 1
    values = [struct.unpack("<I", bytes.fromhex(v))[0] for v in dumps.pop()]
    ip = lambda text: struct.unpack("<I", bytes(map(int, text.split("."))))[0]  # noqa: E731
    assert values == [2, ip("10.0.0.2"), ip("10.0.0.1"), len(FRAME) - 14, 1, 0x0008, len(FRAME) - 14, 3]


def test_ipv6_frame_gives_the_inet6_family(tmp_path, engines):
    frame = tcp6("fd00::1", "fd00::2", 1, 2)
    assert run_all(tmp_path, engines, read_field(SK_BUFF.offset("protocol")), "sched_cls", frame).retval == 0xDD86


# ---- flow dissector, sk_lookup, syscall ----------------------------------------------------------------------

FLOW = """r2 = *(u64 *)(r1 + 144)
r3 = *(u32 *)(r1 + 76)
r4 = *(u32 *)(r1 + 80)
r5 = r3
r5 += 34
if r5 > r4 goto drop
r5 = *(u8 *)(r3 + 23)
*(u8 *)(r2 + 9) = r5
r5 = *(u32 *)(r3 + 26)
*(u32 *)(r2 + 16) = r5
*(u16 *)(r2 + 2) = 34
*(u16 *)(r2 + 0) = 9999
r0 = 0
exit
drop:
r0 = 2
exit
"""


def test_flow_dissector_fills_its_keys(tmp_path, engines):
    result = run_all(tmp_path, engines, FLOW, "flow_dissector", FRAME)
    keys = FLOW_KEYS.unpack(result.data_out)
    assert result.retval == 0 and keys["ip_proto"] == 6 and keys["n_proto"] == 0x0008
    assert keys["nhoff"] == len(FRAME)  # 9999 clamped to the packet, and thoff (34) to [nhoff, end]
    assert keys["thoff"] == len(FRAME) and keys["ipv4_src"] == struct.unpack("<I", FRAME[26:30])[0]
    with_flags = run_all(tmp_path, engines, "r2 = *(u64 *)(r1 + 144)\nr0 = *(u32 *)(r2 + 48)\nexit\n",
                         "flow_dissector", FRAME, flow_keys(flags=4))
    assert with_flags.retval == 4 and with_flags.ctx_out == flow_keys(flags=4)


def test_sk_lookup_context(tmp_path, engines):
    ctx = sk_lookup(family=2, protocol=6, remote_ip4=0x0100000A, remote_port=0x3930, local_ip4=0x0200000A,
                    local_port=80)
    # SK_PASS (1) when the local port is 80 and the remote IPv6 address reads 0 for an IPv4 lookup.
    source = ("r2 = *(u32 *)(r1 + 60)\nr3 = *(u32 *)(r1 + 20)\nr0 = 0\nif r2 != 80 goto out\n"
              "if r3 != 0 goto out\nr2 = *(u32 *)(r1 + 16)\nif r2 != 0x100000a goto out\nr0 = 1\nout:\nexit\n")
    result = run_all(tmp_path, engines, source, "sk_lookup", b"", ctx)
    assert result.retval == 1 and result.data_out == b"" and result.ctx_out == ctx


def test_syscall_context_comes_back(tmp_path, engines):
    source = "r2 = *(u32 *)(r1 + 0)\nr2 += 1\n*(u32 *)(r1 + 4) = r2\nr0 = r2\nexit\n"
    result = run_all(tmp_path, engines, source, "syscall", b"", struct.pack("<II", 41, 0))
    assert result.retval == 42 and result.ctx_out == struct.pack("<II", 41, 42)


# ---- refused inputs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("prog_type, data, ctx, err, words", [
    ("xdp", bytes(13), None, errno.EINVAL, "at least ETH_HLEN"),
    ("xdp", FRAME, xdp_md(len(FRAME) + 1), errno.EINVAL, "data_end is"),
    ("xdp", FRAME, xdp_md(len(FRAME), meta_len=6), errno.EINVAL, "multiple of 4"),
    ("xdp", FRAME, xdp_md(len(FRAME), ingress_ifindex=99999), errno.ENODEV, "does not exist"),
    ("xdp", bytes(3520 + 17 * 4096 + 1), None, errno.ENOMEM, "fragment pages"),
    ("sched_cls", FRAME, sk_buff(tc_classid=1), errno.EINVAL, "tc_classid must be 0"),
    ("sched_cls", FRAME, sk_buff(ifindex=99999), errno.ENODEV, "does not exist"),
    ("sched_cls", bytes(3713), None, errno.EINVAL, "at most 3712"),
    ("sk_lookup", b"", None, errno.EINVAL, "needs a struct bpf_sk_lookup"),
    ("sk_lookup", b"", sk_lookup(family=99), errno.EAFNOSUPPORT, "neither AF_INET"),
    ("sk_lookup", b"", sk_lookup(family=2, local_port=70000), errno.ERANGE, "exceeds 65535"),
    ("flow_dissector", FRAME, FLOW_KEYS.pack({"nhoff": 3}), errno.EINVAL, "nhoff must be 0"),
])
def test_the_vm_refuses_what_the_kernel_refuses(tmp_path, kernel, prog_type, data, ctx, err, words):
    refusal = input_refusal(prog_type, data, ctx)
    assert refusal is not None and refusal.errno == err and words in refusal.reason
    path = tmp_path / "p.s"
    path.write_text("r0 = 0\nexit\n" if prog_type != "sk_lookup" else "r0 = 1\nexit\n")
    loaded = load_program(path, prog_type=prog_type)
    for engine in ("interp", "fast"):
        with pytest.raises(TestRunRefused) as info:
            run_loaded(loaded, data, engine=engine, ctx=ctx)
        assert info.value.errno == err and words in info.value.message
    with pytest.raises(BpforgeError) as info:
        run_loaded(loaded, data, engine="kernel", ctx=ctx)
    assert getattr(info.value, "errno", None) == err and words in info.value.message


def test_types_without_a_context_model_say_so(tmp_path):
    path = tmp_path / "p.s"
    path.write_text("r0 = 0\nexit\n")
    with pytest.raises(BpforgeError, match="does not model the context of sk_msg"):
        run_loaded(load_program(path, prog_type="sk_msg"), FRAME, engine="interp")
    # kprobe contexts are plain memory (struct pt_regs) to the program: the VM runs them on given bytes.
    regs = struct.pack("<21Q", *range(21))
    result = run_loaded(load_program(_write(tmp_path, "r0 = *(u64 *)(r1 + 80)\nexit\n"), prog_type="kprobe"), b"",
                        engine="fast", ctx=regs)
    assert result.retval == 10


def _write(tmp_path, text: str):
    path = tmp_path / "q.s"
    path.write_text(text)
    return path


def test_sk_lookup_layout_matches_uapi():
    assert (SK_LOOKUP.offset("remote_port"), SK_LOOKUP.offset("local_port"), SK_LOOKUP.size) == (36, 60, 72)
    assert (SK_BUFF.offset("hwtstamp"), SK_BUFF.size, FLOW_KEYS.size) == (184, 192, 56)
    assert eth(ETH_P_IP, b"")[12:14] == b"\x08\x00"


def test_xdp_data_end_short_of_the_input_makes_the_rest_fragments(tmp_path, engines):
    # Linux 6.18: xdp_md.data_end may stop short of the input; the bytes past it become fragments.
    packet = bytes(range(200)) * 2
    result = run_all(tmp_path, engines, XDP_VISIBLE, "xdp", packet, XDP_MD.pack(dict(data=8, data_end=100)))
    assert result.retval == 92 and result.data_out == packet
    assert XDP_MD.unpack(result.ctx_out)["data_end"] == 100  # counted from data_meta


@pytest.mark.parametrize("meta, accepted", [(216, True), (220, False), (36, True), (6, False)])
def test_xdp_metadata_may_use_the_headroom_but_struct_xdp_frame(tmp_path, kernel, meta, accepted):
    packet = bytes(400)
    ctx = xdp_md(len(packet), meta_len=meta)
    refusal = input_refusal("xdp", packet, ctx)
    assert (refusal is None) == accepted
    if accepted:
        assert run_all(tmp_path, ALL_ENGINES, XDP_META_LEN, "xdp", packet, ctx).retval == meta
    else:
        with pytest.raises(BpforgeError, match="multiple of 4 bytes, at most 216"):
            run_all(tmp_path, ("kernel",), XDP_META_LEN, "xdp", packet, ctx)


@pytest.mark.parametrize("ethertype, size, refused", [
    ("0800", 33, True), ("0800", 34, False), ("86dd", 53, True), ("86dd", 54, False), ("0806", 20, False),
])
def test_skb_frames_must_hold_their_ip_header(tmp_path, kernel, ethertype, size, refused):
    frame = (bytes(12) + bytes.fromhex(ethertype)).ljust(size, b"\0")
    assert (input_refusal("sched_cls", frame, None) is not None) == refused
    if not refused:
        run_all(tmp_path, ALL_ENGINES, "r0 = 0\nexit\n", "sched_cls", frame)
        return
    for engine in ALL_ENGINES:
        with pytest.raises(BpforgeError, match="shorter than its Ethernet and IPv"):
            run_all(tmp_path, (engine,), "r0 = 0\nexit\n", "sched_cls", frame)
