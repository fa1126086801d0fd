"""Socket buffer helpers, interpreter = fast tier = kernel (r0, data_out, ctx_out): making room between
headers (bpf_skb_adjust_room, every mode and flag family), the tail and the head, pulling data, changing
protocol and packet type, storing and loading bytes, checksum replacement at the edges of one's-complement
arithmetic, csum_diff/csum_update/csum_level, tunnel keys and options, the flow hash, ECN marking; and
the VM's own rule that packet pointers die with a helper that changes packet data."""

from __future__ import annotations

import struct

import pytest
from test_kernel_packets import ETH_P_IP, ETH_P_IPV6, eth, ipv4, ipv6, tcp, udp
from vmdiff import run_asm, same

from bpforge.kernel.testrun import sk_buff

TCP4 = eth(ETH_P_IP, ipv4("10.0.0.1", "10.0.0.2", 6, tcp("10.0.0.1", "10.0.0.2", 1234, 80, payload=b"hello")))
TCP6 = eth(ETH_P_IPV6, ipv6("2001:db8::1", "2001:db8::2", 6, tcp("2001:db8::1", "2001:db8::2", 1, 2, payload=b"x")))
UDP4 = eth(ETH_P_IP, ipv4("10.0.0.1", "10.0.0.2", 17, udp("10.0.0.1", "10.0.0.2", 53, 53, b"q" * 30), tos=0))
ARP = eth(0x0806, bytes(28))
STORE, LOAD, L3, L4, CSUM_DIFF, CHANGE_PROTO, CHANGE_TYPE = 9, 26, 10, 11, 28, 31, 32
CHANGE_TAIL, PULL, CSUM_UPDATE, CHANGE_HEAD, ADJUST_ROOM, LOAD_REL, CSUM_LEVEL = 38, 39, 40, 43, 50, 68, 135
GET_TUNNEL_KEY, SET_TUNNEL_KEY, GET_TUNNEL_OPT, SET_TUNNEL_OPT = 20, 21, 29, 30
HASH_RECALC, SET_HASH_INVALID, SET_HASH, ECN = 34, 41, 48, 97
PROTOCOL, HASH, LEN = 16, 68, 0  # __sk_buff offsets


def call(helper: int, *args) -> str:
    """The helper called on the context (r6) with r2.. = args."""
    regs = "".join(f"r{i} = {a}\n" for i, a in enumerate(args, 2))
    return f"r1 = r6\n{regs}call {helper}\n"


def result_and_protocol(extra: str = "") -> str:
    """r0 = protocol << 16 | (r7 & 0xffff), r7 holding the helper's result."""
    return f"r7 &= 0xffff\nr0 = *(u32 *)(r6 + {PROTOCOL})\nr0 <<= 16\nr0 |= r7\n{extra}exit\n"


def tc(text: str, frame: bytes, prog_type: str = "sched_cls", ctx: bytes | None = None, **kw):
    if prog_type == "cgroup_skb":  # which must return 0 or 1: the result goes to skb->mark (in ctx_out)
        text = text.replace("exit\n", "*(u32 *)(r6 + 8) = r0\nr0 = 1\nexit\n")
    return same(run_asm("r6 = r1\n" + text, prog_type, frame, ctx=ctx), **kw)


# ---- bpf_skb_adjust_room ---------------------------------------------------------------------------------

FIXED_GSO, IPV4, IPV6, GRE, UDP, NO_CSUM_RESET, L2_ETH, DECAP4, DECAP6 = 1, 2, 4, 8, 16, 32, 64, 128, 256


def l2(length: int) -> int:
    return (length & 0xFF) << 56


ROOM = [
    (8, 1, 0), (8, 0, 0), (-8, 0, 0), (-8, 1, 0), (20, 1, IPV4), (28, 1, IPV4 | UDP), (40, 1, IPV6 | GRE),
    (48, 1, IPV6 | UDP), (20, 1, IPV4 | IPV6), (28, 1, IPV4 | UDP | GRE), (38, 1, IPV4 | GRE | L2_ETH | l2(14)),
    (38, 1, IPV4 | GRE | L2_ETH | l2(10)), (10, 1, IPV4 | l2(12)), (20, 1, GRE | UDP), (20, 1, FIXED_GSO | NO_CSUM_RESET),
    (-20, 1, DECAP4), (-20, 1, DECAP6), (-20, 1, DECAP4 | DECAP6), (20, 1, DECAP4), (-20, 1, IPV4), (8, 1, 1 << 9),
    (0x1000, 1, 0), (-0x1000, 1, 0), (0xFFF, 1, 0), (8, 2, 0), (-40, 0, 0), (-100, 1, 0), (-26, 1, 0), (0, 1, 0),
    (-26, 0, 0), (12000, 1, 0),
]


@pytest.mark.parametrize("frame", [TCP4, TCP6, ARP], ids=["ipv4", "ipv6", "arp"])
@pytest.mark.parametrize("diff,mode,flags", ROOM, ids=[f"{d}-m{m}-{f:#x}" for d, m, f in ROOM])
def test_adjust_room(frame, diff, mode, flags, kernel):
    text = f"r9 = {flags:#x} ll\nr1 = r6\nr2 = {diff}\nr3 = {mode}\nr4 = r9\ncall {ADJUST_ROOM}\nr7 = r0\n" + \
        result_and_protocol()
    tc(text, frame)


def test_adjust_room_twice_and_what_encapsulation_changes(kernel):
    # encapsulate with UDP (sets the transport header), again (EALREADY), then cut the tail (min length is
    # now the transport offset, and an encapsulated skb cannot change its tail at all)
    text = f"""
    r9 = {IPV4 | UDP}
    r1 = r6
    r2 = 28
    r3 = 1
    r4 = r9
    call {ADJUST_ROOM}
    r7 = r0
    r1 = r6
    r2 = 28
    r3 = 1
    r4 = r9
    call {ADJUST_ROOM}
    r7 <<= 8
    r7 |= r0
    r1 = r6
    r2 = 20
    r3 = 0
    call {CHANGE_TAIL}
    r7 <<= 8
    r7 |= r0
    r1 = r6
    r2 = 200
    r3 = 0
    call {CHANGE_TAIL}
    r7 <<= 8
    r7 |= r0
    r0 = r7
    exit
    """
    tc(text, TCP4)


def test_adjust_room_on_a_gso_packet(kernel):
    ctx = sk_buff(gso_size=1000, gso_segs=2)
    tc(call(ADJUST_ROOM, 8, 1, 0) + "r7 = r0\n" + result_and_protocol(), TCP4, ctx=ctx)


# ---- tail, head, pull --------------------------------------------------------------------------------------

@pytest.mark.parametrize("new_len", [0, 13, 14, 33, 34, len(TCP4), len(TCP4) + 100, 16064, 16065, 0xFFFFFFFF])
@pytest.mark.parametrize("flags", [0, 1])
def test_change_tail(new_len, flags, kernel):
    tc(call(CHANGE_TAIL, new_len, flags) + "r7 = r0\n" + result_and_protocol(), TCP4)


def test_change_tail_resets_gso(kernel):
    tc(call(CHANGE_TAIL, 40, 0) + "r7 = r0\n" + result_and_protocol(), TCP4, ctx=sk_buff(gso_size=500, gso_segs=3))


@pytest.mark.parametrize("room", [0, 14, 100, 16064 - 59, 16064, 0xFFFFFFFF])
@pytest.mark.parametrize("flags", [0, 2])
def test_change_head_and_the_new_mac_header(room, flags, kernel):
    # after the push, the link-layer header starts at the new data: read its first 4 bytes back relative
    # to it (they are the zeros pushed, or the old Ethernet header when nothing was pushed)
    text = call(CHANGE_HEAD, room, flags) + f"""
    r7 = r0
    r1 = r6
    r2 = 0
    r3 = r10
    r3 += -8
    r4 = 4
    r5 = 0
    call {LOAD_REL}
    r8 = *(u32 *)(r10 - 8)
    r0 = *(u32 *)(r6 + {LEN})
    r0 <<= 8
    r7 &= 0xff
    r0 |= r7
    r0 ^= r8
    exit
    """
    tc(text, TCP4)


@pytest.mark.parametrize("prog_type", ["sched_cls", "sched_act"])
@pytest.mark.parametrize("length", [0, 10, len(TCP4), len(TCP4) + 1, 0xFFFFFFFF])
def test_pull_data(prog_type, length, kernel):
    tc(call(PULL, length) + "r7 = r0\n" + result_and_protocol(), TCP4, prog_type)


# ---- protocol and type ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("frame", [TCP4, TCP6, ARP], ids=["ipv4", "ipv6", "arp"])
@pytest.mark.parametrize("proto,flags", [(0xDD86, 0), (0x0008, 0), (0x0008, 1), (0x0608, 0), (0, 0)])
def test_change_proto(frame, proto, flags, kernel):
    tc(call(CHANGE_PROTO, proto, flags) + "r7 = r0\n" + result_and_protocol(), frame)


@pytest.mark.parametrize("pkt_type", [0, 1, 3, 4, 7])
def test_change_type(pkt_type, kernel):
    tc(call(CHANGE_TYPE, pkt_type) + "r7 = r0\nr0 = *(u32 *)(r6 + 4)\nr0 <<= 16\nr7 &= 0xffff\nr0 |= r7\nexit\n",
       TCP4)


# ---- bytes ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset,flags", [(0, 0), (20, 1), (20, 2), (20, 3), (20, 4), (len(TCP4) - 4, 0),
                                          (len(TCP4) - 3, 0), (0x80000000, 0), (0xFFFFFFFF, 0)])
def test_store_bytes(offset, flags, kernel):
    text = f"""
    r1 = 0x55667788
    *(u32 *)(r10 - 4) = r1
    r1 = r6
    r2 = 0xbeef
    call {SET_HASH}
    r1 = r6
    r2 = {offset:#x} ll
    r3 = r10
    r3 += -4
    r4 = 4
    r5 = {flags}
    call {STORE}
    r7 = r0
    r0 = *(u32 *)(r6 + {HASH})
    r0 <<= 16
    r7 &= 0xffff
    r0 |= r7
    exit
    """
    tc(text, TCP4)


@pytest.mark.parametrize("prog_type", ["sched_cls", "socket_filter", "cgroup_skb"])
@pytest.mark.parametrize("offset,length,start", [(0, 8, 0), (12, 2, 0), (0, 8, 1), (9, 1, 1), (40, 8, 1),
                                                 (len(TCP4) - 14 - 4, 4, 1), (len(TCP4) - 14 - 3, 4, 1),
                                                 (0x10000, 1, 0), (0, 4, 2)])
def test_load_bytes_relative(prog_type, offset, length, start, kernel):
    text = f"""
    *(u64 *)(r10 - 8) = 0
    r1 = r6
    r2 = {offset}
    r3 = r10
    r3 += -8
    r4 = {length}
    r5 = {start}
    call {LOAD_REL}
    r7 = r0
    r0 = *(u32 *)(r10 - 8)
    r0 ^= r7
    exit
    """
    tc(text, TCP4, prog_type)


# ---- checksums ------------------------------------------------------------------------------------------

CSUM_AT = 60  # two bytes of the payload stand in for a checksum field


def csum_frame(check: int) -> bytes:
    frame = bytearray(TCP4 + bytes(20))
    frame[CSUM_AT:CSUM_AT + 2] = check.to_bytes(2, "little")
    return bytes(frame)


REPLACE = [  # (helper, check, old, new, flags)
    (L3, 0x0000, 0x1234, 0x1234, 2), (L3, 0xFFFF, 0, 0, 2), (L3, 0x0000, 0, 0, 2), (L3, 0x1234, 0xFFFF, 0, 2),
    (L3, 0xFFFF, 0xFFFFFFFF, 0, 4), (L3, 0x0000, 0x12345678, 0x87654321, 4), (L3, 0xFFFF, 0, 0, 0),
    (L3, 0x0000, 0, 0xFFFF0000, 0), (L3, 0x1234, 1, 0, 0), (L3, 0x1234, 0, 0, 1), (L3, 0x1234, 0, 0, 0x10),
    (L4, 0x0000, 0x1234, 0x1234, 2), (L4, 0xFFFF, 0, 0, 2), (L4, 0x0000, 0, 0, 2), (L4, 0xFFFF, 0xFFFF0000, 0, 4),
    (L4, 0x0000, 0, 0, 0x20 | 2), (L4, 0x0000, 0, 5, 0x60 | 2), (L4, 0x1234, 0x1234, 0, 0x20 | 2),
    (L4, 0x00FF, 0, 0x12345, 0x10 | 0), (L4, 0xFFFF, 0, 0, 0x80 | 0x10 | 4), (L4, 0x1234, 0, 0, 0x100),
    (L4, 0x1234, 0, 0, 3), (L4, 0x1234, 7, 0, 0),
]


@pytest.mark.parametrize("helper,check,old,new,flags", REPLACE)
@pytest.mark.parametrize("offset", [CSUM_AT, CSUM_AT + 1, 0x10000, 74 + 18])
def test_csum_replace(helper, check, old, new, flags, offset, kernel):
    text = f"r2 = {offset}\nr3 = {old:#x} ll\nr4 = {new:#x} ll\nr5 = {flags}\nr1 = r6\ncall {helper}\nexit\n"
    tc(text, csum_frame(check))


def test_csum_update_and_csum_level(kernel):
    text = f"r1 = r6\nr2 = 0x1234\ncall {CSUM_UPDATE}\nr9 = r0\nr9 <<= 4\n"
    for level in (0, 1, 0, 1, 1, 1, 1, 0, 2, 0, 3, 0, 2, 2, 0, 5, 1, 0):
        text += f"r1 = r6\nr2 = {level}\ncall {CSUM_LEVEL}\nr0 &= 0xf\nr9 <<= 4\nr9 |= r0\n"
    tc(text + "r0 = r9\nexit\n", TCP4)


# ---- tunnel metadata -----------------------------------------------------------------------------------

def tunnel_key(tun_id: int, remote: bytes, local: bytes, tos: int = 1, ttl: int = 64, label: int = 0,
               ext: int = 0) -> bytes:
    return struct.pack("<I16sBBHI16s", tun_id, remote, tos, ttl, ext, label, local)


KEY4 = tunnel_key(0x10203, bytes([10, 0, 0, 1]) + bytes(12), bytes([10, 0, 0, 2]) + bytes(12))
KEY6 = tunnel_key(7, bytes(range(16)), bytes(range(16, 32)), label=0xABCDEF)


def tunnel_program(key: bytes | None, set_size: int, set_flags: int, get_size: int, get_flags: int,
                   opt: bytes | None = None, opt_size: int = 8) -> str:
    """set_tunnel_key(key) [set_tunnel_opt(opt)], get_tunnel_key into the stack, [get_tunnel_opt], the
    bytes got stored over the packet's first 48 bytes; r0 = the results."""
    text = "r9 = 0\n"
    if key is not None:
        for i in range(0, 44, 4):
            text += f"*(u32 *)(r10 - {48 - i}) = {int.from_bytes(key[i:i + 4], 'little'):#x}\n"
        text += f"r1 = r6\nr2 = r10\nr2 += -48\nr3 = {set_size}\nr4 = {set_flags}\ncall {SET_TUNNEL_KEY}\n" \
                "r9 = r0\n"
    if opt is not None:
        for i in range(0, len(opt), 4):
            text += f"*(u32 *)(r10 - {104 - i}) = {int.from_bytes(opt[i:i + 4], 'little'):#x}\n"
        text += f"r1 = r6\nr2 = r10\nr2 += -104\nr3 = {len(opt)}\ncall {SET_TUNNEL_OPT}\n" \
                "r9 <<= 8\nr0 &= 0xff\nr9 |= r0\n"
    text += "r1 = 0x5a5a5a5a5a5a5a5a ll\n" + "".join(f"*(u64 *)(r10 - {8 * i}) = r1\n" for i in range(1, 7))
    text += f"r1 = r6\nr2 = r10\nr2 += -48\nr3 = {get_size}\nr4 = {get_flags}\ncall {GET_TUNNEL_KEY}\n" \
            "r9 <<= 8\nr0 &= 0xff\nr9 |= r0\n"
    if opt is not None:
        text += f"r1 = r6\nr2 = r10\nr2 += -64\nr3 = {opt_size}\ncall {GET_TUNNEL_OPT}\n" \
                "r9 <<= 8\nr0 &= 0xff\nr9 |= r0\n"
    text += f"r1 = r6\nr2 = 0\nr3 = r10\nr3 += -48\nr4 = 48\nr5 = 0\ncall {STORE}\nr0 = r9\nexit\n"
    return text


TUNNELS = [
    (None, 0, 0, 44, 0), (KEY4, 44, 0, 44, 0), (KEY4, 44, 0, 44, 1), (KEY4, 44, 0, 44, 16), (KEY4, 44, 0x1E, 44, 16),
    (KEY4, 44, 2 | 4 | 8 | 16, 44, 0x11), (KEY6, 44, 1, 44, 1), (KEY6, 44, 1, 44, 17), (KEY6, 44, 0, 44, 0),
    (KEY4, 28, 0, 28, 0), (KEY4, 24, 0, 24, 0), (KEY4, 22, 0, 22, 0), (KEY4, 8, 0, 8, 0), (KEY6, 44, 1, 8, 1),
    (KEY4, 20, 0, 44, 0), (KEY4, 44, 0, 20, 0), (KEY4, 44, 32, 44, 0), (KEY4, 44, 0, 44, 2),
    (tunnel_key(1, bytes(16), bytes(16), label=5), 44, 0, 44, 0), (tunnel_key(1, bytes(16), bytes(16), ext=1), 44, 0, 44, 0),
    (tunnel_key(1, bytes(16), bytes(16), label=0xFFFFFFFF), 44, 1, 44, 1),
]


@pytest.mark.parametrize("key,set_size,set_flags,get_size,get_flags", TUNNELS)
def test_tunnel_keys(key, set_size, set_flags, get_size, get_flags, kernel):
    tc(tunnel_program(key, set_size, set_flags, get_size, get_flags), TCP4 + bytes(40))


@pytest.mark.parametrize("opt,opt_size", [(bytes(range(8)), 8), (bytes(range(8)), 16), (bytes(range(8)), 4),
                                          (bytes(range(12)), 16), (bytes(6), 8)])
def test_tunnel_options(opt, opt_size, kernel):
    tc(tunnel_program(KEY4, 44, 0, 44, 16, opt=opt, opt_size=opt_size), TCP4 + bytes(40))


def test_tunnel_options_without_a_key(kernel):
    text = f"r1 = r6\nr2 = r10\nr2 += -8\nr3 = 8\ncall {GET_TUNNEL_OPT}\nr7 = r0\n" \
           f"*(u64 *)(r10 - 16) = 0\nr1 = r6\nr2 = r10\nr2 += -16\nr3 = 8\ncall {SET_TUNNEL_OPT}\nr7 <<= 8\n" \
           "r0 &= 0xff\nr7 |= r0\nr0 = r7\nexit\n"
    tc(text, TCP4)


# ---- hash, ECN --------------------------------------------------------------------------------------------

def test_set_hash_is_what_recalc_and_the_context_give(kernel):
    text = f"""
    r1 = r6
    r2 = 0x12345678
    call {SET_HASH}
    r1 = r6
    call {HASH_RECALC}
    r7 = r0
    r8 = *(u32 *)(r6 + {HASH})
    r7 ^= r8
    r1 = r6
    call {SET_HASH_INVALID}
    r0 = *(u32 *)(r6 + {HASH})
    r0 |= r7
    r0 ^= r8
    exit
    """
    tc(text, TCP4)


def ecn_frame(tos: int, v6: bool = False) -> bytes:
    if v6:
        frame = bytearray(TCP6)
        frame[14] = 0x60 | tos >> 4
        frame[15] = (tos & 0xF) << 4
        return bytes(frame)
    return eth(ETH_P_IP, ipv4("10.0.0.1", "10.0.0.2", 17, udp("10.0.0.1", "10.0.0.2", 1, 2, b"z"), tos=tos))


@pytest.mark.parametrize("tos", [0, 1, 2, 3, 0xB8, 0xB9, 0xBA, 0xFE])
@pytest.mark.parametrize("v6", [False, True])
def test_ecn_set_ce(tos, v6, kernel):
    tc(f"r1 = r6\ncall {ECN}\nexit\n", ecn_frame(tos, v6))


def test_ecn_on_other_protocols_and_bare_headers(kernel):
    tc(f"r1 = r6\ncall {ECN}\nexit\n", ARP)
    tc(f"r1 = r6\ncall {ECN}\nexit\n", ecn_frame(2)[:34])


def test_csum_diff_then_l4_replace_by_diff(kernel):
    text = f"""
    r1 = 0x0a000001
    *(u32 *)(r10 - 4) = r1
    r1 = 0xc0a80001
    *(u32 *)(r10 - 8) = r1
    r1 = r10
    r1 += -4
    r2 = 4
    r3 = r10
    r3 += -8
    r4 = 4
    r5 = 0
    call {CSUM_DIFF}
    r4 = r0
    r1 = r6
    r2 = 50
    r3 = 0
    r5 = 0x10
    call {L4}
    exit
    """
    tc(text, TCP4)


# ---- packet pointers after a change -----------------------------------------------------------------------

DATA_CHANGING = {
    "pull_data": call(PULL, 0),
    "change_tail": call(CHANGE_TAIL, 40, 0),
    "adjust_room": call(ADJUST_ROOM, 8, 1, 0),
    "store_bytes": f"r1 = r6\nr2 = 0\nr3 = r10\nr3 += -8\nr4 = 1\nr5 = 0\ncall {STORE}\n",
    "l3_csum_replace": call(L3, 24, 0, 0, 2),
}


@pytest.mark.parametrize("name", list(DATA_CHANGING))
def test_old_packet_pointers_fault_after_a_data_changing_helper(name):
    """The kernel refuses such a program at load time (the verifier forgets packet pointers after these
    helpers, whatever they return); the VM moves the packet, so a kept pointer faults, in both tiers,
    while the pointers reloaded from the context work."""
    before = "r6 = r1\nr7 = *(u32 *)(r6 + 76)\n*(u64 *)(r10 - 8) = 0\n" + DATA_CHANGING[name]
    stale = before + "r0 = *(u8 *)(r7 + 0)\nexit\n"
    for engine, outcome in run_asm(stale, "sched_cls", TCP4, engines=("interp", "fast")).items():
        assert outcome.error is not None and "packet as it was before bpf_" in outcome.error, engine
    fresh = before + "r7 = *(u32 *)(r6 + 76)\nr0 = *(u8 *)(r7 + 6)\nexit\n"
    assert same(run_asm(fresh, "sched_cls", TCP4, engines=("interp", "fast"))).retval == TCP4[6]
