"""Realistic frames for the example programs: Ethernet (optionally 802.1Q/802.1ad tagged) + IPv4 (with
options, fragments) / IPv6 (with extension headers) + TCP / UDP / ICMP / ICMPv6 / ARP, with correct
lengths and checksums, and random fields drawn from a `random.Random`."""

from __future__ import annotations

import ipaddress
import random
import struct

ETH_P_IP, ETH_P_IPV6, ETH_P_ARP, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
HOPOPTS, ROUTING, FRAGMENT, DSTOPTS = 0, 43, 44, 60


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac(rng: random.Random) -> bytes:
    return bytes([rng.randrange(256) & 0xFE | 0x02]) + rng.randbytes(5)


def ipv4_addr(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def ipv6_addr(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def ethernet(rng: random.Random, ethertype: int, payload: bytes, *, vlan: int | None = None,
             dst: bytes | None = None, src: bytes | None = None) -> bytes:
    head = (dst or mac(rng)) + (src or mac(rng))
    if vlan is not None:  # vlan: the outer TPID (802.1Q or 802.1ad)
        head += struct.pack("!HH", vlan, rng.randrange(4096))
    return head + struct.pack("!H", ethertype) + payload


def ipv4(rng: random.Random, src: bytes, dst: bytes, proto: int, payload: bytes, *, options: bytes = b"",
         frag_off: int = 0, more_fragments: bool = False, tos: int | None = None, ttl: int | None = None,
         ihl: int | None = None, l4_checksum: bool = True) -> bytes:
    options += b"\0" * (-len(options) % 4)
    hl = 5 + len(options) // 4 if ihl is None else ihl
    flags = (0x2000 if more_fragments else 0) | (rng.choice((0, 0x4000)) if not frag_off and not more_fragments
                                                  else 0) | frag_off
    if l4_checksum and proto in (TCP, UDP) and frag_off == 0 and not more_fragments:
        payload = _l4_with_checksum(proto, payload, src + dst + struct.pack("!BBH", 0, proto, len(payload)))
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | hl, rng.randrange(256) if tos is None else tos,
                         20 + len(options) + len(payload), rng.randrange(65536), flags,
                         rng.choice((1, 32, 64, 128, 255)) if ttl is None else ttl, proto, 0, src, dst) + options
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def ipv6(rng: random.Random, src: bytes, dst: bytes, nexthdr: int, payload: bytes, *,
         ext: list[tuple[int, bytes]] = (), tclass: int | None = None) -> bytes:
    """`ext`: extension headers in order, each (its type, its body after nexthdr/len; padded to 8n+6)."""
    final = nexthdr
    if nexthdr in (TCP, UDP, ICMPV6):
        payload = _l4_with_checksum(nexthdr, payload, src + dst + struct.pack("!IxxxB", len(payload), nexthdr))
    chain = b""
    types = [t for t, _ in ext] + [final]
    for (kind, body), nxt in zip(ext, types[1:]):
        if kind == FRAGMENT:
            chain += struct.pack("!BB", nxt, 0) + body[:6].ljust(6, b"\0")
        else:
            body += b"\0" * (-(len(body) + 2) % 8)
            chain += struct.pack("!BB", nxt, (len(body) + 2) // 8 - 1) + body
    first = types[0]
    tc = rng.randrange(256) if tclass is None else tclass
    head = struct.pack("!IHBB16s16s", 6 << 28 | tc << 20 | rng.randrange(1 << 20), len(chain) + len(payload), first,
                       rng.choice((1, 64, 255)), src, dst)
    return head + chain + payload


def _l4_with_checksum(proto: int, segment: bytes, pseudo: bytes) -> bytes:
    at = {TCP: 16, UDP: 6, ICMPV6: 2}[proto]
    if len(segment) < at + 2:
        return segment
    segment = segment[:at] + b"\0\0" + segment[at + 2:]
    value = checksum(pseudo + segment)
    if proto == UDP and value == 0:
        value = 0xFFFF
    return segment[:at] + struct.pack("!H", value) + segment[at + 2:]


def tcp(rng: random.Random, sport: int, dport: int, *, flags: int | None = None, payload: bytes = b"",
        options: bytes = b"") -> bytes:
    options += b"\0" * (-len(options) % 4)
    return struct.pack("!HHIIBBHHH", sport, dport, rng.getrandbits(32), rng.getrandbits(32),
                       (5 + len(options) // 4) << 4, rng.choice((0x02, 0x10, 0x12, 0x18, 0x11, 0x04)) if flags is None
                       else flags, rng.randrange(65536), 0, 0) + options + payload


def udp(rng: random.Random, sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(kind: int, code: int, rest: int, payload: bytes = b"") -> bytes:
    body = struct.pack("!BBHI", kind, code, 0, rest) + payload
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def icmp6(kind: int, code: int, rest: int, payload: bytes = b"") -> bytes:
    return struct.pack("!BBHI", kind, code, 0, rest) + payload  # checksum filled by ipv6()


def arp(rng: random.Random) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, rng.choice((1, 2)), mac(rng), rng.randbytes(4),
                       bytes(6), rng.randbytes(4))


def port(rng: random.Random, wanted: tuple[int, ...] = ()) -> int:
    if wanted and rng.random() < 0.6:
        return rng.choice(wanted)
    return rng.choice((rng.randrange(1, 1024), rng.randrange(1024, 65536), 53, 80, 443, 0))


def l4(rng: random.Random, proto: int, *, sport: int | None = None, dport: int | None = None,
       flags: int | None = None) -> bytes:
    """A TCP/UDP/ICMP segment with random ports and a random payload."""
    payload = rng.randbytes(rng.choice((0, 0, 4, 16, rng.randrange(0, 200))))
    if proto == TCP:
        return tcp(rng, sport if sport is not None else port(rng), dport if dport is not None else port(rng),
                   flags=flags, payload=payload)
    if proto == UDP:
        return udp(rng, sport if sport is not None else port(rng), dport if dport is not None else port(rng), payload)
    if proto == ICMP:
        return icmp(rng.choice((0, 8, 3, 11)), 0, rng.getrandbits(32), payload)
    if proto == ICMPV6:
        return icmp6(rng.choice((128, 129, 1, 2, 135)), 0, rng.getrandbits(32), payload)
    return payload


def random_frame(rng: random.Random, *, v4_addrs: tuple[bytes, ...] = (), v6_addrs: tuple[bytes, ...] = (),
                 ports: tuple[int, ...] = (), protos: tuple[int, ...] = (TCP, UDP, ICMP, 47)) -> bytes:
    """A frame of a random kind: mostly IPv4/IPv6 with TCP/UDP/ICMP (addresses and ports drawn from the
    given pools half of the time), sometimes VLAN-tagged, fragmented, with IP options or IPv6 extension
    headers, ARP or an unknown ethertype, and now and then cut short."""
    r = rng.random()
    vlan = rng.choice((ETH_P_8021Q, ETH_P_8021AD)) if rng.random() < 0.1 else None

    def addr4() -> bytes:
        return rng.choice(v4_addrs) if v4_addrs and rng.random() < 0.5 else rng.randbytes(4)

    def addr6() -> bytes:
        return rng.choice(v6_addrs) if v6_addrs and rng.random() < 0.5 else rng.randbytes(16)

    if r < 0.5:
        proto = rng.choice(protos)
        frag = rng.random() < 0.1
        options = rng.randbytes(rng.choice((4, 8, 40))) if rng.random() < 0.1 else b""
        segment = l4(rng, proto, dport=port(rng, ports))
        frame = ethernet(rng, ETH_P_IP, ipv4(rng, addr4(), addr4(), proto, segment, options=options,
                                             frag_off=rng.randrange(1, 0x2000) if frag and rng.random() < 0.5 else 0,
                                             more_fragments=frag), vlan=vlan)
    elif r < 0.85:
        proto = rng.choice(tuple(p if p != ICMP else ICMPV6 for p in protos))
        ext = []
        if rng.random() < 0.2:
            for _ in range(rng.randint(1, 4)):
                kind = rng.choice((HOPOPTS, ROUTING, FRAGMENT, DSTOPTS))
                ext.append((kind, struct.pack("!HI", rng.choice((0, 8, 0x10)), rng.getrandbits(32))
                            if kind == FRAGMENT else rng.randbytes(rng.choice((6, 14)))))
        frame = ethernet(rng, ETH_P_IPV6, ipv6(rng, addr6(), addr6(), proto, l4(rng, proto, dport=port(rng, ports)),
                                               ext=ext), vlan=vlan)
    elif r < 0.92:
        frame = ethernet(rng, ETH_P_ARP, arp(rng), vlan=vlan)
    else:
        frame = ethernet(rng, rng.choice((0x88CC, 0x8847, rng.randrange(0x600, 0x10000))), rng.randbytes(46))
    if rng.random() < 0.08:  # truncated: headers cut anywhere past the Ethernet header
        frame = frame[:rng.randint(14, len(frame))]
    return frame
