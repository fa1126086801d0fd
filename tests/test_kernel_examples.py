"""The example programs run in the kernel on realistic packets: return codes, rewritten packets (addresses,
ports, checksums) and the map state each program leaves behind, as its C source says it should."""

from __future__ import annotations

import contextlib
import dataclasses
import struct

import pytest
from conftest import EXAMPLES
from test_kernel_packets import (
    ACK,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    ICMP,
    ICMPV6,
    ROUTER_MAC,
    SYN,
    TCP,
    UDP,
    addr,
    eth,
    icmp_echo,
    ipv4,
    ipv6,
    parse,
    tcp,
    tcp4,
    tcp6,
    udp4,
    udp6,
)

from bpforge.elf import read_object

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
TC_ACT_OK = 0
u32 = struct.Struct("<I").pack


def obj(name: str):
    path = EXAMPLES / "obj" / name
    return read_object(path.read_bytes(), filename=str(path))


@contextlib.contextmanager
def loaded(kernel, name: str, prog_type: str, **options):
    o = obj(name)
    with kernel.load_linked(o.linked(), o, prog_type=prog_type, **options) as prog:
        yield prog


def percpu_sum(kmap, key: bytes, fmt: str) -> tuple[int, ...]:
    """Field-wise sum over CPUs of a per-CPU value."""
    value = kmap.lookup(key)
    rows = [struct.unpack(fmt, v) for v in kmap.cpu_values(value)]
    return tuple(sum(col) for col in zip(*rows))


VARIANTS = ["", ".v4"]  # every program also as built with -mcpu=v4


# ---- xdp_counter ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_xdp_counter_classifies_and_counts(kernel, variant):
    frames = {
        2: tcp4("10.0.0.1", "10.0.0.2", 1234, 80),
        3: udp4("10.0.0.1", "10.0.0.2", 53, 53, b"x" * 100),
        4: eth(ETH_P_IP, ipv4("10.0.0.1", "10.0.0.2", ICMP, icmp_echo())),
        5: eth(ETH_P_IP, ipv4("10.0.0.1", "10.0.0.2", 47, b"gre!")),
        6: tcp6("2001:db8::1", "2001:db8::2", 1, 2),
        7: udp6("2001:db8::1", "2001:db8::2", 3, 4, b"y" * 1500),
        8: eth(ETH_P_IPV6, ipv6("2001:db8::1", "2001:db8::2", ICMPV6, b"\x80\0\0\0echo")),
        1: eth(ETH_P_ARP, bytes(28)),
        0: eth(0x88CC, bytes(46)),  # LLDP
        10: eth(ETH_P_IP, b""),  # an IPv4 ethertype without an IPv4 header
    }
    with loaded(kernel, f"xdp_counter{variant}.o", "xdp") as prog:
        for frame in frames.values():
            result = kernel.test_run(prog, frame)
            assert result.retval == XDP_PASS and result.data_out == frame
        stats, hist = prog.maps["class_stats"], prog.maps["size_hist"]
        for cls in range(11):
            expected = (1, len(frames[cls])) if cls in frames else (0, 0)
            assert percpu_sum(stats, u32(cls), "<QQ") == expected, cls
        buckets = {}
        for frame in frames.values():
            bucket = min(len(frame) >> 6, 23)
            buckets[bucket] = buckets.get(bucket, 0) + 1
        for bucket in range(24):
            assert hist.lookup(u32(bucket)) == struct.pack("<Q", buckets.get(bucket, 0))
        kernel.test_run(prog, frames[2], repeat=50)
        assert percpu_sum(stats, u32(2), "<QQ") == (51, 51 * len(frames[2]))


# ---- xdp_firewall -----------------------------------------------------------------------------------------

def _firewall_rules(prog):
    prog.maps["src4_deny"].update(struct.pack("<I", 16) + addr("10.66.0.0"), u32(7))
    prog.maps["src6_deny"].update(struct.pack("<I", 48) + addr("2001:db8:bad::"), u32(13))
    prog.maps["port_deny"].update(struct.pack("!BBH", TCP, 0, 23), u32(9))
    prog.maps["port_deny"].update(struct.pack("!BBH", UDP, 0, 53), u32(11))


@pytest.mark.parametrize("variant", VARIANTS)
def test_xdp_firewall_drops_by_prefix_and_port(kernel, variant):
    bad_ihl = bytearray(tcp4("10.1.1.1", "10.0.0.2", 1, 80))
    bad_ihl[14] = 0x44  # IHL 4: shorter than an IPv4 header
    cases = [  # (frame, verdict, rule that counts the drop)
        (tcp4("10.66.1.2", "10.0.0.2", 1234, 80), XDP_DROP, 7),
        (tcp4("10.67.1.2", "10.0.0.2", 1234, 80), XDP_PASS, None),
        (tcp4("10.1.1.1", "10.0.0.2", 1234, 23), XDP_DROP, 9),
        (eth(ETH_P_IP, ipv4("10.1.1.1", "10.0.0.2", TCP, tcp("10.1.1.1", "10.0.0.2", 1, 23)), vlan=100),
         XDP_DROP, 9),
        (eth(ETH_P_IP, ipv4("10.1.1.1", "10.0.0.2", TCP, tcp("10.1.1.1", "10.0.0.2", 1, 23),
                            options=b"\x01\x01\x01\x00")), XDP_DROP, 9),  # IHL 6
        (udp4("10.1.1.1", "10.0.0.2", 5353, 53, b"query"), XDP_DROP, 11),
        (udp4("10.1.1.1", "10.0.0.2", 5353, 5353, b"mdns"), XDP_PASS, None),
        (udp6("2001:db8:bad::5", "2001:db8::2", 1, 80), XDP_DROP, 13),
        (udp6("2001:db8:beef::5", "2001:db8::2", 1, 53), XDP_DROP, 11),
        (tcp6("2001:db8:beef::5", "2001:db8::2", 1, 443), XDP_PASS, None),
        (bytes(bad_ihl), XDP_DROP, 0),
        (eth(ETH_P_ARP, bytes(28)), XDP_PASS, None),
    ]
    with loaded(kernel, f"xdp_firewall{variant}.o", "xdp") as prog:
        _firewall_rules(prog)
        counts: dict[int, tuple[int, int]] = {}
        for frame, verdict, rule in cases:
            result = kernel.test_run(prog, frame)
            assert result.retval == verdict, parse(frame) if frame[12:14] != b"\x08\x06" else frame
            assert result.data_out == frame
            if rule is not None:
                packets, size = counts.get(rule, (0, 0))
                counts[rule] = (packets + 1, size + len(frame))
        for rule in range(256):
            assert percpu_sum(prog.maps["drop_stats"], u32(rule), "<QQ") == counts.get(rule, (0, 0)), rule


# ---- xdp_lb -----------------------------------------------------------------------------------------------

RING_SIZE, STATS_LRU, STATS_NEW_CONN, STATS_ICMP, STATS_REV_NAT = 4099, 64, 65, 66, 67
NEXTHOP = bytes.fromhex("020000000099")
VIP4, REAL4, CLIENT4 = "10.0.0.100", "10.1.0.5", "192.168.1.10"
VIP6, REAL6, CLIENT6 = "2001:db8::100", "2001:db8:1::5", "2001:db8:2::10"


def _lb_config(prog):
    def vip_key(vip: str, port: int, proto: int) -> bytes:
        return addr(vip).ljust(16, b"\0") + struct.pack("!HBB", port, proto, 0)

    prog.maps["vip_map"].update(vip_key(VIP4, 80, TCP), struct.pack("<II", 0, 0))
    prog.maps["vip_map"].update(vip_key(VIP6, 53, UDP), struct.pack("<II", 0, 1))
    prog.maps["reals"].update(u32(1), addr(REAL4).ljust(16, b"\0") + struct.pack("!HBB", 8080, 0, 0))
    prog.maps["reals"].update(u32(2), addr(REAL6) + struct.pack("!HBB", 0, 1, 0))  # F_REAL_IPV6, keep port
    rings = prog.maps["ch_rings"]
    for slot in range(RING_SIZE):  # every ring slot of VIP 0 -> real 1, of VIP 1 -> real 2
        rings.update(u32(slot), u32(1))
        rings.update(u32(RING_SIZE + slot), u32(2))
    prog.maps["ctl_array"].update(u32(0), NEXTHOP + b"\0\0")


@pytest.fixture(params=VARIANTS)
def lb(kernel, request):
    with loaded(kernel, f"xdp_lb{request.param}.o", "xdp",
                max_entries={"conn_table": 1024, "rev_nat": 1024}) as prog:
        _lb_config(prog)
        yield prog


def test_xdp_lb_forwards_a_new_tcp_flow_to_its_real(kernel, lb):
    syn = tcp4(CLIENT4, VIP4, 40000, 80, payload=b"GET /")
    result = kernel.test_run(lb, syn)
    assert result.retval == XDP_TX
    out = parse(result.data_out)
    assert len(result.data_out) == len(syn)
    assert (out["src"], out["sport"], out["dst"], out["dport"]) == (CLIENT4, 40000, REAL4, 8080)
    assert out["ip_csum_ok"] and out["l4_csum_ok"]
    assert (out["dst_mac"], out["src_mac"]) == (NEXTHOP, ROUTER_MAC)  # to the next hop, from us
    assert result.data_out[38:50] == syn[38:50] and result.data_out[52:] == syn[52:]  # only ports, sum
    # state: a connection, a reverse-NAT entry for the reply, per-VIP and new-connection counters
    flow = (addr(CLIENT4).ljust(16, b"\0") + addr(VIP4).ljust(16, b"\0") + struct.pack("!HH", 40000, 80)
            + bytes([TCP, 0, 0, 0]))
    conn = lb.maps["conn_table"].lookup(flow)
    assert conn is not None and struct.unpack_from("<I", conn)[0] == 1
    reply = (addr(REAL4).ljust(16, b"\0") + addr(CLIENT4).ljust(16, b"\0") + struct.pack("!HH", 8080, 40000)
             + bytes([TCP, 0, 0, 0]))
    assert lb.maps["rev_nat"].lookup(reply) == addr(VIP4).ljust(16, b"\0") + struct.pack("!HHI", 80, 0, 0)
    assert percpu_sum(lb.maps["lb_stats"], u32(0), "<QQ") == (1, len(syn))
    assert percpu_sum(lb.maps["lb_stats"], u32(STATS_NEW_CONN), "<QQ") == (1, 0)

    # the next packet of the flow (not a SYN) finds the connection
    ack = tcp4(CLIENT4, VIP4, 40000, 80, flags=ACK)
    result = kernel.test_run(lb, ack)
    assert result.retval == XDP_TX and parse(result.data_out)["dst"] == REAL4
    assert percpu_sum(lb.maps["lb_stats"], u32(STATS_LRU), "<QQ") == (1, 0)  # a hit; the SYN skipped the table

    # the real's reply gets the VIP back as its source
    back = tcp4(REAL4, CLIENT4, 8080, 40000, flags=SYN | ACK)
    result = kernel.test_run(lb, back)
    assert result.retval == XDP_TX
    out = parse(result.data_out)
    assert (out["src"], out["sport"], out["dst"], out["dport"]) == (VIP4, 80, CLIENT4, 40000)
    assert out["ip_csum_ok"] and out["l4_csum_ok"]
    assert percpu_sum(lb.maps["lb_stats"], u32(STATS_REV_NAT), "<QQ") == (1, len(back))


def test_xdp_lb_ipv6_udp_keeps_the_port(kernel, lb):
    query = udp6(CLIENT6, VIP6, 5353, 53, b"\x12\x34 a dns query")
    result = kernel.test_run(lb, query)
    assert result.retval == XDP_TX
    out = parse(result.data_out)
    assert (out["src"], out["sport"], out["dst"], out["dport"]) == (CLIENT6, 5353, REAL6, 53)
    assert out["l4_csum_ok"]
    assert percpu_sum(lb.maps["lb_stats"], u32(1), "<QQ") == (1, len(query))
    assert percpu_sum(lb.maps["lb_stats"], u32(STATS_NEW_CONN), "<QQ") == (0, 1)


def test_xdp_lb_answers_pings_and_passes_or_drops_the_rest(kernel, lb):
    ping = eth(ETH_P_IP, ipv4(CLIENT4, VIP4, ICMP, icmp_echo(), ttl=17))
    result = kernel.test_run(lb, ping)
    assert result.retval == XDP_TX
    out = parse(result.data_out)
    assert (out["src"], out["dst"], out["icmp_type"], out["ttl"]) == (VIP4, CLIENT4, 0, 64)
    assert out["ip_csum_ok"] and out["l4_csum_ok"]
    assert out["dst_mac"] == NEXTHOP
    assert percpu_sum(lb.maps["lb_stats"], u32(STATS_ICMP), "<QQ") == (1, 0)
    ping6 = eth(ETH_P_IPV6, ipv6(CLIENT6, VIP6, ICMPV6, _icmp6_echo(CLIENT6, VIP6)))
    out = parse(kernel.test_run(lb, ping6).data_out)
    assert (out["src"], out["dst"], out["icmp_type"], out["hop_limit"]) == (VIP6, CLIENT6, 129, 64)
    assert out["l4_csum_ok"]

    other = tcp4(CLIENT4, "10.0.0.200", 40000, 80)  # not a VIP, no reverse NAT entry
    result = kernel.test_run(lb, other)
    assert result.retval == XDP_PASS and result.data_out == other
    options = eth(ETH_P_IP, ipv4(CLIENT4, VIP4, TCP, tcp(CLIENT4, VIP4, 1, 80), options=b"\x01" * 4))
    assert kernel.test_run(lb, options).retval == XDP_DROP
    assert kernel.test_run(lb, eth(ETH_P_ARP, bytes(28))).retval == XDP_PASS


def _icmp6_echo(src: str, dst: str) -> bytes:
    from test_kernel_packets import checksum, pseudo_header

    msg = struct.pack("!BBHHH", 128, 0, 0, 9, 1) + b"ping6"
    csum = checksum(pseudo_header(src, dst, ICMPV6, len(msg)) + msg)
    return msg[:2] + struct.pack("!H", csum) + msg[4:]


# ---- xdp_ratelimit ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_xdp_ratelimit_token_bucket(kernel, variant):
    frame = udp4("10.9.9.9", "10.0.0.1", 1000, 2000, b"flood")
    with loaded(kernel, f"xdp_ratelimit{variant}.o", "xdp") as prog:
        assert kernel.test_run(prog, frame).retval == XDP_PASS  # rate 0: limiting off
        assert prog.maps["buckets"].lookup(addr("10.9.9.9")) is None
        prog.maps["config"].update(u32(0), struct.pack("<II", 1, 2))  # 1 packet/s, burst 2
        verdicts = [kernel.test_run(prog, frame).retval for _ in range(3)]
        assert verdicts == [XDP_PASS, XDP_PASS, XDP_DROP]  # a second's worth of refill is far away
        counters = [percpu_sum(prog.maps["counters"], u32(i), "<Q")[0] for i in range(3)]
        assert counters == [2, 1, 1]  # passed, dropped, new sources
        # repeat: one syscall, the map state carries from run to run, retval is the last run's
        other = udp4("10.9.9.10", "10.0.0.1", 1000, 2000, b"flood")
        assert kernel.test_run(prog, other, repeat=5).retval == XDP_DROP
        counters = [percpu_sum(prog.maps["counters"], u32(i), "<Q")[0] for i in range(3)]
        assert counters == [4, 4, 2]
        assert kernel.test_run(prog, tcp6("2001:db8::1", "2001:db8::2", 1, 2)).retval == XDP_PASS


# ---- global_data ------------------------------------------------------------------------------------------

def test_global_data_counts_in_bss(kernel):
    with loaded(kernel, "global_data.o", "xdp") as prog:
        for _ in range(3):
            assert kernel.test_run(prog, tcp4("10.0.0.1", "10.0.0.2", 1, 2)).retval == XDP_PASS  # not UDP
        verdict = kernel.test_run(prog, udp4("10.0.0.1", "10.0.0.2", 1, 2, b"u")).retval
        seen, matched, dropped = struct.unpack("<QQQ", prog.maps[".bss"].lookup(u32(0)))
        assert (seen, matched, dropped) == (4, 1, 1 if verdict == XDP_DROP else 0)  # drops 1 in 100


@pytest.mark.parametrize("variant", VARIANTS)
def test_global_data_with_rodata_set_before_load(kernel, variant):
    # Like a libbpf skeleton setting `const volatile` knobs: a .rodata map with drop_one_in = 1, given to the
    # loader (the verifier then knows its contents: the map is frozen).
    o = obj(f"global_data{variant}.o")
    rodata = next(m for m in o.maps if m.section == ".rodata")
    knobs = dataclasses.replace(rodata, initial=struct.pack("<BBxxI", 1, UDP, 1))
    with kernel.KernelMap.create(knobs) as ro:
        assert ro.frozen
        with kernel.load_linked(o.linked(), o, prog_type="xdp", maps={".rodata": ro}) as prog:
            small = udp4("10.0.0.1", "10.0.0.2", 1, 2, b"u")
            big = udp4("10.0.0.1", "10.0.0.2", 1, 2, bytes(1600))
            assert kernel.test_run(prog, small).retval == XDP_DROP
            assert kernel.test_run(prog, big).retval == XDP_DROP
            assert kernel.test_run(prog, tcp4("10.0.0.1", "10.0.0.2", 1, 2)).retval == XDP_PASS
            budget, tag = struct.unpack("<q8s", prog.maps[".data"].lookup(u32(0)))
            assert (budget, tag) == (100000 - 1 - 5, b"bpforge\0")  # size_cost[0] + size_cost[3]
            assert struct.unpack("<QQQ", prog.maps[".bss"].lookup(u32(0))) == (3, 2, 2)
        assert not ro.closed


# ---- bpf2bpf_loop -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_bpf2bpf_loop_parses_telemetry(kernel, variant):
    samples = struct.pack("!hhh", 10, -20, 40)
    payload = bytes([0xB7, 1, 2, 0]) + bytes([1, len(samples)]) + samples + bytes([5, 3, 1, 2, 3])
    good = udp4("10.0.0.1", "10.0.0.2", 9999, 7777, payload)
    bad = udp4("10.0.0.1", "10.0.0.2", 9999, 7777, bytes([0xB6, 1, 0, 0]))
    truncated = udp4("10.0.0.1", "10.0.0.2", 9999, 7777, bytes([0xB7, 1, 1, 0, 2, 60, 1]))
    with loaded(kernel, f"bpf2bpf_loop{variant}.o", "xdp") as prog:
        assert kernel.test_run(prog, good).retval == XDP_PASS
        assert kernel.test_run(prog, bad).retval == XDP_DROP
        assert kernel.test_run(prog, truncated).retval == XDP_DROP
        assert kernel.test_run(prog, udp4("10.0.0.1", "10.0.0.2", 9999, 53, payload)).retval == XDP_PASS
        verdicts = prog.maps["verdicts"]
        assert [struct.unpack("<Q", verdicts.lookup(u32(i)))[0] for i in range(2)] == [1, 2]
        stats = prog.maps["tlv_stats"]
        assert struct.unpack("<QQ", stats.lookup(u32(1))) == (1, sum(samples))
        assert struct.unpack("<QQ", stats.lookup(u32(5))) == (1, 6)
        assert struct.unpack("<qiiQ", prog.maps["sample_summary"].lookup(u32(0))) == (10, -20, 40, 1)


# ---- tc_classifier ----------------------------------------------------------------------------------------

def _class(class_idx: int, mark: int, priority: int, classid: int, set_dscp: int, prio_delta: int) -> bytes:
    return struct.pack("<IIIIBbxx", class_idx, mark, priority, classid, set_dscp, prio_delta)


@pytest.mark.parametrize("variant", VARIANTS)
def test_tc_classifier_marks_and_remarks(kernel, variant):
    voip = _class(3, 0x10, 6, 0x10003, 46, 0)
    scavenger = _class(5, 0x20, 2, 0x10005, 0xFF, -1)
    with loaded(kernel, f"tc_classifier{variant}.o", "sched_cls") as prog:
        prog.maps["port_class"].update(struct.pack("!BBH", UDP, 0, 5060), voip)
        prog.maps["dscp_class"].update(bytes([8]), scavenger)  # CS1

        def run(frame, ctx=None):
            result = kernel.test_run(prog, frame, ctx=ctx)
            assert result.retval == TC_ACT_OK
            skb = kernel.parse_sk_buff(result.ctx_out)
            return result.data_out, skb["mark"], skb["priority"]

        sip = udp4("10.0.0.1", "10.0.0.2", 5060, 5060, b"INVITE", tos=0x01)  # ECN bit set
        out, mark, prio = run(sip)
        assert (mark, prio) == (0x10, 6)
        fields = parse(out)
        assert fields["tos"] == 46 << 2 | 0x01 and fields["ip_csum_ok"]  # re-marked EF, ECN kept
        assert out[:15] == sip[:15] and out[16:24] == sip[16:24] and out[26:] == sip[26:]

        out, mark, prio = run(udp4("10.0.0.1", "10.0.0.2", 5060, 5060, b"INVITE", tos=8 << 2))
        assert (mark, prio) == (0x10, 5)  # the port class, nudged by the CS1 delta
        assert parse(out)["tos"] == 46 << 2 and parse(out)["ip_csum_ok"]

        web = tcp4("10.0.0.1", "10.0.0.2", 40000, 443, tos=8 << 2)
        out, mark, prio = run(web)
        assert (mark, prio, out) == (0x20, 2, web)  # DSCP class only; it keeps the DSCP

        ssh = tcp4("10.0.0.1", "10.0.0.2", 40000, 22)
        assert run(ssh) == (ssh, 0, 0)
        assert run(ssh, kernel.sk_buff(mark=0x77, priority=1)) == (ssh, 0x77, 1)  # untouched

        sip6 = udp6("2001:db8::1", "2001:db8::2", 5060, 5060, b"INVITE")
        assert run(sip6) == (sip6, 0x10, 6)  # IPv6 is classified but has no header checksum to fix

        counts = [percpu_sum(prog.maps["class_stats"], u32(i), "<Q")[0] for i in range(8)]
        assert counts == [0, 0, 0, 3, 0, 1, 0, 0]


# ---- socket_filter ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_socket_filter_accepts_http_only(kernel, variant):
    http = tcp4("10.0.0.1", "10.0.0.2", 40000, 80, payload=b"GET / HTTP/1.1\r\n\r\n")
    cases = [
        (http, len(http) - 14),  # the snap length is the L3 length: the kernel pulled the Ethernet header
        (tcp4("10.0.0.1", "10.0.0.2", 40000, 443), 40),
        (tcp4("10.0.0.1", "10.0.0.2", 40000, 22), 0),
        (udp4("10.0.0.1", "10.0.0.2", 40000, 80), 0),
        (tcp6("2001:db8::1", "2001:db8::2", 40000, 80), 0),
        (tcp4("10.0.0.1", "255.255.255.255", 40000, 80), 0),
        (tcp4("10.0.0.1", "10.0.0.2", 40000, 80, frag=0x0010), 0),  # a later fragment
        (eth(ETH_P_IP, ipv4("10.0.0.1", "10.0.0.2", TCP, tcp("10.0.0.1", "10.0.0.2", 1, 80),
                            options=b"\x01" * 8)), 48),  # IHL 7: LD_IND finds the port
    ]
    with loaded(kernel, f"socket_filter{variant}.o", "socket_filter") as prog:
        for frame, expected in cases:
            result = kernel.test_run(prog, frame)
            assert result.retval == expected, parse(frame)
            assert result.data_out == bytes(14) + frame[14:]


# ---- legacy maps and assembly -----------------------------------------------------------------------------

def test_legacy_maps_program_counts(kernel):
    # libbpf >= 1.0 refuses `maps` sections; the kernel has no opinion, so bpforge loads it.
    with loaded(kernel, "legacy_maps.o", "xdp") as prog:
        for _ in range(2):
            assert kernel.test_run(prog, tcp4("10.0.0.7", "10.0.0.2", 1, 2)).retval == XDP_PASS
        kernel.test_run(prog, udp4("10.0.0.8", "10.0.0.2", 1, 2))
        assert percpu_sum(prog.maps["proto_count"], u32(TCP), "<Q") == (2,)
        assert percpu_sum(prog.maps["proto_count"], u32(UDP), "<Q") == (1,)
        seen = prog.maps["src_seen"]
        assert dict(seen.items()) == {addr("10.0.0.7"): struct.pack("<Q", 2), addr("10.0.0.8"): struct.pack("<Q", 1)}


def test_asm_xdp_pass(kernel):
    with loaded(kernel, "asm_xdp_pass.o", "xdp") as prog:
        for frame in (tcp4("10.0.0.1", "10.0.0.2", 1, 2), bytes(14), eth(ETH_P_IPV6, bytes(40))):
            result = kernel.test_run(prog, frame)
            assert (result.retval, result.data_out) == (XDP_PASS, frame)

