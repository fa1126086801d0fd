"""XDP helpers (net/core/filter.c): moving the packet's head, tail and metadata, reading and writing bytes
of a frame that continues in fragments, and bpf_redirect.

The test run's frame is one page: XDP_PACKET_HEADROOM, the linear part, skb_shared_info at the end; a
packet bigger than the linear room continues in page-sized fragments (vm.context keeps their bytes in
`Packet.frags`; every fragment but the last is a full page, which the helpers below keep true)."""

from __future__ import annotations

import errno

from ...isa.contexts import ETH_HLEN, PAGE_SIZE, XDP_FRAME_SIZE
from ...isa.numbers import M32, s32
from .registry import err, helper, packet

XDP_ABORTED, XDP_REDIRECT = 0, 4
TC_ACT_SHOT, TC_ACT_REDIRECT = 2, 7
XDP_META_MAX = 255  # type_max of skb_shared_info.meta_len (xdp_metalen_invalid)
BPF_F_INGRESS = 1
BPF_REDIR_NEIGH_SIZE = 20  # struct bpf_redir_neigh
FRAG_SIZE = PAGE_SIZE  # rxq->frag_size of the test run's queue


@helper("xdp_adjust_head")
def _xdp_adjust_head(vm, ctx, delta, *_):
    pkt = packet(vm)
    delta = s32(delta)
    meta_len = pkt.data - pkt.meta
    data = pkt.data + delta
    if data < XDP_FRAME_SIZE + meta_len or data > pkt.end - ETH_HLEN:
        return err(errno.EINVAL)
    buf = pkt.region.buf
    if meta_len:  # the metadata moves with the head
        buf[pkt.meta + delta:pkt.meta + delta + meta_len] = buf[pkt.meta:pkt.data]
    pkt.meta, pkt.data = pkt.meta + delta, data
    pkt.sync()
    return 0


def _last_frag(size: int) -> int:
    return 0 if size == 0 else size - (size - 1) // FRAG_SIZE * FRAG_SIZE


@helper("xdp_adjust_tail")
def _xdp_adjust_tail(vm, ctx, delta, *_):
    pkt = packet(vm)
    delta = s32(delta)
    if pkt.frags:  # a non-linear frame grows or shrinks at the end of its fragments
        if delta < 0:
            shrink = -delta
            if shrink > (pkt.end - pkt.data) + len(pkt.frags) - ETH_HLEN:
                return err(errno.EINVAL)
            cut = min(shrink, len(pkt.frags))
            del pkt.frags[len(pkt.frags) - cut:]
            if not pkt.frags:  # no fragment left: the rest comes off the linear part
                pkt.end -= shrink - cut
                pkt.sync()
            return 0
        if delta > FRAG_SIZE - _last_frag(len(pkt.frags)):
            return err(errno.EINVAL)
        pkt.frags += bytes(delta)
        return 0
    end = pkt.end + delta
    if end > pkt.max_end or end < pkt.data + ETH_HLEN:
        return err(errno.EINVAL)
    if end > pkt.end:  # grown bytes are cleared, as the kernel does
        pkt.region.buf[pkt.end:end] = bytes(end - pkt.end)
    pkt.end = end
    pkt.sync()
    return 0


@helper("xdp_adjust_meta")
def _xdp_adjust_meta(vm, ctx, delta, *_):
    pkt = packet(vm)
    meta = pkt.meta + s32(delta)
    if meta < XDP_FRAME_SIZE or meta > pkt.data:
        return err(errno.EINVAL)
    meta_len = pkt.data - meta
    if meta_len & 3 or meta_len > XDP_META_MAX:
        return err(errno.EACCES)
    pkt.meta = meta
    pkt.sync()
    return 0


@helper("xdp_get_buff_len")
def _xdp_get_buff_len(vm, *_):
    pkt = packet(vm)
    return pkt.end - pkt.data + len(pkt.frags)


def _xdp_span(vm, offset: int, length: int):
    """bpf_xdp_pointer's checks for [offset, offset + length) of the whole frame: -errno, or 0."""
    pkt = packet(vm)
    if offset > 0xFFFF or length > 0xFFFF:
        return -errno.EFAULT
    if offset + length > pkt.end - pkt.data + len(pkt.frags):
        return -errno.EINVAL
    return 0


@helper("xdp_load_bytes")
def _xdp_load_bytes(vm, ctx, offset, to_ptr, length, _):
    offset, length = offset & M32, length & M32
    result = _xdp_span(vm, offset, length)
    if result:
        return result
    pkt = packet(vm)
    vm.machine.memory.write(to_ptr, (pkt.bytes() + bytes(pkt.frags))[offset:offset + length])
    return 0


@helper("xdp_store_bytes")
def _xdp_store_bytes(vm, ctx, offset, from_ptr, length, _):
    offset, length = offset & M32, length & M32
    result = _xdp_span(vm, offset, length)
    if result:
        return result
    pkt = packet(vm)
    data = vm.machine.memory.read(from_ptr, length)
    linear = pkt.end - pkt.data
    head = data[:max(0, linear - offset)]
    pkt.region.buf[pkt.data + offset:pkt.data + offset + len(head)] = head
    rest = data[len(head):]
    start = max(0, offset - linear)
    pkt.frags[start:start + len(rest)] = rest
    return 0


# ---- redirects by interface index --------------------------------------------------------------------------

@helper("redirect")
def _redirect(vm, ifindex, flags, *_):
    """XDP: XDP_REDIRECT unless flags (XDP_ABORTED); tc: TC_ACT_REDIRECT, TC_ACT_SHOT for flags other than
    BPF_F_INGRESS. test_run reports the verdict; nothing is sent."""
    if vm.input.prog_type == "xdp":
        return XDP_REDIRECT if flags == 0 else XDP_ABORTED
    return TC_ACT_SHOT if flags & ~BPF_F_INGRESS else TC_ACT_REDIRECT


@helper("redirect_peer")
def _redirect_peer(vm, ifindex, flags, *_):
    return TC_ACT_SHOT if flags else TC_ACT_REDIRECT


@helper("redirect_neigh")
def _redirect_neigh(vm, ifindex, params_ptr, plen, flags, _):
    plen = s32(plen)
    return TC_ACT_SHOT if (plen and plen < BPF_REDIR_NEIGH_SIZE) or flags else TC_ACT_REDIRECT

