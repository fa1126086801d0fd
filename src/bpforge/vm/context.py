"""Program inputs as the kernel's BPF_PROG_TEST_RUN prepares them: the packet buffer and the context.

XDP: the packet sits after XDP_PACKET_HEADROOM bytes of headroom in a page-sized frame whose tail keeps
room for skb_shared_info; `struct xdp_md` loads of data/data_end/data_meta yield 64-bit pointers.
sched_cls: `struct __sk_buff` over a packet that starts at its Ethernet header; socket_filter: the same but
the Ethernet header already pulled (test_run hands socket filters the network header first).
mem (userspace runtimes such as uBPF): r1 = the buffer, r2 = its length, no context structure.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import BpforgeError
from .memory import Memory, Region

XDP_PACKET_HEADROOM = 256
FRAME_SIZE = 4096
SKB_SHARED_INFO = 320  # SKB_DATA_ALIGN(sizeof(struct skb_shared_info)) on x86_64
ETH_HLEN = 14
LOOPBACK_IFINDEX = 1

# struct __sk_buff: field offsets the kernel exposes (uapi/linux/bpf.h).
SKB_LEN, SKB_PKT_TYPE, SKB_MARK, SKB_QUEUE_MAPPING, SKB_PROTOCOL = 0, 4, 8, 12, 16
SKB_PRIORITY, SKB_INGRESS_IFINDEX, SKB_IFINDEX, SKB_TC_INDEX, SKB_CB = 32, 36, 40, 44, 48
SKB_HASH, SKB_TC_CLASSID, SKB_DATA, SKB_DATA_END, SKB_DATA_META = 68, 72, 76, 80, 140
SKB_WIRE_LEN, SKB_SIZE = 160, 192
XDP_MD_SIZE = 24


@dataclass
class Packet:
    """The packet buffer and its window [meta, end): data_meta <= data <= data_end, all offsets in `region`."""

    region: Region
    meta: int
    data: int
    end: int
    max_end: int  # how far bpf_xdp_adjust_tail may grow the packet

    def addr(self, offset: int) -> int:
        return self.region.base + offset

    def sync(self) -> None:
        """Accesses are valid only inside [data_meta, data_end)."""
        self.region.lo, self.region.hi = self.meta, self.end

    def bytes(self) -> bytes:
        return bytes(self.region.buf[self.data:self.end])


@dataclass
class Input:
    """What the program starts with: its argument registers, the packet and the context region."""

    r1: int
    r2: int
    packet: Packet | None
    ctx: Region | None
    prog_type: str

    def data_out(self) -> bytes:
        if self.packet is None:
            return b""
        if self.prog_type == "socket_filter":  # test_run pushes the pulled Ethernet header back, zeroed
            return bytes(ETH_HLEN) + self.packet.bytes()
        return self.packet.bytes()

    def ctx_out(self) -> bytes | None:
        return bytes(self.ctx.buf) if self.ctx is not None else None


def prepare(memory: Memory, prog_type: str, data: bytes, ctx_in: bytes | None = None) -> Input:
    if prog_type == "xdp":
        return _xdp(memory, data, ctx_in)
    if prog_type in ("sched_cls", "sched_act", "socket_filter"):
        return _skb(memory, prog_type, data, ctx_in)
    if prog_type == "mem":
        region = memory.map(bytearray(data), "memory")  # data_out: the buffer as the program left it
        return Input(region.base, len(data), Packet(region, 0, 0, len(data), len(data)), None, prog_type)
    raise BpforgeError(f"the interpreter does not run {prog_type} programs (xdp, sched_cls, socket_filter, mem)")


def _xdp(memory: Memory, data: bytes, ctx_in: bytes | None) -> Input:
    if len(data) < ETH_HLEN:
        raise BpforgeError(f"an XDP packet needs at least {ETH_HLEN} bytes (has {len(data)})")
    room = FRAME_SIZE - XDP_PACKET_HEADROOM - SKB_SHARED_INFO
    if len(data) > room:
        raise BpforgeError(f"an XDP packet may have at most {room} bytes (has {len(data)})")
    buf = bytearray(FRAME_SIZE - SKB_SHARED_INFO)
    buf[XDP_PACKET_HEADROOM:XDP_PACKET_HEADROOM + len(data)] = data
    region = memory.map(buf, "packet")
    meta_len = 0
    ctx = bytearray(XDP_MD_SIZE)
    struct.pack_into("<I", ctx, 12, LOOPBACK_IFINDEX)
    if ctx_in is not None:  # test_run takes data_meta (as an offset), ingress_ifindex and rx_queue_index
        ctx[:len(ctx_in)] = ctx_in[:XDP_MD_SIZE]
        meta_len = struct.unpack_from("<I", ctx, 8)[0]
    packet = Packet(region, XDP_PACKET_HEADROOM - meta_len, XDP_PACKET_HEADROOM,
                    XDP_PACKET_HEADROOM + len(data), len(buf))
    packet.sync()
    ctx_region = memory.map(ctx, "ctx", writable=False)
    ctx_region.computed = {0: lambda: packet.addr(packet.data), 4: lambda: packet.addr(packet.end),
                           8: lambda: packet.addr(packet.meta)}
    return Input(ctx_region.base, 0, packet, ctx_region, "xdp")


def _skb(memory: Memory, prog_type: str, data: bytes, ctx_in: bytes | None) -> Input:
    if len(data) < ETH_HLEN:
        raise BpforgeError(f"a packet needs at least {ETH_HLEN} bytes of Ethernet header (has {len(data)})")
    buf = bytearray(len(data))
    buf[:] = data
    region = memory.map(buf, "packet")
    start = ETH_HLEN if prog_type == "socket_filter" else 0
    packet = Packet(region, start, start, len(data), len(data))
    packet.sync()
    ctx = bytearray(SKB_SIZE)
    if ctx_in is not None:
        ctx[:len(ctx_in)] = ctx_in[:SKB_SIZE]
    struct.pack_into("<I", ctx, SKB_LEN, len(data) - start)
    struct.pack_into("<I", ctx, SKB_PROTOCOL, struct.unpack_from("<H", data, 12)[0])  # network order, as skb
    struct.pack_into("<I", ctx, SKB_IFINDEX, LOOPBACK_IFINDEX)
    struct.pack_into("<I", ctx, SKB_WIRE_LEN, len(data))
    ctx_region = memory.map(ctx, "ctx")
    ctx_region.computed = {SKB_DATA: lambda: packet.addr(packet.data),
                           SKB_DATA_END: lambda: packet.addr(packet.end),
                           SKB_DATA_META: lambda: packet.addr(packet.meta)}
    return Input(ctx_region.base, 0, packet, ctx_region, prog_type)
