"""The example objects as differential scenarios: each program with map contents a control plane would
install, realistic frames that reach its interesting paths, and a normalization for what legitimately
depends on time or randomness.

What is not deterministic, and how it is handled:
- xdp_ratelimit: bpf_ktime_get_ns. A bucket's `last_ns` (value bytes 8..16) is masked. Token counts stay
  deterministic by construction: preloaded buckets either have `last_ns` in the future (elapsed time 0,
  tokens as preloaded) or 0 (elapsed time capped at 60 s, tokens refilled to the cap: the rate is large
  enough), and a new source starts at cap - 1 token whatever the time. The interpreter's clock is set to
  CLOCK_MONOTONIC (the kernel's ktime) at each run.
- xdp_lb: bpf_ktime_get_ns in the connection table's `atime` (value bytes 8..16), masked; preloaded UDP
  connections are idle since boot (atime 0), so expired in both engines.
- global_data: bpf_get_prandom_u32 % drop_one_in. With drop_one_in = 1 (or 0, or the program disabled) all
  is deterministic; with the default 1-in-100 the return value, the drop budget (.data bytes 0..8) and
  packets_dropped (.bss bytes 16..24) depend on the draw and are masked; packets_seen/matched are not.
Everything else is compared exactly, per-CPU maps included (the engines pin the kernel runs to one CPU).

Most scenarios come twice: every frame from the maps as set up, and a sequence twin whose frames run one
after the other on the maps the previous ones left (counters accumulate, connections are found again, the
drop budget and token buckets drain). Big tables shrink to what the frames use (xdp_lb's ring array to one
VIP's ring, connection tables to 512 entries, LPM tries to 64) so that setting them up stays cheap; tables
the program only reads are marked config maps (set up once, not compared). legacy_maps.o loads here although
libbpf >= 1.0 refuses its "maps" section: the kernel only sees the maps we create from the definitions.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from bpforge.elf import read_object

from . import packets as P
from .engines import Outcome
from .program import DiffProgram, from_object

OBJ = Path(__file__).resolve().parents[2] / "examples" / "obj"


@dataclass
class Scenario:
    id: str
    program: DiffProgram
    packets: list[bytes]
    normalize: Callable[[Outcome], Outcome] | None = None
    note: str = ""


def load(name: str, *, data: dict[tuple[str, str], bytes] | None = None, max_entries: dict[str, int] | None = None,
         config: tuple[str, ...] = ()) -> DiffProgram:
    """Program of examples/obj/NAME.o with global variables patched before load (`data`: (section, symbol)
    -> bytes, as a loader rewrites .rodata knobs), maps shrunk (`max_entries`) and `config` maps marked."""
    obj = read_object(str(OBJ / f"{name}.o"))
    program = from_object(obj)
    program.name = name.replace(".", "_")
    sections = {d.name: d for d in obj.data}
    for (section, symbol), value in (data or {}).items():
        offset, size = sections[section].symbols[symbol]
        assert len(value) == size, (symbol, size)
        index = program.map_index(section)
        initial = bytearray(program.maps[index].initial)
        initial[offset:offset + size] = value
        program.maps[index] = replace(program.maps[index], initial=bytes(initial))
    for map_name, entries in (max_entries or {}).items():
        index = program.map_index(map_name)
        program.maps[index] = replace(program.maps[index], max_entries=entries)
    program.config_maps = frozenset(program.map_index(n) for n in config)
    return program


def setup(program: DiffProgram, map_name: str, key: bytes, value: bytes) -> None:
    program.setup.append((program.map_index(map_name), key, value))


def mask(spans: dict[str, tuple[int, int]], *, retval: bool = False) -> Callable[[Outcome], Outcome]:
    """Zero value bytes [start, end) of every entry of the named maps (and the return value)."""
    def normalize(outcome: Outcome) -> Outcome:
        def clear(name: str, key: bytes, value: bytes) -> bytes:
            if name not in spans:
                return value
            start, end = spans[name]
            return value[:start] + bytes(end - start) + value[end:]
        out = outcome.with_map_values(clear)
        return replace(out, retval=0) if retval else out
    return normalize


def both(scenario: Scenario, seed: int, count: int, make: Callable[[random.Random], bytes], *,
         skb: bool = False) -> list[Scenario]:
    """The scenario (every frame from the same initial maps) and its sequence twin: other frames from the same
    generator run one after the other on maps that keep what the previous frames left."""
    program = replace(scenario.program, persistent=True, name=scenario.program.name + "_seq")
    twin = Scenario(scenario.id + "_seq", program, frames(seed, count, make, skb=skb), scenario.normalize,
                    scenario.note)
    return [scenario, twin]


def frames(seed: int, count: int, make: Callable[[random.Random], bytes], *, skb: bool = False) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    while len(out) < count:
        frame = make(rng)
        if not skb or skb_runnable(frame):
            out.append(frame)
    return out


def skb_runnable(frame: bytes) -> bool:
    """BPF_PROG_TEST_RUN refuses (EINVAL) an skb whose IPv4 / IPv6 frame is shorter than the fixed network
    header (20 / 40 bytes after the Ethernet header); the interpreter runs those, so they are not compared."""
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    need = {P.ETH_P_IP: 34, P.ETH_P_IPV6: 54}.get(ethertype, 14)
    return len(frame) >= need


# ---- per example ----------------------------------------------------------------------------------------------

def xdp_pass(variant: str) -> list[Scenario]:
    return [Scenario("asm_xdp_pass", load("asm_xdp_pass"), frames(1, 40, P.random_frame))]


def xdp_counter(variant: str) -> list[Scenario]:
    def make(rng: random.Random) -> bytes:
        frame = P.random_frame(rng, protos=(P.TCP, P.UDP, P.ICMP, 47, 132))
        if rng.random() < 0.2:  # sizes across the histogram's 64-byte buckets, up to the last one
            frame += rng.randbytes(rng.choice((64, 500, 1500, 1700)))
        return frame
    return both(Scenario(f"xdp_counter{variant}", load(f"xdp_counter{variant}"), frames(2, 40, make)), 12, 40, make)


V4_POOL = tuple(P.ipv4_addr(a) for a in ("10.0.0.1", "10.0.0.2", "192.168.1.7", "172.16.5.5", "8.8.8.8"))
V6_POOL = tuple(P.ipv6_addr(a) for a in ("2001:db8::1", "2001:db8::2", "fe80::1", "2001:db8:1::99"))


def xdp_firewall(variant: str) -> list[Scenario]:
    program = load(f"xdp_firewall{variant}", max_entries={"src4_deny": 64, "src6_deny": 64, "port_deny": 64})
    rules = [
        ("src4_deny", struct.pack("<I", 32) + P.ipv4_addr("10.0.0.2"), 7),
        ("src4_deny", struct.pack("<I", 24) + P.ipv4_addr("192.168.1.0"), 8),
        ("src4_deny", struct.pack("<I", 8) + P.ipv4_addr("172.0.0.0"), 300),  # rule id past MAX_RULES
        ("src6_deny", struct.pack("<I", 128) + P.ipv6_addr("2001:db8::2"), 9),
        ("src6_deny", struct.pack("<I", 48) + P.ipv6_addr("2001:db8:1::"), 10),
        ("port_deny", struct.pack("!BBH", P.TCP, 0, 23), 11),
        ("port_deny", struct.pack("!BBH", P.UDP, 0, 53), 12),
        ("port_deny", struct.pack("!BBH", P.TCP, 0, 8080), 13),
    ]
    for map_name, key, rule in rules:
        setup(program, map_name, key, struct.pack("<I", rule))

    def make(rng: random.Random) -> bytes:
        return P.random_frame(rng, v4_addrs=V4_POOL, v6_addrs=V6_POOL, ports=(23, 53, 8080, 80))
    return both(Scenario(f"xdp_firewall{variant}", program, frames(3, 40, make)), 13, 40, make)


def xdp_ratelimit(variant: str) -> list[Scenario]:
    sources = V4_POOL
    normalize = mask({"buckets": (8, 16)})
    future = 2**64 - 1  # a last refill in the future: no time elapses for the bucket, its tokens stay exact
    out = []
    for label, rate, burst, buckets, sequence in (
        ("off", 0, 5, {}, False),
        ("fresh", 1000, 3, {}, False),
        ("preloaded", 1 << 20, 4, {
            sources[0]: (0, future),  # empty: drop
            sources[1]: (2_500_000_000, future),  # 2.5 tokens: pass, 1.5 left
            sources[2]: (0, 0),  # empty but idle since boot: refilled to the cap
            sources[3]: (999_999_999, future),  # just short of a token: drop
        }, False),
        ("burst0", 1, 0, {sources[0]: (5_000_000_000, future)}, False),  # burst 0 means 1: the cap cuts the tokens
        # in sequence: buckets drain packet by packet (only these sources: a new bucket would refill by the
        # time between packets)
        ("drain", 1 << 20, 8, {sources[0]: (3_500_000_000, future), sources[1]: (8_000_000_000, future),
                               sources[3]: (20_000_000_000, future)}, True),
    ):
        program = load(f"xdp_ratelimit{variant}", max_entries={"buckets": 256}, config=("config",))
        program.name += "_" + label
        program.vm_options = {"clock_ns": time.monotonic_ns}
        program.persistent = sequence
        setup(program, "config", bytes(4), struct.pack("<II", rate, burst))
        for saddr, (tokens, last) in buckets.items():
            setup(program, "buckets", saddr, struct.pack("<QQ", tokens, last))
        pool = tuple(buckets) if sequence else sources + (None,)

        def make(rng: random.Random, pool=pool) -> bytes:
            if rng.random() < 0.15:
                return P.ethernet(rng, rng.choice((P.ETH_P_IPV6, P.ETH_P_ARP)), rng.randbytes(60))
            proto = rng.choice((P.TCP, P.UDP, P.ICMP))
            source = rng.choice(pool) or rng.randbytes(4)
            frame = P.ethernet(rng, P.ETH_P_IP, P.ipv4(rng, source, rng.randbytes(4), proto, P.l4(rng, proto)))
            return frame[:rng.randint(14, 33)] if rng.random() < 0.05 else frame
        out.append(Scenario(f"xdp_ratelimit{variant}_{label}", program, frames(4, 30 if sequence else 20, make),
                            normalize, "masked: buckets' last_ns (value bytes 8..16, bpf_ktime_get_ns)"))
    return out


def global_data(variant: str) -> list[Scenario]:
    out = []
    for label, knobs, budget, normalize in (
        ("default", {}, None, mask({".data": (0, 8), ".bss": (16, 24)}, retval=True)),
        ("always", {"drop_one_in": struct.pack("<I", 1)}, None, None),
        ("budget", {"drop_one_in": struct.pack("<I", 1), "target_proto": bytes([P.TCP])}, 7, None),
        ("never", {"drop_one_in": struct.pack("<I", 0)}, None, None),
        ("disabled", {"enabled": b"\0", "drop_one_in": struct.pack("<I", 1)}, None, None),
    ):
        data = {(".rodata", k): v for k, v in knobs.items()}
        if budget is not None:
            data[(".data", "drop_budget")] = struct.pack("<q", budget)
        program = load(f"global_data{variant}", data=data)
        program.name += "_" + label
        target = P.TCP if label == "budget" else P.UDP

        def make(rng: random.Random, target: int = target) -> bytes:
            frame = P.random_frame(rng, protos=(target, target, P.TCP, P.UDP, P.ICMP))
            # frame sizes across the cost classes (512-byte steps)
            return frame + rng.randbytes(rng.choice((0, 0, 600, 1100, 1600))) if len(frame) > 34 else frame
        note = "masked: retval, drop_budget, packets_dropped (bpf_get_prandom_u32)" if normalize else ""
        scenario = Scenario(f"global_data{variant}_{label}", program, frames(5, 20, make), normalize, note)
        # in sequence the drop budget runs out
        out += both(scenario, 15, 30, make) if label in ("budget", "default") else [scenario]
    return out


def telemetry(rng: random.Random) -> bytes:
    """UDP to port 7777 carrying the TLV protocol of bpf2bpf_loop.c, well-formed or broken in one place."""
    tlvs = b""
    count = rng.randint(0, 18)
    for _ in range(count):
        kind = rng.choice((1, 1, 2, 3, 31, 40))
        if kind == 1:
            value = b"".join(struct.pack("!h", rng.choice((-32768, 32767, 0, -1, rng.randint(-32768, 32767))))
                             for _ in range(rng.randint(0, 34)))
        else:
            value = rng.randbytes(rng.randint(0, 70))
        tlvs += struct.pack("!BB", kind, min(len(value), 255)) + value
    header = struct.pack("!BBBB", rng.choice((0xB7,) * 8 + (0xB6,)), rng.choice((1,) * 8 + (2,)), count, 0)
    payload = header + tlvs
    if rng.random() < 0.15:
        payload = payload[:rng.randint(0, len(payload))]
    ihl_options = rng.randbytes(4) if rng.random() < 0.2 else b""
    frame = P.ethernet(rng, P.ETH_P_IP, P.ipv4(rng, rng.randbytes(4), rng.randbytes(4), P.UDP,
                                               P.udp(rng, P.port(rng), 7777, payload), options=ihl_options))
    return frame[:3500]


def bpf2bpf_loop(variant: str) -> list[Scenario]:
    def make(rng: random.Random) -> bytes:
        return telemetry(rng) if rng.random() < 0.8 else P.random_frame(rng, ports=(7777,))
    return both(Scenario(f"bpf2bpf_loop{variant}", load(f"bpf2bpf_loop{variant}"), frames(6, 40, make)), 16, 30, make)


SKB_CTX = (("mark", 8, 4), ("priority", 32, 4), ("cb0", 48, 4), ("cb4", 64, 4))


def tc_classifier(variant: str) -> list[Scenario]:
    program = load(f"tc_classifier{variant}", max_entries={"port_class": 64})
    program.ctx_fields = SKB_CTX

    def class_val(idx: int, mark: int, prio: int, classid: int, dscp: int, delta: int) -> bytes:
        return struct.pack("<IIIIBbxx", idx, mark, prio, classid, dscp, delta)
    setup(program, "port_class", struct.pack("!BBH", P.TCP, 0, 22), class_val(1, 0x22, 6, 0x10001, 0xFF, 0))
    setup(program, "port_class", struct.pack("!BBH", P.UDP, 0, 53), class_val(2, 0x53, 2, 0x10002, 46, 0))
    setup(program, "port_class", struct.pack("!BBH", P.TCP, 0, 443), class_val(70, 0x443, 0, 0x10003, 10, 0))
    setup(program, "dscp_class", bytes([8]), class_val(3, 0x8, 1, 0x10004, 0xFF, -1))
    setup(program, "dscp_class", bytes([46]), class_val(4, 0x2E, 7, 0x10005, 0xFF, 3))
    setup(program, "dscp_class", bytes([0]), class_val(5, 0, 0, 0, 0xFF, -5))

    def make(rng: random.Random) -> bytes:
        if rng.random() < 0.7:
            tos = rng.choice((0, 8 << 2, 46 << 2, 10 << 2 | 1, rng.randrange(256)))
            proto = rng.choice((P.TCP, P.UDP, P.ICMP))
            frag = rng.random() < 0.1
            if rng.random() < 0.7:
                return P.ethernet(rng, P.ETH_P_IP, P.ipv4(rng, rng.randbytes(4), rng.randbytes(4), proto,
                                                          P.l4(rng, proto, dport=P.port(rng, (22, 53, 443))), tos=tos,
                                                          frag_off=rng.randrange(1, 100) if frag else 0))
            return P.ethernet(rng, P.ETH_P_IPV6, P.ipv6(rng, rng.randbytes(16), rng.randbytes(16), proto,
                                                        P.l4(rng, proto, dport=P.port(rng, (22, 53, 443))), tclass=tos))
        return P.random_frame(rng, ports=(22, 53, 443))
    return both(Scenario(f"tc_classifier{variant}", program, frames(7, 40, make, skb=True)), 17, 30, make, skb=True)


def socket_filter(variant: str) -> list[Scenario]:
    program = load(f"socket_filter{variant}")
    program.ctx_fields = SKB_CTX

    def make(rng: random.Random) -> bytes:
        if rng.random() < 0.75:
            dst = rng.choice((bytes(4), b"\xff" * 4, rng.randbytes(4), rng.randbytes(4)))
            options = rng.randbytes(8) if rng.random() < 0.2 else b""
            proto = rng.choice((P.TCP, P.TCP, P.UDP))
            frame = P.ethernet(rng, P.ETH_P_IP, P.ipv4(rng, rng.randbytes(4), dst, proto,
                                                       P.l4(rng, proto, dport=P.port(rng, (80, 443))), options=options,
                                                       frag_off=rng.choice((0, 0, 0, 5))))
            return frame[:rng.randint(20, len(frame))] if rng.random() < 0.1 else frame
        return P.random_frame(rng, ports=(80, 443))
    return [Scenario(f"socket_filter{variant}", program, frames(8, 50, make, skb=True))]


VIP4, VIP4_ANY, VIP4_BYPASS = (P.ipv4_addr(a) for a in ("10.100.0.1", "10.100.0.2", "10.100.0.3"))
VIP6 = P.ipv6_addr("2001:db8:100::1")
VIP4_FAR, VIP4_NO_RING = P.ipv4_addr("10.100.0.4"), P.ipv4_addr("10.100.0.5")
CLIENTS4 = tuple(P.ipv4_addr(f"198.51.100.{i}") for i in (1, 2, 3))
CLIENTS6 = tuple(P.ipv6_addr(f"2001:db8:200::{i}") for i in (1, 2))
REALS = [  # index: (address, port, flags)
    (P.ipv4_addr("10.1.0.1"), 0, 0), (P.ipv4_addr("10.1.0.2"), 8080, 0), (P.ipv6_addr("2001:db8:300::1"), 0, 1),
    (P.ipv6_addr("2001:db8:300::2"), 9090, 1), (P.ipv4_addr("10.1.0.3"), 0, 0),
]
RING_SIZE = 4099


def xdp_lb(variant: str) -> list[Scenario]:
    # The ring array shrinks to one VIP's ring (vip_num 0); a VIP numbered 1 then finds no ring slot.
    program = load(f"xdp_lb{variant}", max_entries={"ch_rings": RING_SIZE, "reals": 16, "conn_table": 512,
                                                    "rev_nat": 512, "vip_map": 32},
                   config=("ch_rings", "reals"))
    program.vm_options = {"clock_ns": time.monotonic_ns}
    rng = random.Random(9)

    def vip_key(addr: bytes, port: int, proto: int) -> bytes:
        return addr.ljust(16, b"\0") + struct.pack("!HBx", port, proto)

    for addr, port, proto, flags, num in (
        (VIP4, 80, P.TCP, 0, 0), (VIP4, 53, P.UDP, 0, 0), (VIP4_ANY, 0, P.TCP, 4, 0), (VIP4_ANY, 0, P.UDP, 4, 0),
        (VIP4_BYPASS, 80, P.TCP, 2 | 1, 0), (VIP6, 443, P.TCP, 0, 0), (VIP6, 53, P.UDP, 1, 0),
        (VIP4_FAR, 80, P.TCP, 0, 70), (VIP4_NO_RING, 80, P.TCP, 0, 1),
    ):
        setup(program, "vip_map", vip_key(addr, port, proto), struct.pack("<II", flags, num))
    v4_reals = [i for i, r in enumerate(REALS) if not r[2]]
    v6_reals = [i for i, r in enumerate(REALS) if r[2]]
    for slot in range(RING_SIZE):  # IPv4 and IPv6 VIPs share vip_num 0: a ring slot may pick the wrong family
        real = rng.choice(v4_reals if rng.random() < 0.7 else v6_reals)
        setup(program, "ch_rings", struct.pack("<I", slot), struct.pack("<I", real))
    for i, (addr, port, flags) in enumerate(REALS):
        setup(program, "reals", struct.pack("<I", i), addr.ljust(16, b"\0") + struct.pack("!HBx", port, flags))
    setup(program, "ctl_array", bytes(4), bytes.fromhex("02aabbccddee0000"))

    def flow(src: bytes, dst: bytes, sport: int, dport: int, proto: int) -> bytes:
        return src.ljust(16, b"\0") + dst.ljust(16, b"\0") + struct.pack("!HHB3x", sport, dport, proto)
    # established TCP, idle UDP (atime 0: expired), and reverse-NAT state for replies from reals
    setup(program, "conn_table", flow(CLIENTS4[0], VIP4, 40000, 80, P.TCP), struct.pack("<IIQ", 4, 0, 0))
    setup(program, "conn_table", flow(CLIENTS4[1], VIP4, 5353, 53, P.UDP), struct.pack("<IIQ", 1, 0, 0))
    setup(program, "rev_nat", flow(REALS[0][0], CLIENTS4[2], 80, 41000, P.TCP),
          VIP4.ljust(16, b"\0") + struct.pack("!H", 80) + struct.pack("<HI", 0, 0))
    setup(program, "rev_nat", flow(REALS[2][0], CLIENTS6[0], 443, 42000, P.TCP),
          VIP6 + struct.pack("!H", 443) + struct.pack("<HI", 0, 0))

    def make(rng: random.Random) -> bytes:
        r = rng.random()
        v6 = rng.random() < 0.3
        proto = rng.choice((P.TCP, P.TCP, P.UDP))
        if r < 0.1:
            return P.random_frame(rng)
        if v6:
            client, vip = rng.choice(CLIENTS6), rng.choice((VIP6, VIP6, rng.randbytes(16)))
            if r < 0.2:  # ICMPv6 echo to a VIP, or packet-too-big quoting a reply from the VIP
                inner = P.ipv6(rng, vip, client, proto, P.l4(rng, proto, sport=rng.choice((443, 53)), dport=42000))
                msg = P.icmp6(128, 0, rng.getrandbits(32), rng.randbytes(8)) if rng.random() < 0.5 else \
                    P.icmp6(2, 0, 1280, inner[:rng.choice((48, 60, len(inner)))])
                return P.ethernet(rng, P.ETH_P_IPV6, P.ipv6(rng, client, vip, P.ICMPV6, msg))
            if r < 0.3:  # a reply from a real to a client
                return P.ethernet(rng, P.ETH_P_IPV6, P.ipv6(rng, REALS[2][0], CLIENTS6[0], P.TCP,
                                                            P.tcp(rng, 443, 42000, flags=0x10)))
            dport = rng.choice((443, 53, 80))
            return P.ethernet(rng, P.ETH_P_IPV6, P.ipv6(rng, client, vip, proto, P.l4(rng, proto, sport=42000,
                                                                                    dport=dport)))
        client = rng.choice(CLIENTS4)
        vip = rng.choice((VIP4, VIP4, VIP4_ANY, VIP4_BYPASS, VIP4_FAR, VIP4_NO_RING, rng.randbytes(4)))
        if r < 0.2:  # ICMP echo to a VIP, or fragmentation-needed quoting a packet from the VIP
            inner = P.ipv4(rng, vip, client, proto, P.l4(rng, proto, sport=80, dport=40000))
            msg = P.icmp(8, 0, rng.getrandbits(32), rng.randbytes(16)) if rng.random() < 0.5 else \
                P.icmp(3, 4, 1400, inner[:rng.choice((28, 40, len(inner)))])
            return P.ethernet(rng, P.ETH_P_IP, P.ipv4(rng, client, vip, P.ICMP, msg))
        if r < 0.3:
            return P.ethernet(rng, P.ETH_P_IP, P.ipv4(rng, REALS[0][0], CLIENTS4[2], P.TCP,
                                                      P.tcp(rng, 80, 41000, flags=0x10)))
        # known clients reuse their flows (the preloaded connections; repeated flows in a sequence)
        sport = {CLIENTS4[0]: 40000, CLIENTS4[1]: 5353}.get(client) or rng.choice((41001, 41002, 41003,
                                                                                  rng.randrange(1024, 65536)))
        frame = P.ethernet(rng, P.ETH_P_IP, P.ipv4(rng, client, vip, proto, P.l4(
            rng, proto, sport=sport, dport=rng.choice((80, 53, 22)), flags=rng.choice((0x02, 0x10, 0x12, None))),
            options=rng.randbytes(4) if rng.random() < 0.05 else b"",
            more_fragments=rng.random() < 0.05))
        return frame[:rng.randint(14, len(frame))] if rng.random() < 0.05 else frame
    scenario = Scenario(f"xdp_lb{variant}", program, frames(10, 40, make), mask({"conn_table": (8, 16)}),
                        "masked: conn_table atime (value bytes 8..16, bpf_ktime_get_ns)")
    return both(scenario, 20, 40, make)


def legacy_maps(variant: str) -> list[Scenario]:
    program = load(f"legacy_maps{variant}", max_entries={"src_seen": 64})
    def make(rng: random.Random) -> bytes:
        return P.random_frame(rng, v4_addrs=V4_POOL)
    return both(Scenario(f"legacy_maps{variant}", program, frames(11, 30, make)), 21, 30, make)


KV_KEYS = (b"alpha", b"k1", b"user:42", b"x" * 32, b"gone")


def xdp_kvcache(variant: str) -> list[Scenario]:
    """memcached-style requests to port 11211: GETs of cached keys (answered at XDP: the packet rewritten
    into the reply and sent back), GETs of keys not cached or with a write pending (passed), SETs and
    DELETEs (passed, the entry dropped and the bucket's pending count raised), malformed requests, other
    traffic."""
    program = load(f"xdp_kvcache{variant}")
    for key in KV_KEYS[:4]:
        reply = b"VALUE " + key + b" 0 5\r\nhello\r\nEND\r\n"
        setup(program, "kv_cache", key.ljust(32, b"\0"), struct.pack("<I", len(reply)) + reply.ljust(128, b"\0"))

    def make(rng: random.Random) -> bytes:
        if rng.random() < 0.2:
            return P.random_frame(rng, ports=(11211,))
        key = rng.choice(KV_KEYS + (rng.randbytes(rng.randint(1, 33)),))
        verb = rng.choice((b"get ", b"get ", b"get ", b"set ", b"delete ", b"gets ", b""))
        text = verb + key + (b" 0 0 5\r\nhello\r\n" if verb == b"set " else b"\r\n")
        if rng.random() < 0.1:
            text = text[:rng.randrange(len(text) + 1)]
        header = struct.pack("!HHHH", rng.randrange(65536), 0, 1, 0) if rng.random() < 0.95 else rng.randbytes(
            rng.randrange(9))
        src, dst = rng.choice(V4_POOL), rng.choice(V4_POOL)
        segment = P.udp(rng, rng.randrange(1024, 65536), 11211, header + text)
        return P.ethernet(rng, P.ETH_P_IP, P.ipv4(rng, src, dst, P.UDP, segment, l4_checksum=rng.random() < 0.5))
    return both(Scenario(f"xdp_kvcache{variant}", program, frames(23, 60, make)), 24, 60, make)


BUILDERS = {
    "asm_xdp_pass": xdp_pass, "xdp_counter": xdp_counter, "xdp_firewall": xdp_firewall, "xdp_lb": xdp_lb,
    "xdp_ratelimit": xdp_ratelimit, "global_data": global_data, "bpf2bpf_loop": bpf2bpf_loop,
    "tc_classifier": tc_classifier, "socket_filter": socket_filter, "legacy_maps": legacy_maps,
    "xdp_kvcache": xdp_kvcache,
}
NOT_KERNEL = {"asm_mem_sum": "a `mem` program (r1 = buffer, r2 = length): no kernel program type runs it"}


def scenario_names() -> list[str]:
    """One entry per example object (NAME or NAME.v4), in file order."""
    return sorted(p.name[:-2] for p in OBJ.glob("*.o"))


def scenarios(object_name: str) -> list[Scenario]:
    base, _, v4 = object_name.partition(".")
    return BUILDERS[base]("." + v4 if v4 else "")
