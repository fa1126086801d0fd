"""Packet builders for the kernel tests (Ethernet, VLAN, IPv4, IPv6, TCP, UDP, ICMP, ICMPv6, with correct
checksums) and checks of the builders themselves, so a failing kernel test is about the program."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from difftest.packets import checksum  # RFC 1071, shared with the differential harness

ETH_P_IP, ETH_P_IPV6, ETH_P_ARP, ETH_P_8021Q = 0x0800, 0x86DD, 0x0806, 0x8100
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
SYN, ACK = 0x02, 0x10
CLIENT_MAC, ROUTER_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")




def addr(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def pseudo_header(src: str, dst: str, proto: int, length: int) -> bytes:
    if ":" in src:
        return addr(src) + addr(dst) + struct.pack("!IxxxB", length, proto)
    return addr(src) + addr(dst) + struct.pack("!BBH", 0, proto, length)


def eth(proto: int, payload: bytes, *, dst: bytes = ROUTER_MAC, src: bytes = CLIENT_MAC,
        vlan: int | None = None) -> bytes:
    if vlan is not None:
        return dst + src + struct.pack("!HHH", ETH_P_8021Q, vlan, proto) + payload
    return dst + src + struct.pack("!H", proto) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, tos: int = 0, frag: int = 0,
         options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, 4 * ihl + len(payload), 0x1234, frag, ttl, proto, 0,
                         addr(src), addr(dst)) + options
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def ipv6(src: str, dst: str, nexthdr: int, payload: bytes, *, hop_limit: int = 64) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), nexthdr, hop_limit) + addr(src) + addr(dst) + payload


def tcp(src: str, dst: str, sport: int, dport: int, *, flags: int = SYN, payload: bytes = b"") -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, flags, 65535, 0, 0) + payload
    csum = checksum(pseudo_header(src, dst, TCP, len(seg)) + seg)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    csum = checksum(pseudo_header(src, dst, UDP, len(seg)) + seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", csum) + seg[8:]


def icmp_echo(ident: int = 7, seq: int = 1, payload: bytes = b"ping") -> bytes:
    msg = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def tcp4(src: str, dst: str, sport: int, dport: int, **kw) -> bytes:
    """A whole Ethernet/IPv4/TCP frame."""
    payload = kw.pop("payload", b"")
    flags = kw.pop("flags", SYN)
    return eth(ETH_P_IP, ipv4(src, dst, TCP, tcp(src, dst, sport, dport, flags=flags, payload=payload), **kw))


def udp4(src: str, dst: str, sport: int, dport: int, payload: bytes = b"", **kw) -> bytes:
    return eth(ETH_P_IP, ipv4(src, dst, UDP, udp(src, dst, sport, dport, payload), **kw))


def tcp6(src: str, dst: str, sport: int, dport: int, **kw) -> bytes:
    return eth(ETH_P_IPV6, ipv6(src, dst, TCP, tcp(src, dst, sport, dport, **kw)))


def udp6(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    return eth(ETH_P_IPV6, ipv6(src, dst, UDP, udp(src, dst, sport, dport, payload)))


# ---- reading frames back ------------------------------------------------------------------------------------

def parse(frame: bytes) -> dict:
    """The fields the tests look at, from an Ethernet/IPv4|IPv6/TCP|UDP|ICMP frame, with checksum verdicts
    (`ip_csum_ok`, `l4_csum_ok`)."""
    out = {"dst_mac": frame[0:6], "src_mac": frame[6:12], "proto": struct.unpack_from("!H", frame, 12)[0]}
    l3 = frame[14:]
    if out["proto"] == ETH_P_IP:
        ihl = (l3[0] & 0xF) * 4
        total = struct.unpack_from("!H", l3, 2)[0]
        out.update(tos=l3[1], ttl=l3[8], l4proto=l3[9], src=socket.inet_ntop(socket.AF_INET, l3[12:16]),
                   dst=socket.inet_ntop(socket.AF_INET, l3[16:20]), ip_csum_ok=checksum(l3[:ihl]) == 0)
        l4 = l3[ihl:total]
    else:
        plen = struct.unpack_from("!H", l3, 4)[0]
        out.update(l4proto=l3[6], hop_limit=l3[7], src=socket.inet_ntop(socket.AF_INET6, l3[8:24]),
                   dst=socket.inet_ntop(socket.AF_INET6, l3[24:40]))
        l4 = l3[40:40 + plen]
    proto = out["l4proto"]
    if proto in (TCP, UDP):
        out["sport"], out["dport"] = struct.unpack_from("!HH", l4)
        pseudo = pseudo_header(out["src"], out["dst"], proto, len(l4))
        out["l4_csum_ok"] = checksum(pseudo + l4) == 0
    elif proto == ICMP:
        out.update(icmp_type=l4[0], l4_csum_ok=checksum(l4) == 0)
    elif proto == ICMPV6:
        pseudo = pseudo_header(out["src"], out["dst"], ICMPV6, len(l4))
        out.update(icmp_type=l4[0], l4_csum_ok=checksum(pseudo + l4) == 0)
    return out


# ---- shared by the kernel test modules --------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_leaked_fds():
    """Every kernel test closes every map and program it opened (imported by each test_kernel module)."""
    before = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else set()
    yield
    if before:
        leaked = set(os.listdir("/proc/self/fd")) - before
        assert not leaked, f"file descriptors left open: {sorted(leaked)}"


# ---- the builders' own tests --------------------------------------------------------------------------------

def test_checksum_rfc1071_example():
    # RFC 1071 section 3: the one's-complement sum of 0001 f203 f4f5 f6f7 is ddf2 (checksum 220d).
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_frames_parse_back_with_valid_checksums():
    for frame in (tcp4("10.0.0.1", "10.0.0.2", 1234, 80), udp4("10.0.0.1", "10.0.0.2", 53, 53, b"q"),
                  tcp6("2001:db8::1", "2001:db8::2", 1, 2), udp6("2001:db8::1", "2001:db8::2", 3, 4, b"xyz")):
        fields = parse(frame)
        assert fields["l4_csum_ok"]
        assert fields.get("ip_csum_ok", True)
    fields = parse(tcp4("10.0.0.1", "10.0.0.2", 1234, 80))
    assert (fields["src"], fields["dst"], fields["sport"], fields["dport"]) == ("10.0.0.1", "10.0.0.2", 1234, 80)
