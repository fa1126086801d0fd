"""Program contexts as BPF_PROG_TEST_RUN builds them: the uapi structs (`struct xdp_md`, `struct __sk_buff`,
`struct bpf_flow_keys`, `struct bpf_sk_lookup`, `struct bpf_sock`), which program types test_run can run and
how (net/bpf/test_run.c), and the rules it applies to the input context before running.

The VM prepares its inputs from these facts and the kernel backend explains the kernel's refusals with them,
so both say the same thing for the same input. The verifier will read the layouts from here too.
"""

from __future__ import annotations

import errno
import struct
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

from ..errors import ENOTSUPP
from .numbers import PAGE_SIZE

ETH_HLEN = 14
XDP_PACKET_HEADROOM = 256
IPV4_HLEN, IPV6_HLEN = 20, 40
SKB_SHARED_INFO = 320  # SKB_DATA_ALIGN(sizeof(struct skb_shared_info)) on x86_64
NET_SKB_PAD = 64  # headroom of a test-run skb (NET_SKB_PAD + NET_IP_ALIGN, which is 0 on x86)
MAX_SKB_FRAGS = 17  # pages an XDP test run may add past the linear part
XDP_FRAME_SIZE = 40  # sizeof(struct xdp_frame), kept at the start of the headroom
XDP_MAX_META = XDP_PACKET_HEADROOM - XDP_FRAME_SIZE  # 216; skb_shared_info's u8 meta_len allows more
SKB_MAX_DATA = PAGE_SIZE - NET_SKB_PAD - SKB_SHARED_INFO  # 3712
GSO_LEGACY_MAX_SIZE = 65536
GSO_MAX_SEGS = 65535
MAX_SYSCALL_CTX = 0xFFFF
MAX_RAW_TP_CTX = 12 * 8  # MAX_BPF_FUNC_ARGS u64 arguments
AF_INET, AF_INET6 = 2, 10
# Ethernet protocol ids (uapi if_ether.h, host order) and the packet types of eth_type_trans (if_packet.h).
ETH_P_802_3, ETH_P_802_2, ETH_P_802_3_MIN = 0x0001, 0x0004, 0x0600
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST = range(4)
TCP_CLOSE = 7  # the sk_state of the socket test_run hangs on an skb (sock_init_data)
# The kernel's context struct sizes of the types the VM runs on plain context memory (x86_64: struct pt_regs,
# bpf_perf_event_data, the tracepoint buffer, bpf_raw_tracepoint_args, the tracing/lsm/struct_ops args).
PLAIN_CTX_SIZES = {"kprobe": 168, "perf_event": 184, "tracepoint": 256, "raw_tracepoint": 0,
                   "raw_tracepoint_writable": 96, "tracing": 96, "lsm": 96, "struct_ops": 96, "syscall": 0}


@dataclass(frozen=True)
class Field:
    """A member of a context struct: `count` elements of `size` bytes at `offset`."""

    name: str
    offset: int
    size: int = 4
    count: int = 1

    @property
    def end(self) -> int:
        return self.offset + self.size * self.count

    @cached_property
    def format(self) -> str:
        return f"<{self.count}{ {1: 'B', 2: 'H', 4: 'I', 8: 'Q'}[self.size] }"


@dataclass(frozen=True)
class Layout:
    """A C struct by its fields (uapi/linux/bpf.h), for building, reading and checking context bytes."""

    name: str
    size: int
    fields: tuple[Field, ...]

    def __getitem__(self, name: str) -> Field:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.name} has no field '{name}'") from None

    @cached_property
    def _by_name(self) -> dict[str, Field]:
        return {f.name: f for f in self.fields}

    def offset(self, name: str) -> int:
        return self[name].offset

    def pack(self, values: Mapping[str, int | tuple | list]) -> bytes:
        out = bytearray(self.size)
        for name, value in values.items():
            if name not in self._by_name:
                raise KeyError(f"{self.name} has no field '{name}' (fields: {', '.join(f.name for f in self.fields)})")
            f = self[name]
            items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
            items += (0,) * (f.count - len(items))
            struct.pack_into(f.format, out, f.offset, *items)
        return bytes(out)

    def unpack(self, data: bytes) -> dict[str, int | tuple[int, ...]]:
        """The fields that `data` holds entirely (a short context yields fewer)."""
        out: dict[str, int | tuple[int, ...]] = {}
        for f in self.fields:
            if f.end <= len(data):
                items = struct.unpack_from(f.format, data, f.offset)
                out[f.name] = items if f.count > 1 else items[0]
        return out

    def get(self, data: bytes | bytearray, name: str) -> int:
        f = self[name]
        return int.from_bytes(data[f.offset:f.offset + f.size], "little")

    def put(self, data: bytearray, name: str, value: int, index: int = 0) -> None:
        f = self[name]
        start = f.offset + index * f.size
        data[start:start + f.size] = (value & ((1 << (8 * f.size)) - 1)).to_bytes(f.size, "little")

    def nonzero_except(self, data: bytes, allowed: frozenset[str]) -> list[str]:
        """Fields (and padding, named by offset) holding non-zero bytes that are not in `allowed`."""
        covered = bytearray(self.size)
        bad = []
        for f in self.fields:
            covered[f.offset:f.end] = b"\1" * (f.end - f.offset)
            if f.name not in allowed and any(data[f.offset:f.end]):
                bad.append(f.name)
        bad += [f"padding at {i}" for i in range(min(len(data), self.size)) if not covered[i] and data[i]]
        return bad


def _layout(name: str, size: int, *fields: tuple) -> Layout:
    return Layout(name, size, tuple(Field(*f) for f in fields))


XDP_MD = _layout("struct xdp_md", 24, ("data", 0), ("data_end", 4), ("data_meta", 8), ("ingress_ifindex", 12),
                 ("rx_queue_index", 16), ("egress_ifindex", 20))
SK_BUFF = _layout(
    "struct __sk_buff", 192, ("len", 0), ("pkt_type", 4), ("mark", 8), ("queue_mapping", 12), ("protocol", 16),
    ("vlan_present", 20), ("vlan_tci", 24), ("vlan_proto", 28), ("priority", 32), ("ingress_ifindex", 36),
    ("ifindex", 40), ("tc_index", 44), ("cb", 48, 4, 5), ("hash", 68), ("tc_classid", 72), ("data", 76),
    ("data_end", 80), ("napi_id", 84), ("family", 88), ("remote_ip4", 92), ("local_ip4", 96),
    ("remote_ip6", 100, 4, 4), ("local_ip6", 116, 4, 4), ("remote_port", 132), ("local_port", 136),
    ("data_meta", 140), ("flow_keys", 144, 8), ("tstamp", 152, 8), ("wire_len", 160), ("gso_segs", 164),
    ("sk", 168, 8), ("gso_size", 176), ("tstamp_type", 180, 1), ("hwtstamp", 184, 8))
FLOW_KEYS = _layout(
    "struct bpf_flow_keys", 56, ("nhoff", 0, 2), ("thoff", 2, 2), ("addr_proto", 4, 2), ("is_frag", 6, 1),
    ("is_first_frag", 7, 1), ("is_encap", 8, 1), ("ip_proto", 9, 1), ("n_proto", 10, 2), ("sport", 12, 2),
    ("dport", 14, 2), ("ipv4_src", 16), ("ipv4_dst", 20), ("ipv6_src", 16, 4, 4), ("ipv6_dst", 32, 4, 4),
    ("flags", 48), ("flow_label", 52))
SK_LOOKUP = _layout(
    "struct bpf_sk_lookup", 72, ("cookie", 0, 8), ("family", 8), ("protocol", 12), ("remote_ip4", 16),
    ("remote_ip6", 20, 4, 4), ("remote_port", 36, 2), ("local_ip4", 40), ("local_ip6", 44, 4, 4),
    ("local_port", 60), ("ingress_ifindex", 64))
BPF_SOCK = _layout(
    "struct bpf_sock", 80, ("bound_dev_if", 0), ("family", 4), ("type", 8), ("protocol", 12), ("mark", 16),
    ("priority", 20), ("src_ip4", 24), ("src_ip6", 28, 4, 4), ("src_port", 44), ("dst_port", 48, 2),
    ("dst_ip4", 52), ("dst_ip6", 56, 4, 4), ("state", 72), ("rx_queue_mapping", 76))

# The __sk_buff fields a test run takes from the caller's context (convert___skb_to_skb); all others must be 0.
SK_BUFF_INPUTS = frozenset({"mark", "priority", "ingress_ifindex", "ifindex", "cb", "tstamp", "wire_len",
                            "gso_segs", "gso_size", "hwtstamp"})
# ... and the fields it writes back (convert_skb_to___skb); the rest of ctx_out is the caller's input.
SK_BUFF_OUTPUTS = ("mark", "priority", "ingress_ifindex", "ifindex", "tstamp", "cb", "wire_len", "gso_segs",
                   "hwtstamp")

# How BPF_PROG_TEST_RUN runs each type (the prog_ops' test_run). Types missing here have none (ENOTSUPP).
SKB_TYPES = frozenset({"socket_filter", "sched_cls", "sched_act", "cgroup_skb", "lwt_in", "lwt_out", "lwt_xmit",
                       "lwt_seg6local"})
L2_TYPES = frozenset({"sched_cls", "sched_act"})  # the program sees the Ethernet header
# Types whose data/data_end test_run computes (bpf_compute_data_pointers; cgroup_skb since Linux 6.x).
DIRECT_PACKET_TYPES = frozenset({"sched_cls", "sched_act", "lwt_in", "lwt_out", "lwt_xmit", "cgroup_skb"})
TEST_RUN_KINDS = {**{t: "skb" for t in SKB_TYPES}, "xdp": "xdp", "flow_dissector": "flow_dissector",
                  "sk_lookup": "sk_lookup", "syscall": "syscall", "raw_tracepoint": "raw_tp"}
# Types whose test run takes no packet and no repeat (the kernel refuses data_in/repeat/ctx_out for them).
ONE_SHOT_KINDS = frozenset({"syscall", "raw_tp"})


@dataclass(frozen=True)
class Refusal:
    """Why BPF_PROG_TEST_RUN would refuse an input: the errno it returns and a sentence saying why."""

    errno: int
    reason: str


def ctx_returned(prog_type: str, ctx_given: bool) -> bool:
    """Whether a test run reports a context back (bpf_ctx_finish): skb types always (bpforge passes an output
    buffer, and the kernel builds a context for it), syscall programs their context as modified, the others
    only the context they were given; sk_lookup always has one."""
    kind = TEST_RUN_KINDS.get(prog_type)
    if kind == "skb":
        return True
    if kind in ("xdp", "flow_dissector", "syscall"):
        return ctx_given
    return kind == "sk_lookup"


def input_refusal(prog_type: str, data: bytes, ctx: bytes | None,
                  device: Callable[[int], "NetDevice | None"] | None = None) -> Refusal | None:
    """The first rule of net/bpf/test_run.c that `data` and `ctx` break for `prog_type`, in the order the
    kernel checks them, or None. `device` finds a network interface by ifindex (default: this host's)."""
    device = device or host_device
    kind = TEST_RUN_KINDS.get(prog_type)
    if kind is None:
        return Refusal(ENOTSUPP, f"the kernel has no test run for {prog_type} programs")
    if kind in ("syscall", "raw_tp"):
        if data:
            return Refusal(errno.EINVAL, f"{prog_type} test runs take no packet, only a context")
        limit = MAX_SYSCALL_CTX if kind == "syscall" else MAX_RAW_TP_CTX
        if ctx is not None and len(ctx) > limit:
            return Refusal(errno.EINVAL, f"the context is {len(ctx)} bytes; a {prog_type} test run takes at most "
                                         f"{limit}")
        return None
    if kind == "sk_lookup":
        return _sk_lookup_refusal(data, ctx)
    if kind == "xdp":
        return _too_long(XDP_MD, ctx) or _xdp_refusal(data, ctx, device)
    if len(data) < ETH_HLEN:
        return Refusal(errno.EINVAL, f"the packet is {len(data)} bytes; a test run needs at least ETH_HLEN ({ETH_HLEN})")
    if kind == "flow_dissector":
        if ctx is None:
            return None
        return _too_long(FLOW_KEYS, ctx) or _nonzero(FLOW_KEYS, ctx, frozenset({"flags"}), "only flags is taken")
    if len(data) > SKB_MAX_DATA:
        return Refusal(errno.EINVAL, f"the packet is {len(data)} bytes; an skb test run takes at most {SKB_MAX_DATA}")
    return _too_long(SK_BUFF, ctx) or _skb_refusal(prog_type, data, ctx, device)


def _too_long(layout: Layout, ctx: bytes | None) -> Refusal | None:
    """bpf_ctx_init: a context longer than the kernel's struct must be zero past it."""
    if ctx is not None and len(ctx) > layout.size and any(ctx[layout.size:]):
        return Refusal(errno.E2BIG, f"the context is {len(ctx)} bytes and its bytes past the kernel's struct "
                                    f"({layout.name}, {layout.size} bytes) are not all zero")
    return None


def _nonzero(layout: Layout, ctx: bytes, allowed: frozenset[str], note: str) -> Refusal | None:
    bad = layout.nonzero_except(ctx.ljust(layout.size, b"\0")[:layout.size], allowed)
    if bad:
        return Refusal(errno.EINVAL, f"{layout.name.split()[-1]} field(s) {', '.join(bad)} must be 0 in a test-run "
                                     f"context ({note})")
    return None


@dataclass(frozen=True)
class NetDevice:
    """What a test run needs of a network interface: its index, MAC and broadcast address (which decide
    skb->pkt_type), and how many receive queues are registered for XDP."""

    ifindex: int
    address: bytes
    broadcast: bytes
    xdp_queues: int = 1


LOOPBACK = NetDevice(1, bytes(6), bytes(6))


def host_device(ifindex: int, root: str = "/sys/class/net") -> NetDevice | None:
    """The interface with `ifindex` in this network namespace (sysfs), or None. Loopback is assumed where
    sysfs cannot be read."""
    try:
        names = os.listdir(root)
    except OSError:
        return LOOPBACK if ifindex == 1 else None
    for name in names:
        try:
            with open(f"{root}/{name}/ifindex") as f:
                if int(f.read().strip()) != ifindex:
                    continue
            with open(f"{root}/{name}/address") as f:
                address = bytes.fromhex(f.read().strip().replace(":", ""))
            with open(f"{root}/{name}/broadcast") as f:
                broadcast = bytes.fromhex(f.read().strip().replace(":", ""))
            queues = len([q for q in os.listdir(f"{root}/{name}/queues") if q.startswith("rx-")])
        except (OSError, ValueError):
            continue
        return NetDevice(ifindex, address[:6].ljust(6, b"\0"), broadcast[:6].ljust(6, b"\0"), max(queues, 1))
    return LOOPBACK if ifindex == 1 else None


def _xdp_refusal(data: bytes, ctx: bytes | None, device) -> Refusal | None:
    md = XDP_MD.unpack((ctx or b"").ljust(XDP_MD.size, b"\0"))
    if ctx is not None:
        if md["data_meta"]:
            return Refusal(errno.EINVAL, "xdp_md.data_meta must be 0 (metadata is the first xdp_md.data bytes of "
                                         "the packet)")
        if md["data_end"] > len(data):
            return Refusal(errno.EINVAL, f"xdp_md.data_end is {md['data_end']} but the packet is only {len(data)} "
                                         "bytes")
        if md["data"] > md["data_end"]:
            return Refusal(errno.EINVAL, "xdp_md.data (the metadata length) is past data_end")
        if md["data"] % 4 or md["data"] > XDP_MAX_META:
            return Refusal(errno.EINVAL, f"xdp_md.data = {md['data']}: metadata must be a multiple of 4 bytes, at "
                                         f"most {XDP_MAX_META} (the headroom less struct xdp_frame)")
    if len(data) - md["data"] < ETH_HLEN:
        return Refusal(errno.EINVAL, f"the packet is {len(data)} bytes; a test run needs at least ETH_HLEN ({ETH_HLEN})"
                                     + (" after the metadata" if md["data"] else ""))
    if md["egress_ifindex"]:
        return Refusal(errno.EINVAL, "xdp_md.egress_ifindex must be 0")
    if md["rx_queue_index"] and not md["ingress_ifindex"]:
        return Refusal(errno.EINVAL, "xdp_md.rx_queue_index needs an ingress_ifindex")
    if md["ingress_ifindex"]:
        dev = device(md["ingress_ifindex"])
        if dev is None:
            return Refusal(errno.ENODEV, f"xdp_md.ingress_ifindex {md['ingress_ifindex']}: the interface does not "
                                         "exist")
        if md["rx_queue_index"] >= dev.xdp_queues:
            return Refusal(errno.EINVAL, f"interface {md['ingress_ifindex']} has no XDP-registered receive queue "
                                         f"{md['rx_queue_index']}")
    linear = _xdp_linear(len(data), md, ctx is not None)
    if len(data) - linear > MAX_SKB_FRAGS * PAGE_SIZE:
        return Refusal(errno.ENOMEM, f"the packet is {len(data)} bytes; an XDP test run holds at most "
                                     f"{linear + MAX_SKB_FRAGS * PAGE_SIZE} ({linear} linear and "
                                     f"{MAX_SKB_FRAGS} fragment pages)")
    return None


def xdp_linear_size(size: int, ctx: bytes | None) -> int:
    """How many input bytes (metadata included) an XDP test run puts in the linear buffer: `xdp_md.data_end`
    of the context given (else all), at most what the page holds; the rest becomes fragments."""
    return _xdp_linear(size, XDP_MD.unpack((ctx or b"").ljust(XDP_MD.size, b"\0")), ctx is not None)


def _xdp_linear(size: int, md: Mapping[str, int], given: bool) -> int:
    return min(md["data_end"] if given else size, xdp_linear_room(md["data"]))


def xdp_linear_room(meta_len: int) -> int:
    """Bytes of packet (metadata included) an XDP test run keeps linear: a page less the headroom left
    after the metadata is taken from it, less skb_shared_info."""
    return PAGE_SIZE - (XDP_PACKET_HEADROOM - meta_len) - SKB_SHARED_INFO


def _skb_refusal(prog_type: str, data: bytes, ctx: bytes | None, device) -> Refusal | None:
    fields = SK_BUFF.unpack((ctx or b"").ljust(SK_BUFF.size, b"\0")[:SK_BUFF.size])
    if fields["ifindex"] > 1 and device(fields["ifindex"]) is None:
        return Refusal(errno.ENODEV, f"__sk_buff.ifindex {fields['ifindex']}: the interface does not exist")
    ethertype = int.from_bytes(data[12:14], "big")
    for proto, name, hlen in ((ETH_P_IP, "IPv4", IPV4_HLEN), (ETH_P_IPV6, "IPv6", IPV6_HLEN)):
        if ethertype == proto and len(data) - ETH_HLEN < hlen:  # the dummy socket takes its addresses
            return Refusal(errno.EINVAL, f"an {name} frame of {len(data)} bytes is shorter than its Ethernet and "
                                         f"{name} headers ({ETH_HLEN + hlen})")
    if ctx is None:
        return None
    refusal = _nonzero(SK_BUFF, ctx, SK_BUFF_INPUTS, f"settable: {', '.join(sorted(SK_BUFF_INPUTS))}")
    if refusal is not None:
        return refusal
    skb_len = len(data) - (0 if prog_type in L2_TYPES else ETH_HLEN)
    wire_len = fields["wire_len"]
    if wire_len and not skb_len <= wire_len <= GSO_LEGACY_MAX_SIZE:
        return Refusal(errno.EINVAL, f"__sk_buff.wire_len = {wire_len} must be 0 or between the skb length "
                                     f"({skb_len}) and {GSO_LEGACY_MAX_SIZE}")
    if fields["gso_segs"] > GSO_MAX_SEGS:
        return Refusal(errno.EINVAL, f"__sk_buff.gso_segs = {fields['gso_segs']} exceeds GSO_MAX_SEGS ({GSO_MAX_SEGS})")
    return None


def _sk_lookup_refusal(data: bytes, ctx: bytes | None) -> Refusal | None:
    if data:
        return Refusal(errno.EINVAL, "sk_lookup test runs take no packet, only a struct bpf_sk_lookup context")
    if ctx is None:
        return Refusal(errno.EINVAL, "an sk_lookup test run needs a struct bpf_sk_lookup context (--ctx)")
    fields = SK_LOOKUP.unpack(ctx.ljust(SK_LOOKUP.size, b"\0"))
    if fields["cookie"]:
        return Refusal(errno.EINVAL, "bpf_sk_lookup.sk must be 0 in a test-run context")
    if any(ctx[SK_LOOKUP["local_port"].end:SK_LOOKUP.size]):
        return Refusal(errno.EINVAL, "bpf_sk_lookup fields after local_port (ingress_ifindex) must be 0")
    if fields["local_port"] > 0xFFFF:
        return Refusal(errno.ERANGE, f"bpf_sk_lookup.local_port = {fields['local_port']} exceeds 65535")
    if fields["family"] & 0xFFFF not in (AF_INET, AF_INET6):
        return Refusal(errno.EAFNOSUPPORT, f"bpf_sk_lookup.family = {fields['family']} is neither AF_INET (2) nor "
                                           "AF_INET6 (10)")
    return None


__all__ = [
    "AF_INET", "AF_INET6", "BPF_SOCK", "DIRECT_PACKET_TYPES", "ETH_HLEN", "ETH_P_802_2", "ETH_P_802_3",
    "ETH_P_802_3_MIN", "ETH_P_8021AD", "ETH_P_8021Q", "ETH_P_IP", "ETH_P_IPV6", "FLOW_KEYS", "Field", "IPV4_HLEN",
    "IPV6_HLEN", "L2_TYPES", "LOOPBACK", "Layout", "NET_SKB_PAD", "NetDevice", "ONE_SHOT_KINDS", "PACKET_BROADCAST",
    "PACKET_HOST", "PACKET_MULTICAST", "PACKET_OTHERHOST", "PAGE_SIZE", "PLAIN_CTX_SIZES", "Refusal", "SKB_MAX_DATA",
    "SKB_SHARED_INFO", "SKB_TYPES", "SK_BUFF", "SK_BUFF_INPUTS", "SK_BUFF_OUTPUTS", "SK_LOOKUP", "TCP_CLOSE",
    "TEST_RUN_KINDS", "XDP_MAX_META", "XDP_MD", "XDP_PACKET_HEADROOM", "ctx_returned", "host_device",
    "input_refusal", "xdp_linear_room", "xdp_linear_size",
]
