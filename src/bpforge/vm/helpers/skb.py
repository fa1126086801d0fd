"""Socket buffer helpers (net/core/filter.c) for the skb program types as BPF_PROG_TEST_RUN runs them:
reading and writing packet bytes, checksums, growing and shrinking the packet at its head, tail or between
headers, changing the protocol or packet type, the flow hash, tunnel metadata, ECN, and legacy LD_ABS /
LD_IND loads.

The packet is `vm.context.Packet`: a buffer whose offsets `data`/`end` are skb->data and the tail, with
the link-layer and network headers at `mac`/`network`. What the kernel keeps in the sk_buff besides the
bytes (the transport header, encapsulation, checksum state, whether the hash was set, the tunnel metadata
dst) is an `SkbState` on the packet; protocol, pkt_type, hash and the GSO fields are the context's
(struct __sk_buff) fields, which is where a program reads them.

A helper that changes packet data makes the verifier forget every packet pointer the program held; here
the packet moves to new memory, so an old pointer faults instead of reading bytes that moved.

A test run's skb: linear, not cloned, not GSO unless the context gave gso_size (then only the plain GSO
checks apply: gso_type is 0), ip_summed CHECKSUM_NONE, no transport header set, no dst.
"""

from __future__ import annotations

import errno
import struct
import zlib
from dataclasses import dataclass

from ...errors import ENOTSUPP
from ...isa.contexts import (
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN, IPV6_HLEN, NET_SKB_PAD, PACKET_OTHERHOST,
    PAGE_SIZE, SKB_SHARED_INFO,
)
from ...isa.numbers import M16, M32, s32
from ..memory import VmFault
from .checksum import (
    csum16_add, csum_from32to16, csum_partial, csum_replace2, csum_replace4, csum_replace_by_diff, csum_sub,
)
from .registry import err, helper, is_skb, needs, packet, set_skb_field, skb_field

SKB_MAX_ALLOC = (PAGE_SIZE << 2) - SKB_SHARED_INFO  # BPF_SKB_MAX_LEN
CHECKSUM_NONE, CHECKSUM_UNNECESSARY = 0, 1
SKB_MAX_CSUM_LEVEL = 3
CSUM_MANGLED_0 = 0xFFFF
# bpf_skb_store_bytes / l3 / l4 csum flags
BPF_F_RECOMPUTE_CSUM, BPF_F_INVALIDATE_HASH = 1, 2
BPF_F_HDR_FIELD_MASK, BPF_F_PSEUDO_HDR, BPF_F_MARK_MANGLED_0, BPF_F_MARK_ENFORCE, BPF_F_IPV6 = 0xF, 16, 32, 64, 128
# bpf_skb_adjust_room
BPF_ADJ_ROOM_NET, BPF_ADJ_ROOM_MAC = 0, 1
ADJ_FIXED_GSO, ADJ_ENCAP_L3_IPV4, ADJ_ENCAP_L3_IPV6, ADJ_ENCAP_L4_GRE, ADJ_ENCAP_L4_UDP = 1, 2, 4, 8, 16
ADJ_NO_CSUM_RESET, ADJ_ENCAP_L2_ETH, ADJ_DECAP_L3_IPV4, ADJ_DECAP_L3_IPV6 = 32, 64, 128, 256
ADJ_ENCAP_L2_SHIFT = 56
ADJ_ENCAP_L3 = ADJ_ENCAP_L3_IPV4 | ADJ_ENCAP_L3_IPV6
ADJ_DECAP_L3 = ADJ_DECAP_L3_IPV4 | ADJ_DECAP_L3_IPV6
ADJ_ROOM_MASK = (ADJ_FIXED_GSO | ADJ_ENCAP_L3 | ADJ_ENCAP_L4_GRE | ADJ_ENCAP_L4_UDP | ADJ_ENCAP_L2_ETH
                 | (0xFF << ADJ_ENCAP_L2_SHIFT) | ADJ_DECAP_L3)
# bpf_csum_level
BPF_CSUM_LEVEL_QUERY, BPF_CSUM_LEVEL_INC, BPF_CSUM_LEVEL_DEC, BPF_CSUM_LEVEL_RESET = range(4)
BPF_HDR_START_MAC, BPF_HDR_START_NET = 0, 1
# tunnel keys (struct bpf_tunnel_key, 44 bytes; the older, shorter layouts are accepted too)
TUNNEL_KEY_SIZE = 44
BPF_F_TUNINFO_IPV6, BPF_F_ZERO_CSUM_TX, BPF_F_DONT_FRAGMENT, BPF_F_SEQ_NUMBER, BPF_F_NO_TUNNEL_KEY = 1, 2, 4, 8, 16
BPF_F_TUNINFO_FLAGS = 16
# IP_TUNNEL_*_BIT (include/net/ip_tunnels.h)
TUN_CSUM, TUN_KEY, TUN_SEQ, TUN_DONT_FRAGMENT, TUN_NOCACHE = 0, 2, 3, 8, 13
TUN_OPTION_BITS = (11, 12, 14, 15, 17)  # GENEVE, VXLAN, ERSPAN, GTP, PFCP: "options present"
IP_TUNNEL_OPTS_MAX = 255
IPV6_FLOWLABEL_MASK = 0x000FFFFF


@dataclass
class TunnelInfo:
    """The metadata dst bpf_skb_set_tunnel_key attaches (struct ip_tunnel_info, the parts BPF reads)."""

    ipv6: bool
    tun_id: int
    tos: int
    ttl: int
    flags: int  # IP_TUNNEL_*_BIT bits
    src: bytes  # key.u.ipv4/ipv6.src, network order
    dst: bytes
    label: int = 0
    options: bytes = b""


@dataclass
class SkbState:
    transport: int | None = None  # skb_transport_header; None: never set (test_run does not set it)
    encapsulation: bool = False
    ip_summed: int = CHECKSUM_NONE
    csum_level: int = 0
    hash_set: bool = False  # l4_hash/sw_hash: skb_get_hash returns skb->hash without recomputing
    tunnel: TunnelInfo | None = None
    spare: object = None  # the packet's other memory (vm.memory.Region), see _moved


def skb_state(pkt) -> SkbState:
    if pkt.skb_state is None:
        pkt.skb_state = SkbState()
    return pkt.skb_state


def _skb(vm, name: str, *, changes_data: bool = False, headroom: int = 0):
    """The packet and its state; `changes_data` for the helpers after which the verifier forgets packet
    pointers (bpf_helper_changes_pkt_data), whether or not they succeed: the packet moves to new memory
    (with `headroom` bytes before skb->data at least)."""
    needs(vm, is_skb(vm), f"{name} is for socket buffer programs (not {vm.input.prog_type})")
    pkt = packet(vm)
    if changes_data:
        _moved(vm, pkt, name, headroom)
    return pkt, skb_state(pkt)


def _protocol(vm) -> int:
    """skb->protocol in host order (the context field holds the network-order value)."""
    return int.from_bytes(skb_field(vm, "protocol").to_bytes(2, "little"), "big")


def _set_protocol(vm, proto: int) -> None:
    set_skb_field(vm, "protocol", int.from_bytes(proto.to_bytes(2, "big"), "little"))


def _gso(vm) -> bool:
    return skb_field(vm, "gso_size") != 0


def _moved(vm, pkt, why: str, headroom: int = 0) -> None:
    """The packet data changes: its bytes go to other memory, with at least `headroom` bytes before
    skb->data (skb_cow_head), and the memory they were in becomes unreachable, as the verifier makes old
    packet pointers. Two memories take turns, so that a program calling such helpers in a loop does not
    pile up copies: a pointer kept across one change faults, one kept across two would see the packet."""
    state = skb_state(pkt)
    old = pkt.region
    grow = max(0, headroom - pkt.data)
    if grow:
        grow += NET_SKB_PAD  # pskb_expand_head makes room and some
    data = bytes(grow) + old.buf
    spare = state.spare
    if spare is None:
        spare = vm.machine.memory.map(bytearray(data), "packet")
    else:
        spare.buf[:] = data
        spare.name = "packet"
    pkt.region = spare
    for name in ("meta", "data", "end", "mac", "network"):
        setattr(pkt, name, getattr(pkt, name) + grow)
    if state.transport is not None:
        state.transport += grow
    pkt.max_end = len(spare.buf)
    pkt.sync()
    old.name = f"packet as it was before {why} (packet pointers must be reloaded after it)"
    old.lo = old.hi = 0
    old.buf[:] = b""
    state.spare = old


def _set_end(pkt, end: int) -> None:
    buf = pkt.region.buf
    if end > len(buf):
        buf.extend(bytes(end - len(buf)))
        pkt.max_end = len(buf)
    pkt.end = end
    pkt.sync()


def _clear_hash(vm, state: SkbState) -> None:
    state.hash_set = False
    set_skb_field(vm, "hash", 0)


# ---- bytes ------------------------------------------------------------------------------------------------

def _in_packet(pkt, offset: int, length: int) -> int | None:
    """The buffer offset of [offset, offset + length) from skb->data, if it is inside the packet."""
    start = pkt.data + offset
    return start if offset >= 0 and length >= 0 and start + length <= pkt.end else None


@helper("skb_load_bytes")
def _skb_load_bytes(vm, skb, offset, to_ptr, length, _):
    """Bytes from skb->data + offset (an offset up to INT_MAX; 0xffff for flow dissectors); out of the
    packet: the destination zeroed and -EFAULT."""
    pkt = packet(vm)
    length, offset = length & M32, offset & M32
    limit = 0xFFFF if vm.input.prog_type == "flow_dissector" else 0x7FFFFFFF
    start = _in_packet(pkt, offset, length) if offset <= limit else None
    if start is None:
        vm.machine.memory.write(to_ptr, bytes(length))
        return err(errno.EFAULT)
    vm.machine.memory.write(to_ptr, bytes(pkt.region.buf[start:start + length]))
    return 0


@helper("skb_load_bytes_relative")
def _skb_load_bytes_relative(vm, skb, offset, to_ptr, length, start_header):
    pkt, _ = _skb(vm, "bpf_skb_load_bytes_relative")
    offset, length, start_header = offset & M32, length & M32, start_header & M32
    base = {BPF_HDR_START_MAC: pkt.mac, BPF_HDR_START_NET: pkt.network}.get(start_header)
    if offset > 0xFFFF or base is None or base + offset + length > pkt.end:
        vm.machine.memory.write(to_ptr, bytes(length))
        return err(errno.EFAULT)
    vm.machine.memory.write(to_ptr, bytes(pkt.region.buf[base + offset:base + offset + length]))
    return 0


@helper("skb_store_bytes")
def _skb_store_bytes(vm, skb, offset, from_ptr, length, flags):
    pkt, state = _skb(vm, "bpf_skb_store_bytes", changes_data=True)
    if flags & ~(BPF_F_RECOMPUTE_CSUM | BPF_F_INVALIDATE_HASH):
        return err(errno.EINVAL)
    offset, length = offset & M32, length & M32
    if offset > 0x7FFFFFFF or _in_packet(pkt, offset, length) is None:
        return err(errno.EFAULT)
    data = vm.machine.memory.read(from_ptr, length)
    start = pkt.data + offset
    pkt.region.buf[start:start + length] = data
    if flags & BPF_F_INVALIDATE_HASH:
        _clear_hash(vm, state)
    return 0


@helper("skb_pull_data")
def _skb_pull_data(vm, skb, length, *_):
    """The first `length` bytes (0: the linear part) made directly readable and writable: a test run's
    packet already is, so only a length past the packet fails (-ENOMEM, as pskb_may_pull)."""
    pkt, _ = _skb(vm, "bpf_skb_pull_data", changes_data=True)
    return err(errno.ENOMEM) if length & M32 > pkt.end - pkt.data else 0


# ---- checksums ------------------------------------------------------------------------------------------

def _csum_field(vm, pkt, offset: int) -> int | None:
    """The buffer offset of the 16-bit checksum at `offset` (an even offset up to 0xffff, inside the
    packet), or None."""
    if offset > 0xFFFF or offset & 1:
        return None
    return _in_packet(pkt, offset, 2)


@helper("l3_csum_replace")
def _l3_csum_replace(vm, skb, offset, old, new, flags):
    pkt, _ = _skb(vm, "bpf_l3_csum_replace", changes_data=True)
    if flags & ~BPF_F_HDR_FIELD_MASK:
        return err(errno.EINVAL)
    at = _csum_field(vm, pkt, offset & M32)
    if at is None:
        return err(errno.EFAULT)
    buf = pkt.region.buf
    check = int.from_bytes(buf[at:at + 2], "little")
    size = flags & BPF_F_HDR_FIELD_MASK
    if size == 0:
        if old:
            return err(errno.EINVAL)
        check = csum_replace_by_diff(check, new & M32)
    elif size == 2:
        check = csum_replace2(check, old & M16, new & M16)
    elif size == 4:
        check = csum_replace4(check, old & M32, new & M32)
    else:
        return err(errno.EINVAL)
    buf[at:at + 2] = check.to_bytes(2, "little")
    return 0


@helper("l4_csum_replace")
def _l4_csum_replace(vm, skb, offset, old, new, flags):
    """inet_proto_csum_replace*: on a packet whose checksum is not CHECKSUM_PARTIAL (a test run's never
    is) the pseudo-header flag changes nothing but skb->csum, which a test run does not keep."""
    pkt, _ = _skb(vm, "bpf_l4_csum_replace", changes_data=True)
    if flags & ~(BPF_F_MARK_MANGLED_0 | BPF_F_MARK_ENFORCE | BPF_F_PSEUDO_HDR | BPF_F_HDR_FIELD_MASK | BPF_F_IPV6):
        return err(errno.EINVAL)
    at = _csum_field(vm, pkt, offset & M32)
    if at is None:
        return err(errno.EFAULT)
    buf = pkt.region.buf
    check = int.from_bytes(buf[at:at + 2], "little")
    mangled_0 = flags & BPF_F_MARK_MANGLED_0
    if mangled_0 and not flags & BPF_F_MARK_ENFORCE and not check:
        return 0
    size = flags & BPF_F_HDR_FIELD_MASK
    if size == 0:
        if old:
            return err(errno.EINVAL)
        check = csum_replace_by_diff(check, new & M32)
    elif size in (2, 4):  # inet_proto_csum_replace2 is replace4 of the 16-bit values
        mask = M16 if size == 2 else M32
        check = csum_replace4(check, old & mask, new & mask)
    else:
        return err(errno.EINVAL)
    if mangled_0 and not check:
        check = CSUM_MANGLED_0
    buf[at:at + 2] = check.to_bytes(2, "little")
    return 0


@helper("csum_diff")
def _csum_diff(vm, from_ptr, from_size, to_ptr, to_size, seed):
    """csum_partial of `to` minus that of `from`, onto `seed`, folded to 16 bits (not complemented): what
    a program adds to a checksum with csum_replace_by_diff (l3/l4_csum_replace with size 0). Any sizes:
    a tail of 1..3 bytes counts zero-padded."""
    mem = vm.machine.memory
    from_size, to_size = from_size & M32, to_size & M32
    old = mem.read(from_ptr, from_size) if from_size else b""
    new = mem.read(to_ptr, to_size) if to_size else b""
    seed &= M32
    if from_size and to_size:
        total = csum_sub(csum_partial(new, seed), csum_partial(old, 0))
    elif to_size:
        total = csum_partial(new, seed)
    elif from_size:
        total = ~csum_partial(old, ~seed & M32) & M32
    else:
        total = seed
    return csum_from32to16(total)


@helper("csum_update")
def _csum_update(vm, skb, csum, *_):
    """skb->csum += csum for CHECKSUM_COMPLETE packets; a test run's never is one: -ENOTSUPP."""
    _skb(vm, "bpf_csum_update")
    return err(ENOTSUPP)


@helper("csum_level")
def _csum_level(vm, skb, level, *_):
    _, state = _skb(vm, "bpf_csum_level")
    if level == BPF_CSUM_LEVEL_QUERY:
        return state.csum_level if state.ip_summed == CHECKSUM_UNNECESSARY else err(errno.EACCES)
    if level == BPF_CSUM_LEVEL_INC:
        if state.ip_summed == CHECKSUM_UNNECESSARY:
            state.csum_level = min(state.csum_level + 1, SKB_MAX_CSUM_LEVEL)
        else:
            state.ip_summed, state.csum_level = CHECKSUM_UNNECESSARY, 0
    elif level == BPF_CSUM_LEVEL_DEC:
        if state.ip_summed == CHECKSUM_UNNECESSARY:
            if state.csum_level == 0:
                state.ip_summed = CHECKSUM_NONE
            else:
                state.csum_level -= 1
    elif level == BPF_CSUM_LEVEL_RESET:
        _reset_csum_unnecessary(state)
    else:
        return err(errno.EINVAL)
    return 0


def _reset_csum_unnecessary(state: SkbState) -> None:
    if state.ip_summed == CHECKSUM_UNNECESSARY:
        state.ip_summed, state.csum_level = CHECKSUM_NONE, 0


# ---- pushing and pulling headers ---------------------------------------------------------------------------

def _hdr_push(pkt, off: int, length: int) -> None:
    """bpf_skb_net_hdr_push: `length` zero bytes inserted after the first `off` bytes of skb->data (the
    caller made the headroom); the mac and network headers move back with the data before them."""
    state = skb_state(pkt)
    trans_same = state.transport == pkt.network
    buf = pkt.region.buf
    start = pkt.data - length
    buf[start:start + off] = buf[pkt.data:pkt.data + off]
    buf[start + off:start + off + length] = bytes(length)
    pkt.data = pkt.meta = start
    pkt.mac -= length
    pkt.network -= length
    if trans_same:
        state.transport = pkt.network
    pkt.sync()


def _hdr_pop(pkt, off: int, length: int) -> int:
    """bpf_skb_net_hdr_pop: `length` bytes removed after the first `off` ones; 0 or -ENOMEM."""
    if off + length > pkt.end - pkt.data:
        return -errno.ENOMEM
    state = skb_state(pkt)
    trans_same = state.transport == pkt.network
    buf = pkt.region.buf
    buf[pkt.data + length:pkt.data + length + off] = buf[pkt.data:pkt.data + off]
    pkt.data = pkt.meta = pkt.data + length
    pkt.mac += length
    pkt.network += length
    if trans_same:
        state.transport = pkt.network
    pkt.sync()
    return 0


def _net_base_len(proto: int) -> int:
    return {ETH_P_IP: IPV4_HLEN, ETH_P_IPV6: IPV6_HLEN}.get(proto, M32)


@helper("skb_change_proto")
def _skb_change_proto(vm, skb, proto, flags, *_):
    """IPv4 <-> IPv6: 20 bytes of room made (or removed) right after the link-layer header; the program
    writes the new header itself."""
    diff = IPV6_HLEN - IPV4_HLEN
    pkt, state = _skb(vm, "bpf_skb_change_proto", changes_data=True, headroom=diff)
    if flags:
        return err(errno.EINVAL)
    to = int.from_bytes((proto & M16).to_bytes(2, "little"), "big")
    current = _protocol(vm)
    off = pkt.network - pkt.mac
    if current == ETH_P_IP and to == ETH_P_IPV6:
        _hdr_push(pkt, off, diff)
    elif current == ETH_P_IPV6 and to == ETH_P_IP:
        result = _hdr_pop(pkt, off, diff)
        if result:
            return err(-result)
    else:
        return err(ENOTSUPP)
    _set_protocol(vm, to)
    _clear_hash(vm, state)
    return 0


@helper("skb_change_type")
def _skb_change_type(vm, skb, pkt_type, *_):
    _skb(vm, "bpf_skb_change_type")
    pkt_type &= M32
    if skb_field(vm, "pkt_type") > PACKET_OTHERHOST or pkt_type > PACKET_OTHERHOST:
        return err(errno.EINVAL)
    set_skb_field(vm, "pkt_type", pkt_type)
    return 0


@helper("skb_adjust_room")
def _skb_adjust_room(vm, skb, len_diff, mode, flags, _):
    """Room grown or shrunk at the network header (BPF_ADJ_ROOM_MAC) or after the L3 header
    (BPF_ADJ_ROOM_NET), optionally setting up encapsulation (the ENCAP flags) or changing the outer
    protocol on decapsulation (DECAP)."""
    diff, mode = s32(len_diff), mode & M32
    size, shrink = abs(diff), diff < 0
    pkt, state = _skb(vm, "bpf_skb_adjust_room", changes_data=True, headroom=0 if shrink else min(size, 0xFFF))
    proto = _protocol(vm)
    len_min = _net_base_len(proto)
    if flags & ~(ADJ_ROOM_MASK | ADJ_NO_CSUM_RESET):
        return err(errno.EINVAL)
    if size > 0xFFF:
        return err(errno.EFAULT)
    if proto not in (ETH_P_IP, ETH_P_IPV6):
        return err(ENOTSUPP)
    off = pkt.network - pkt.mac
    if mode == BPF_ADJ_ROOM_NET:
        off += len_min
    elif mode != BPF_ADJ_ROOM_MAC:
        return err(ENOTSUPP)
    if flags & ADJ_DECAP_L3:
        if not shrink:
            return err(errno.EINVAL)
        decap = flags & ADJ_DECAP_L3
        if decap == ADJ_DECAP_L3:
            return err(errno.EINVAL)
        len_min = IPV4_HLEN if decap == ADJ_DECAP_L3_IPV4 else IPV6_HLEN
    skb_len = pkt.end - pkt.data
    len_cur = skb_len - (pkt.network - pkt.data)
    if (shrink and (size >= len_cur or len_cur - size < len_min)) or \
            (not shrink and skb_len + size > SKB_MAX_ALLOC and not _gso(vm)):
        return err(ENOTSUPP)
    result = _net_shrink(vm, pkt, state, off, size, flags) if shrink else _net_grow(vm, pkt, state, off, size, flags)
    if not result and not flags & ADJ_NO_CSUM_RESET:
        _reset_csum_unnecessary(state)
    return err(-result)


def _net_grow(vm, pkt, state: SkbState, off: int, size: int, flags: int) -> int:
    inner_mac_len = flags >> ADJ_ENCAP_L2_SHIFT & 0xFF
    encap = flags & ADJ_ENCAP_L3
    if _gso(vm):  # a test run's GSO packet has no gso_type: not TCP, not UDP_L4
        return -ENOTSUPP
    if encap:
        if flags & ADJ_ENCAP_L3 == ADJ_ENCAP_L3:
            return -errno.EINVAL
        if flags & ADJ_ENCAP_L4_GRE and flags & ADJ_ENCAP_L4_UDP:
            return -errno.EINVAL
        if flags & ADJ_ENCAP_L2_ETH and inner_mac_len < ETH_HLEN:
            return -errno.EINVAL
        if state.encapsulation:
            return -errno.EALREADY
        if inner_mac_len > size:
            return -errno.EINVAL
        mac_len = pkt.network - pkt.mac
    _hdr_push(pkt, off, size)
    if encap:
        state.encapsulation = True
        pkt.network = pkt.data + mac_len
        if flags & (ADJ_ENCAP_L4_GRE | ADJ_ENCAP_L4_UDP):
            state.transport = pkt.network + (IPV6_HLEN if flags & ADJ_ENCAP_L3_IPV6 else IPV4_HLEN)
        proto = _protocol(vm)
        if proto == ETH_P_IP and flags & ADJ_ENCAP_L3_IPV6:
            _set_protocol(vm, ETH_P_IPV6)
        elif proto == ETH_P_IPV6 and flags & ADJ_ENCAP_L3_IPV4:
            _set_protocol(vm, ETH_P_IP)
    return 0


def _net_shrink(vm, pkt, state: SkbState, off: int, size: int, flags: int) -> int:
    if flags & ~(ADJ_FIXED_GSO | ADJ_DECAP_L3 | ADJ_NO_CSUM_RESET):
        return -errno.EINVAL
    if _gso(vm):
        return -ENOTSUPP
    result = _hdr_pop(pkt, off, size)
    if result:
        return result
    proto = _protocol(vm)
    if proto == ETH_P_IP and flags & ADJ_DECAP_L3_IPV6:
        _set_protocol(vm, ETH_P_IPV6)
    elif proto == ETH_P_IPV6 and flags & ADJ_DECAP_L3_IPV4:
        _set_protocol(vm, ETH_P_IP)
    return 0


def _min_len(pkt, state: SkbState) -> int:
    """__bpf_skb_min_len: the packet may not be cut before the network header (the transport header once
    it is set)."""
    min_len = max(pkt.network - pkt.data, 0)
    if state.transport is not None and state.transport - pkt.data > 0:
        min_len = state.transport - pkt.data
    return min_len


@helper("skb_change_tail")
def _skb_change_tail(vm, skb, new_len, flags, *_):
    """The packet grown (with zeros) or trimmed to `new_len` bytes."""
    pkt, state = _skb(vm, "bpf_skb_change_tail", changes_data=True)
    new_len &= M32
    if flags or new_len > SKB_MAX_ALLOC or new_len < _min_len(pkt, state):
        return err(errno.EINVAL)
    if state.encapsulation:
        return err(ENOTSUPP)
    old_end = pkt.end
    _set_end(pkt, pkt.data + new_len)
    if pkt.end > old_end:
        pkt.region.buf[old_end:pkt.end] = bytes(pkt.end - old_end)
    if _gso(vm):  # skb_gso_reset
        set_skb_field(vm, "gso_size", 0)
        set_skb_field(vm, "gso_segs", 0)
    return 0


@helper("skb_change_head")
def _skb_change_head(vm, skb, head_room, flags, *_):
    """`head_room` zero bytes pushed before the packet, which become its link-layer header (the mac
    header is reset to skb->data)."""
    head_room &= M32
    pkt, _ = _skb(vm, "bpf_skb_change_head", changes_data=True, headroom=min(head_room, SKB_MAX_ALLOC))
    skb_len = pkt.end - pkt.data
    new_len = (skb_len + head_room) & M32
    if flags or (not _gso(vm) and new_len > SKB_MAX_ALLOC) or new_len < skb_len:
        return err(errno.EINVAL)
    pkt.data = pkt.meta = pkt.data - head_room
    pkt.region.buf[pkt.data:pkt.data + head_room] = bytes(head_room)
    pkt.mac = pkt.data
    pkt.sync()
    return 0


# ---- the flow hash -------------------------------------------------------------------------------------------

@helper("get_hash_recalc")
def _get_hash_recalc(vm, *_):
    """skb_get_hash: the hash a program set (bpf_set_hash) or the one computed earlier; else the flow
    hash. The kernel hashes the flow keys with a seed chosen at boot, so no run can reproduce its value:
    this is a stable hash of the packet instead (same packet, same hash; never 0)."""
    pkt = packet(vm)
    if not is_skb(vm):
        return zlib.crc32(pkt.bytes()) or 1
    state = skb_state(pkt)
    if not state.hash_set:
        set_skb_field(vm, "hash", zlib.crc32(pkt.bytes()) or 1)
        state.hash_set = True
    return skb_field(vm, "hash")


@helper("set_hash")
def _set_hash(vm, skb, value, *_):
    _, state = _skb(vm, "bpf_set_hash")
    set_skb_field(vm, "hash", value & M32)
    state.hash_set = True
    return 0


@helper("set_hash_invalid")
def _set_hash_invalid(vm, *_):
    _, state = _skb(vm, "bpf_set_hash_invalid")
    _clear_hash(vm, state)
    return 0


# ---- tunnel metadata -------------------------------------------------------------------------------------

_COMPAT_SET = (28, 24, 22, 8)  # offsetof local_ipv6[0], tunnel_label, tunnel_ext, remote_ipv6[1]
_COMPAT_GET = (28, 24, 22)


def _flags_to_be16(bits: int) -> int:
    """ip_tunnel_flags_to_be16: the low 16 flag bits as the legacy __be16 TUNNEL_* value (read natively)."""
    return int.from_bytes((bits & M16).to_bytes(2, "big"), "little")


@helper("skb_get_tunnel_key")
def _skb_get_tunnel_key(vm, skb, to_ptr, size, flags, _):
    _, state = _skb(vm, "bpf_skb_get_tunnel_key")
    size &= M32
    info = state.tunnel
    mem = vm.machine.memory
    result = 0
    if info is None or flags & ~(BPF_F_TUNINFO_IPV6 | BPF_F_TUNINFO_FLAGS):
        result = errno.EINVAL
    elif info.ipv6 != bool(flags & BPF_F_TUNINFO_IPV6):
        result = errno.EPROTO
    elif size != TUNNEL_KEY_SIZE and not (size in _COMPAT_GET or (size == 8 and not info.ipv6)):
        result = errno.EINVAL
    if result:
        mem.write(to_ptr, bytes(size))
        return err(result)
    key = bytearray(TUNNEL_KEY_SIZE)
    struct.pack_into("<IBBH", key, 0, info.tun_id & M32, 0, 0, 0)
    key[20], key[21] = info.tos, info.ttl
    struct.pack_into("<H", key, 22, _flags_to_be16(info.flags) if flags & BPF_F_TUNINFO_FLAGS else 0)
    if info.ipv6:
        key[4:20], key[28:44] = info.src, info.dst
        struct.pack_into("<I", key, 24, info.label)
    else:
        struct.pack_into("<I", key, 4, int.from_bytes(info.src, "big"))
        struct.pack_into("<I", key, 28, int.from_bytes(info.dst, "big"))
    mem.write(to_ptr, bytes(key[:size]))
    return 0


@helper("skb_set_tunnel_key")
def _skb_set_tunnel_key(vm, skb, from_ptr, size, flags, _):
    _, state = _skb(vm, "bpf_skb_set_tunnel_key")
    size &= M32
    if flags & ~(BPF_F_TUNINFO_IPV6 | BPF_F_ZERO_CSUM_TX | BPF_F_DONT_FRAGMENT | BPF_F_SEQ_NUMBER
                 | BPF_F_NO_TUNNEL_KEY):
        return err(errno.EINVAL)
    if size != TUNNEL_KEY_SIZE and size not in _COMPAT_SET:
        return err(errno.EINVAL)
    key = vm.machine.memory.read(from_ptr, size).ljust(TUNNEL_KEY_SIZE, b"\0")
    tun_id, = struct.unpack_from("<I", key, 0)
    ext, label = struct.unpack_from("<HI", key, 22)
    ipv6 = bool(flags & BPF_F_TUNINFO_IPV6)
    if (not ipv6 and label) or ext:
        return err(errno.EINVAL)
    bits = 1 << TUN_NOCACHE
    bits |= (1 << TUN_DONT_FRAGMENT if flags & BPF_F_DONT_FRAGMENT else 0)
    bits |= (0 if flags & BPF_F_ZERO_CSUM_TX else 1 << TUN_CSUM)
    bits |= (1 << TUN_SEQ if flags & BPF_F_SEQ_NUMBER else 0)
    bits |= (0 if flags & BPF_F_NO_TUNNEL_KEY else 1 << TUN_KEY)
    if ipv6:  # dst is the remote end, src the local one
        info = TunnelInfo(True, tun_id, key[20], key[21], bits, src=bytes(key[28:44]), dst=bytes(key[4:20]),
                          label=label & IPV6_FLOWLABEL_MASK)
    else:
        remote, local = struct.unpack_from("<I", key, 4)[0], struct.unpack_from("<I", key, 28)[0]
        info = TunnelInfo(False, tun_id, key[20], key[21], bits, src=local.to_bytes(4, "big"),
                          dst=remote.to_bytes(4, "big"))
    state.tunnel = info
    return 0


@helper("skb_get_tunnel_opt")
def _skb_get_tunnel_opt(vm, skb, to_ptr, size, *_):
    _, state = _skb(vm, "bpf_skb_get_tunnel_opt")
    size &= M32
    info = state.tunnel
    mem = vm.machine.memory
    if info is None or not any(info.flags >> bit & 1 for bit in TUN_OPTION_BITS):
        mem.write(to_ptr, bytes(size))
        return err(errno.ENOENT)
    if size < len(info.options):
        mem.write(to_ptr, bytes(size))
        return err(errno.ENOMEM)
    mem.write(to_ptr, info.options.ljust(size, b"\0"))
    return len(info.options)


@helper("skb_set_tunnel_opt")
def _skb_set_tunnel_opt(vm, skb, from_ptr, size, *_):
    _, state = _skb(vm, "bpf_skb_set_tunnel_opt")
    size &= M32
    info = state.tunnel
    if info is None or size & 3:
        return err(errno.EINVAL)
    if size > IP_TUNNEL_OPTS_MAX:
        return err(errno.ENOMEM)
    info.options = vm.machine.memory.read(from_ptr, size) if size else b""
    if size:
        for bit in TUN_OPTION_BITS:
            info.flags |= 1 << bit
    return 0


@helper("get_route_realm")
def _get_route_realm(vm, *_):
    """dst_tclassid: a test run's skb has no route (and a tunnel metadata dst has no realm)."""
    _skb(vm, "bpf_get_route_realm")
    return 0


# ---- ECN ----------------------------------------------------------------------------------------------------

@helper("skb_ecn_set_ce")
def _skb_ecn_set_ce(vm, *_):
    """INET_ECN_set_ce: mark Congestion Experienced in the IPv4 TOS (fixing the header checksum) or the
    IPv6 traffic class, unless the packet is not ECN-capable; 1 when marked."""
    pkt, _ = _skb(vm, "bpf_skb_ecn_set_ce")
    proto = _protocol(vm)
    if proto in (ETH_P_8021Q, ETH_P_8021AD):
        raise VmFault("bpf_skb_ecn_set_ce on a VLAN-tagged skb is not modelled")
    hlen = {ETH_P_IP: IPV4_HLEN, ETH_P_IPV6: IPV6_HLEN}.get(proto)
    if hlen is None or pkt.end - pkt.data < hlen or pkt.network + hlen > pkt.end:
        return 0
    buf, nh = pkt.region.buf, pkt.network
    if proto == ETH_P_IP:
        tos = buf[nh + 1]
        ecn = (tos + 1) & 3
        if not ecn & 2:
            return int(not ecn)
        check_add = (0xFBFF + (ecn << 8)) & M16  # htons(0xFFFB) + htons(ecn), as u16
        check = int.from_bytes(buf[nh + 10:nh + 12], "little")
        buf[nh + 10:nh + 12] = csum16_add(check, check_add).to_bytes(2, "little")
        buf[nh + 1] = tos | 3
        return 1
    word = int.from_bytes(buf[nh:nh + 4], "big")
    if (word >> 20) & 3 == 0:  # Not-ECT
        return 0
    buf[nh:nh + 4] = (word | 3 << 20).to_bytes(4, "big")
    return 1


# ---- LD_ABS / LD_IND ----------------------------------------------------------------------------------------

SKF_NET_OFF, SKF_LL_OFF = -0x100000, -0x200000
LEGACY_LOAD_TYPES = ("socket_filter", "sched_cls", "sched_act")  # may_access_skb


def legacy_load(inp, size: int, offset: int) -> int | None:
    """LD_ABS/LD_IND: a big-endian read of `size` bytes at `offset` (a signed 32-bit int) from skb->data,
    or None when out of bounds, which ends the program with r0 = 0 as in the kernel.

    Negative offsets are bpf_internal_load_pointer_neg_helper's: from SKF_NET_OFF (-0x100000) on,
    relative to the network header; from SKF_LL_OFF (-0x200000) on, relative to the link-layer header;
    anything inside the buffer from its head to the tail may be read that way. The classic ancillary
    offsets (SKF_AD_OFF, -0x1000) mean nothing special to eBPF: they are network-header offsets far past
    the packet, so such a load fails."""
    pkt = inp.packet
    if pkt is None or inp.prog_type not in LEGACY_LOAD_TYPES:
        raise VmFault("legacy packet loads need a socket buffer (socket_filter or sched_cls program)")
    if offset >= 0:
        start = pkt.data + offset
    elif offset >= SKF_NET_OFF:
        start = pkt.network + offset - SKF_NET_OFF
    elif offset >= SKF_LL_OFF:
        start = pkt.mac + offset - SKF_LL_OFF
    else:
        return None
    if start < 0 or start + size > pkt.end:
        return None
    return int.from_bytes(pkt.region.buf[start:start + size], "big")

