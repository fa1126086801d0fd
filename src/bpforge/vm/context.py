"""Program inputs as the kernel's BPF_PROG_TEST_RUN prepares them: the packet buffer, the context the
program sees, and what comes back (data_out, ctx_out). The rules (which types run, what a context may hold,
struct layouts) are `isa.contexts`, shared with the kernel backend; this module builds the VM's memory.

- xdp: the packet after XDP_PACKET_HEADROOM in a page-sized frame whose tail keeps room for
  skb_shared_info; the first `xdp_md.data` bytes of the input are metadata (data_meta..data); bytes past
  the linear part are fragments, invisible between data and data_end but returned in data_out, which
  starts at data_meta. `struct xdp_md` loads of data/data_end/data_meta yield 64-bit pointers.
- skb types (socket_filter, sched_cls/act, cgroup_skb, lwt_*): an sk_buff after NET_SKB_PAD of headroom;
  L2 types see the Ethernet header, the others start at the network header (the header is pushed back
  as zeros afterwards). `protocol` and `pkt_type` come from the Ethernet header as eth_type_trans decides
  them for the receiving device (loopback, or `ifindex`); the dummy socket test_run attaches gives
  `family` and the IP addresses.
- flow_dissector: the whole frame; the program fills a `struct bpf_flow_keys`, which is data_out.
- sk_lookup: no packet; a `struct bpf_sk_lookup` built from the caller's.
- syscall, raw_tracepoint: the caller's context bytes (syscall: written back as ctx_out).
- kprobe, tracepoint, perf_event, tracing, lsm, struct_ops, raw_tracepoint_writable: the kernel has no test
  run for these (tracing's needs an attach target); the VM runs them on the context bytes given (a zeroed
  struct of the type's size by default), which is what such a context is to the program: plain memory.
- mem (userspace runtimes such as uBPF): r1 = the buffer, r2 = its length, no context structure.

`repeat` runs reuse one prepared input, as the kernel's loop reuses its skb/xdp_buff: each run sees what
the last one left (`Input.before_run`/`after_run` redo what the kernel redoes per run).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import BpforgeError
from ..errors import errno_name
from ..isa.contexts import (
    AF_INET, AF_INET6, BPF_SOCK, DIRECT_PACKET_TYPES, ETH_HLEN, ETH_P_802_2, ETH_P_802_3, ETH_P_802_3_MIN, ETH_P_IP,
    ETH_P_IPV6, FLOW_KEYS, L2_TYPES, LOOPBACK, NET_SKB_PAD, PACKET_BROADCAST, PACKET_HOST, PACKET_MULTICAST,
    PACKET_OTHERHOST, PAGE_SIZE, PLAIN_CTX_SIZES, SK_BUFF, SK_BUFF_OUTPUTS, SK_LOOKUP, SKB_SHARED_INFO, TCP_CLOSE,
    TEST_RUN_KINDS, XDP_MD, XDP_PACKET_HEADROOM, NetDevice, host_device, input_refusal, xdp_linear_size,
)
from .memory import Memory, Region

_KMALLOC_BUCKETS = (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192)


class TestRunRefused(BpforgeError):
    """The input is one BPF_PROG_TEST_RUN refuses (`errno` as the kernel returns it)."""

    __test__ = False

    def __init__(self, err: int, message: str, **where):
        self.errno = err
        super().__init__(message, **where)


@dataclass
class Packet:
    """The packet buffer and its window [meta, end): data_meta <= data <= data_end, all offsets in `region`.
    `mac` and `network` are the link-layer and network header offsets (skb_mac_header, skb_network_header);
    `frags` holds an XDP packet's bytes past the linear part."""

    region: Region
    meta: int
    data: int
    end: int
    max_end: int  # how far the tail may grow in place (bpf_xdp_adjust_tail, skb tailroom)
    mac: int = 0
    network: int = 0
    frags: bytearray = field(default_factory=bytearray)
    skb_state: object = None  # what skb helpers track beyond the bytes (vm.helpers.skb.SkbState), on first use

    def addr(self, offset: int) -> int:
        return self.region.base + offset

    def sync(self) -> None:
        """Accesses are valid only inside [data_meta, data_end)."""
        self.region.lo, self.region.hi = self.meta, self.end

    def bytes(self) -> bytes:
        return bytes(self.region.buf[self.data:self.end])


@dataclass
class Input:
    """What the program starts with (its argument registers, the packet, the context region) and how a
    run's results are read back."""

    r1: int
    r2: int
    packet: Packet | None
    ctx: Region | None
    prog_type: str
    data_out: Callable[[], bytes] = lambda: b""
    ctx_out: Callable[[], bytes | None] = lambda: None
    before_run: Callable[[], None] | None = None
    after_run: Callable[[], None] | None = None
    device: NetDevice | None = None


def prepare(memory: Memory, prog_type: str, data: bytes, ctx_in: bytes | None = None,
            device: Callable[[int], NetDevice | None] = host_device) -> Input:
    """The input of one test run (or of `repeat` runs of it). TestRunRefused, with the kernel's errno and
    reason, for an input the kernel would refuse; BpforgeError for a type the VM cannot run."""
    kind = TEST_RUN_KINDS.get(prog_type)
    if kind is not None:
        refusal = input_refusal(prog_type, data, ctx_in, device)
        if refusal is not None:
            name = errno_name(refusal.errno)
            raise TestRunRefused(refusal.errno, f"the kernel refuses this test run ({name}): {refusal.reason}")
    if prog_type == "xdp":
        return _xdp(memory, data, ctx_in, device)
    if kind == "skb":
        return _skb(memory, prog_type, data, ctx_in, device)
    if kind == "flow_dissector":
        return _flow_dissector(memory, data, ctx_in)
    if kind == "sk_lookup":
        return _sk_lookup(memory, ctx_in or b"")
    if prog_type == "mem":
        region = memory.map(bytearray(data), "memory")  # data_out: the buffer as the program left it
        packet = Packet(region, 0, 0, len(data), len(data))
        return Input(region.base, len(data), packet, None, prog_type, data_out=lambda: bytes(region.buf))
    if prog_type in PLAIN_CTX_SIZES:
        return _plain(memory, prog_type, data, ctx_in)
    raise BpforgeError(f"the VM does not model the context of {prog_type} programs (it runs xdp, the skb types, "
                       "flow_dissector, sk_lookup, syscall, the tracing types on plain context bytes, and mem); "
                       "the kernel has no test run for them either")


# ---- xdp ---------------------------------------------------------------------------------------------------

def _xdp(memory: Memory, data: bytes, ctx_in: bytes | None, device) -> Input:
    user = bytearray((ctx_in or b"")[:XDP_MD.size].ljust(XDP_MD.size, b"\0"))
    meta_len = XDP_MD.get(user, "data")
    linear = xdp_linear_size(len(data), ctx_in)
    buf = bytearray(PAGE_SIZE - SKB_SHARED_INFO)  # the frame up to skb_shared_info
    start = XDP_PACKET_HEADROOM - meta_len  # metadata is taken from the headroom
    buf[start:start + linear] = data[:linear]
    region = memory.map(buf, "packet")
    packet = Packet(region, start, XDP_PACKET_HEADROOM, start + linear, len(buf), frags=bytearray(data[linear:]))
    packet.sync()
    ifindex = XDP_MD.get(user, "ingress_ifindex") or LOOPBACK.ifindex  # no device given: loopback's queue 0
    view = bytearray(XDP_MD.size)
    XDP_MD.put(view, "ingress_ifindex", ifindex)
    XDP_MD.put(view, "rx_queue_index", XDP_MD.get(user, "rx_queue_index"))
    ctx = memory.map(view, "ctx", writable=False)
    ctx.pointers = {XDP_MD.offset("data"): lambda: packet.addr(packet.data),
                    XDP_MD.offset("data_end"): lambda: packet.addr(packet.end),
                    XDP_MD.offset("data_meta"): lambda: packet.addr(packet.meta)}

    def ctx_out() -> bytes | None:
        if ctx_in is None:
            return None
        XDP_MD.put(user, "data", packet.data - packet.meta)
        XDP_MD.put(user, "data_end", packet.end - packet.meta)
        return bytes(user)

    return Input(ctx.base, 0, packet, ctx, "xdp",
                 data_out=lambda: bytes(buf[packet.meta:packet.end]) + bytes(packet.frags), ctx_out=ctx_out)


# ---- sk_buff -----------------------------------------------------------------------------------------------

def _tailroom(size: int) -> int:
    """The tailroom of a test-run skb: its buffer is kzalloc(size + headroom + shinfo), rounded up to a
    kmalloc size, whose end past the headroom, data and skb_shared_info is tailroom."""
    want = size + NET_SKB_PAD + SKB_SHARED_INFO
    bucket = next((b for b in _KMALLOC_BUCKETS if b >= want), want)
    return bucket - want


def eth_type_trans(frame: bytes, dev: NetDevice) -> tuple[int, int]:
    """(protocol as the 16-bit network-order value skb->protocol holds, pkt_type) for a frame received on
    `dev`, as net/ethernet/eth.c decides them."""
    dst, proto = frame[:6], int.from_bytes(frame[12:14], "big")
    pkt_type = PACKET_HOST
    if dst != dev.address:
        if dst[0] & 1:
            pkt_type = PACKET_BROADCAST if dst == dev.broadcast else PACKET_MULTICAST
        else:
            pkt_type = PACKET_OTHERHOST
    if proto < ETH_P_802_3_MIN:  # an 802.3 length field: raw IPX (0xFFFF after the header) or 802.2 LLC
        proto = ETH_P_802_3 if frame[14:16] == b"\xff\xff" else ETH_P_802_2
    return int.from_bytes(proto.to_bytes(2, "big"), "little"), pkt_type


def _skb(memory: Memory, prog_type: str, data: bytes, ctx_in: bytes | None, device) -> Input:
    user = bytearray((ctx_in or b"")[:SK_BUFF.size].ljust(SK_BUFF.size, b"\0"))
    ifindex = SK_BUFF.get(user, "ifindex")
    dev = (device(ifindex) if ifindex > 1 else None) or LOOPBACK  # test_run's default device: loopback
    buf = bytearray(NET_SKB_PAD + len(data) + _tailroom(len(data)))
    buf[NET_SKB_PAD:NET_SKB_PAD + len(data)] = data
    region = memory.map(buf, "packet")
    mac, network = NET_SKB_PAD, NET_SKB_PAD + ETH_HLEN
    start = mac if prog_type in L2_TYPES else network
    packet = Packet(region, start, start, NET_SKB_PAD + len(data), len(buf), mac=mac, network=network)
    packet.sync()
    protocol, pkt_type = eth_type_trans(data, dev)
    view = bytearray(SK_BUFF.size)
    for name in ("mark", "priority", "ingress_ifindex", "tstamp", "gso_segs", "gso_size", "hwtstamp"):
        SK_BUFF.put(view, name, SK_BUFF.get(user, name))
    view[SK_BUFF.offset("cb"):SK_BUFF["cb"].end] = user[SK_BUFF.offset("cb"):SK_BUFF["cb"].end]
    SK_BUFF.put(view, "pkt_type", pkt_type)
    SK_BUFF.put(view, "protocol", protocol)
    SK_BUFF.put(view, "ifindex", dev.ifindex)
    SK_BUFF.put(view, "wire_len", SK_BUFF.get(user, "wire_len") or packet.end - packet.data)
    sock = _dummy_socket(memory, view, data, protocol)
    ctx = memory.map(view, "ctx")
    ctx.computed = {SK_BUFF.offset("len"): lambda: packet.end - packet.data}
    ctx.pointers = {SK_BUFF.offset("sk"): lambda: sock.base}
    if prog_type in DIRECT_PACKET_TYPES:
        ctx.pointers.update({SK_BUFF.offset("data"): lambda: packet.addr(packet.data),
                             SK_BUFF.offset("data_end"): lambda: packet.addr(packet.end),
                             SK_BUFF.offset("data_meta"): lambda: packet.addr(packet.meta)})

    def data_out() -> bytes:
        if prog_type in L2_TYPES:
            return packet.bytes()
        return bytes(ETH_HLEN) + packet.bytes()  # test_run pushes the pulled Ethernet header back, zeroed

    def ctx_out() -> bytes:
        out = bytearray(user)
        for name in SK_BUFF_OUTPUTS:
            f = SK_BUFF[name]
            out[f.offset:f.end] = view[f.offset:f.end]
        return bytes(out)

    return Input(ctx.base, 0, packet, ctx, prog_type, data_out=data_out, ctx_out=ctx_out, device=dev)


def _dummy_socket(memory: Memory, view: bytearray, data: bytes, protocol: int) -> Region:
    """The socket test_run hangs on its skb (sk_alloc + sock_init_data): family and addresses from the IP
    header, as the skb fields family/remote_ip4/local_ip4/... and skb->sk show them."""
    sock = bytearray(BPF_SOCK.size)
    BPF_SOCK.put(sock, "state", TCP_CLOSE)
    BPF_SOCK.put(sock, "rx_queue_mapping", -1)
    ip = data[ETH_HLEN:]
    proto = int.from_bytes(protocol.to_bytes(2, "little"), "big")
    if proto == ETH_P_IP:
        family = AF_INET
        if len(ip) >= 20:
            saddr, daddr = struct.unpack_from("<II", ip, 12)
            SK_BUFF.put(view, "local_ip4", saddr)
            SK_BUFF.put(view, "remote_ip4", daddr)
            BPF_SOCK.put(sock, "src_ip4", saddr)
            BPF_SOCK.put(sock, "dst_ip4", daddr)
    elif proto == ETH_P_IPV6:
        family = AF_INET6
        if len(ip) >= 40:
            for i, (src, dst) in enumerate(zip(struct.unpack_from("<4I", ip, 8), struct.unpack_from("<4I", ip, 24))):
                SK_BUFF.put(view, "local_ip6", src, i)
                SK_BUFF.put(view, "remote_ip6", dst, i)
                BPF_SOCK.put(sock, "src_ip6", src, i)
                BPF_SOCK.put(sock, "dst_ip6", dst, i)
    else:
        family = 0  # AF_UNSPEC, as sk_alloc left it
    SK_BUFF.put(view, "family", family)
    BPF_SOCK.put(sock, "family", family)
    return memory.map(sock, "socket", writable=False)


# ---- flow dissector, sk_lookup, plain contexts -------------------------------------------------------------

def _flow_dissector(memory: Memory, data: bytes, ctx_in: bytes | None) -> Input:
    buf = bytearray(data)
    region = memory.map(buf, "packet")
    packet = Packet(region, 0, 0, len(buf), len(buf), mac=0, network=ETH_HLEN)
    packet.sync()
    keys = bytearray(FLOW_KEYS.size)
    keys_region = memory.map(keys, "flow_keys")
    flags = FLOW_KEYS.get((ctx_in or b"").ljust(FLOW_KEYS.size, b"\0"), "flags")
    ctx = memory.map(bytearray(SK_BUFF.size), "ctx", writable=False)
    ctx.pointers = {SK_BUFF.offset("data"): lambda: packet.addr(0),
                    SK_BUFF.offset("data_end"): lambda: packet.addr(len(buf)),
                    SK_BUFF.offset("flow_keys"): lambda: keys_region.base}

    def before_run() -> None:  # bpf_flow_dissect: fresh keys for every run
        keys[:] = bytes(FLOW_KEYS.size)
        keys[FLOW_KEYS.offset("n_proto"):FLOW_KEYS.offset("n_proto") + 2] = data[12:14]
        FLOW_KEYS.put(keys, "nhoff", ETH_HLEN)
        FLOW_KEYS.put(keys, "thoff", ETH_HLEN)
        FLOW_KEYS.put(keys, "flags", flags)

    def after_run() -> None:  # ... and the offsets it returns clamped into the packet
        nhoff = min(max(FLOW_KEYS.get(keys, "nhoff"), ETH_HLEN), len(data))
        FLOW_KEYS.put(keys, "nhoff", nhoff)
        FLOW_KEYS.put(keys, "thoff", min(max(FLOW_KEYS.get(keys, "thoff"), nhoff), len(data)))

    return Input(ctx.base, 0, packet, ctx, "flow_dissector", data_out=lambda: bytes(keys),
                 ctx_out=lambda: None if ctx_in is None else bytes(ctx_in), before_run=before_run,
                 after_run=after_run)


def _sk_lookup(memory: Memory, ctx_in: bytes) -> Input:
    user = bytes(ctx_in[:SK_LOOKUP.size].ljust(SK_LOOKUP.size, b"\0"))
    view = bytearray(SK_LOOKUP.size)  # sk (the selected socket) is NULL, ingress_ifindex 0
    family = SK_LOOKUP.get(user, "family") & 0xFFFF
    SK_LOOKUP.put(view, "family", family)
    SK_LOOKUP.put(view, "protocol", SK_LOOKUP.get(user, "protocol") & 0xFFFF)
    SK_LOOKUP.put(view, "remote_port", SK_LOOKUP.get(user, "remote_port"))
    SK_LOOKUP.put(view, "local_port", SK_LOOKUP.get(user, "local_port") & 0xFFFF)
    # bpf_sk_lookup_kern holds either v4 addresses or pointers to v6 ones: the other family reads as 0.
    for name in (("remote_ip4", "local_ip4") if family == AF_INET else ("remote_ip6", "local_ip6")):
        f = SK_LOOKUP[name]
        view[f.offset:f.end] = user[f.offset:f.end]
    ctx = memory.map(view, "ctx", writable=False)
    out = bytearray(user)
    SK_LOOKUP.put(out, "cookie", 0)  # no socket was selected
    return Input(ctx.base, 0, None, ctx, "sk_lookup", ctx_out=lambda: bytes(out))


def _plain(memory: Memory, prog_type: str, data: bytes, ctx_in: bytes | None) -> Input:
    if data:
        raise BpforgeError(f"{prog_type} programs take no packet, only a context (--ctx)")
    buf = bytearray(ctx_in if ctx_in is not None else bytes(PLAIN_CTX_SIZES[prog_type]))
    if not buf:
        return Input(0, 0, None, None, prog_type)  # an empty context is a NULL pointer
    writable = prog_type in ("syscall", "raw_tracepoint_writable")
    ctx = memory.map(buf, "ctx", writable=writable)
    returned = (lambda: bytes(buf)) if prog_type == "syscall" else (lambda: None)
    return Input(ctx.base, 0, None, ctx, prog_type, ctx_out=returned)


__all__ = ["Input", "Packet", "TestRunRefused", "eth_type_trans", "prepare"]
