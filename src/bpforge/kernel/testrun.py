"""BPF_PROG_TEST_RUN: run a loaded program on a packet (and optionally a context) inside the kernel.

What the kernel does (net/bpf/test_run.c), per program type:

- xdp: the packet goes into a page after XDP_PACKET_HEADROOM (256) bytes of headroom; it must be at least
  ETH_HLEN (14) bytes. Only the first 4096 - 256 - 320 = 3520 bytes are linear: the rest goes into
  fragments (up to MAX_SKB_FRAGS pages), which the program does not see between data and data_end (even
  one loaded without BPF_F_XDP_HAS_FRAGS) but which come back at the end of `data_out`.
  A context is optional: a `struct xdp_md` whose `data` is the length of metadata at the front of `data`
  (a multiple of 4, at most 32), `data_end` the length of `data`, `data_meta` 0, `ingress_ifindex` an
  existing device whose `rx_queue_index` queue is registered for XDP (lo, ifindex 1, queue 0 is), and
  `egress_ifindex` 0. The program can grow/shrink the packet (bpf_xdp_adjust_head/tail/meta); `data_out`
  is the packet as it left the program, *starting at data_meta* (metadata included). XDP_TX/REDIRECT are
  not carried out: only the return code says so.
- sched_cls / sched_act (tc): an sk_buff whose `protocol` comes from the Ethernet header (eth_type_trans)
  and whose data starts *at the Ethernet header*; `data_out` is the frame as the program left it.
- socket_filter (and the other non-L2 skb types): the same sk_buff, but the Ethernet header is pulled first,
  so the program sees data (and LD_ABS offsets) from the network header and `skb->len` is the L3 length;
  after the run the kernel pushes the 14 header bytes back *as zeros*: `data_out` starts with 14 zero bytes.
- skb types take an optional `struct __sk_buff` context of which only mark, priority, ingress_ifindex,
  ifindex, cb[0..4], tstamp, wire_len, gso_segs, gso_size and hwtstamp may be non-zero (anything else:
  EINVAL); ifindex > 1 must name an existing device (ENODEV). The context comes back in `ctx_out` with
  mark, priority, ingress_ifindex, ifindex, tstamp, cb, wire_len, gso_segs and hwtstamp as the program
  left them (tc_classid, for one, is not copied back). Minimum packet: ETH_HLEN; maximum: 4096 - 64 - 320
  = 3712 bytes.

`repeat` runs the program that many times on the *same* packet and context: nothing is reset between runs
(each sees the bytes, and after bpf_xdp_adjust_head the bounds, the previous run left, and map state
carries over); `retval`, `data_out` and `ctx_out` are the last run's, `duration_ns` the kernel's average
time per run. Time a program that modifies its packet with that in mind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BpforgeError
from .syscall import BPF_PROG_TEST_RUN, TestRunAttr, bpf

if TYPE_CHECKING:
    from .program import KernelProgram

ETH_HLEN = 14
ENOTSUPP = 524  # kernel-internal "not supported", which BPF_PROG_TEST_RUN returns for types without a runner
XDP_MAX_LINEAR = 4096 - 256 - 320  # page - XDP_PACKET_HEADROOM - aligned skb_shared_info
SKB_MAX_DATA = 4096 - 64 - 320  # page - NET_SKB_PAD - aligned skb_shared_info (x86: NET_IP_ALIGN 0)
XDP_MAX_META = 32
DEFAULT_DATA_OUT_EXTRA = 1 << 16  # room for programs that grow the packet
_CTX_OUT_SIZE = 1024  # more than any context struct; the kernel says how much it wrote
_SKB_TYPES = frozenset({"socket_filter", "sched_cls", "sched_act", "cgroup_skb", "lwt_in", "lwt_out", "lwt_xmit",
                        "lwt_seg6local", "sk_skb"})
_L2_TYPES = frozenset({"sched_cls", "sched_act"})

# struct xdp_md and struct __sk_buff (uapi/linux/bpf.h): field -> (offset, struct format).
XDP_MD_FIELDS = {"data": (0, "I"), "data_end": (4, "I"), "data_meta": (8, "I"), "ingress_ifindex": (12, "I"),
                 "rx_queue_index": (16, "I"), "egress_ifindex": (20, "I")}
XDP_MD_SIZE = 24
SK_BUFF_FIELDS = {
    "len": (0, "I"), "pkt_type": (4, "I"), "mark": (8, "I"), "queue_mapping": (12, "I"), "protocol": (16, "I"),
    "vlan_present": (20, "I"), "vlan_tci": (24, "I"), "vlan_proto": (28, "I"), "priority": (32, "I"),
    "ingress_ifindex": (36, "I"), "ifindex": (40, "I"), "tc_index": (44, "I"), "cb": (48, "5I"),
    "hash": (68, "I"), "tc_classid": (72, "I"), "data": (76, "I"), "data_end": (80, "I"), "napi_id": (84, "I"),
    "family": (88, "I"), "remote_ip4": (92, "I"), "local_ip4": (96, "I"), "remote_ip6": (100, "4I"),
    "local_ip6": (116, "4I"), "remote_port": (132, "I"), "local_port": (136, "I"), "data_meta": (140, "I"),
    "flow_keys": (144, "Q"), "tstamp": (152, "Q"), "wire_len": (160, "I"), "gso_segs": (164, "I"),
    "sk": (168, "Q"), "gso_size": (176, "I"), "tstamp_type": (180, "B"), "hwtstamp": (184, "Q"),
}
SK_BUFF_SIZE = 192
# The __sk_buff fields a test run accepts as input (convert___skb_to_skb); the others must be zero.
SK_BUFF_INPUTS = frozenset({"mark", "priority", "ingress_ifindex", "ifindex", "cb", "tstamp", "wire_len",
                            "gso_segs", "gso_size", "hwtstamp"})


@dataclass
class RunResult:
    retval: int
    data_out: bytes
    ctx_out: bytes | None
    duration_ns: float  # average per run, as the kernel measured it
    repeat: int


class TestRunError(BpforgeError):
    """The kernel refused the test run (not the program's result: it did not run). `errno` says how."""

    __test__ = False

    def __init__(self, err: int, message: str, **where):
        self.errno = err
        super().__init__(message, **where)


# ---- contexts ---------------------------------------------------------------------------------------------

def _pack(fields: dict[str, tuple[int, str]], size: int, values: dict[str, object], what: str) -> bytes:
    out = bytearray(size)
    for name, value in values.items():
        if name not in fields:
            raise BpforgeError(f"{what} has no field '{name}' (fields: {', '.join(fields)})")
        offset, fmt = fields[name]
        items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if len(fmt) > 1:  # an array field: pad with zeros
            items = items + (0,) * (int(fmt[:-1]) - len(items))
        struct.pack_into("<" + fmt, out, offset, *items)
    return bytes(out)


def _unpack(fields: dict[str, tuple[int, str]], data: bytes) -> dict[str, int | tuple[int, ...]]:
    out: dict[str, int | tuple[int, ...]] = {}
    for name, (offset, fmt) in fields.items():
        if offset + struct.calcsize("<" + fmt) <= len(data):
            items = struct.unpack_from("<" + fmt, data, offset)
            out[name] = items if len(fmt) > 1 else items[0]
    return out


def xdp_md(data_len: int, *, meta_len: int = 0, ingress_ifindex: int = 0, rx_queue_index: int = 0) -> bytes:
    """A `struct xdp_md` test-run context for `data_len` bytes of input whose first `meta_len` bytes are
    metadata (the program's data_meta..data)."""
    return _pack(XDP_MD_FIELDS, XDP_MD_SIZE, dict(data=meta_len, data_end=data_len,
                                                  ingress_ifindex=ingress_ifindex,
                                                  rx_queue_index=rx_queue_index), "struct xdp_md")


def sk_buff(**fields) -> bytes:
    """A `struct __sk_buff` test-run context: mark=, priority=, ifindex=, cb=(...), tstamp=, ... (see
    SK_BUFF_INPUTS for what the kernel accepts as input)."""
    return _pack(SK_BUFF_FIELDS, SK_BUFF_SIZE, fields, "struct __sk_buff")


def parse_xdp_md(ctx: bytes) -> dict[str, int]:
    return _unpack(XDP_MD_FIELDS, ctx)  # type: ignore[return-value]


def parse_sk_buff(ctx: bytes) -> dict[str, int | tuple[int, ...]]:
    return _unpack(SK_BUFF_FIELDS, ctx)


# ---- the run ----------------------------------------------------------------------------------------------

def test_run(prog: KernelProgram | int, data: bytes, *, ctx: bytes | None = None, repeat: int = 1,
             data_out_size: int | None = None, prog_type: str | None = None) -> RunResult:
    """Run `prog` (a KernelProgram, or a program fd with its `prog_type`) on `data` with BPF_PROG_TEST_RUN.

    `ctx` is the raw context struct (build one with `xdp_md()` / `sk_buff()`); `ctx_out` is returned when a
    context was given, and always for skb-based types (socket_filter, sched_cls, ...), whose context the
    kernel can report without one. `data_out_size` bounds the output buffer (default: the input plus 64 KiB,
    for programs that grow the packet). TestRunError with the kernel's errno, and the reason where it can be
    told, when the kernel refuses to run."""
    fd = prog if isinstance(prog, int) else prog.fd
    kind = prog_type or (None if isinstance(prog, int) else prog.prog_type)
    if fd < 0:
        raise BpforgeError("the program is closed")
    if not 1 <= repeat <= 0xFFFFFFFF:
        raise BpforgeError(f"repeat must be between 1 and 2^32-1, not {repeat}")
    data = bytes(data)
    out_size = data_out_size if data_out_size is not None else len(data) + DEFAULT_DATA_OUT_EXTRA
    data_in = ctypes.create_string_buffer(data, max(len(data), 1))
    data_out = ctypes.create_string_buffer(max(out_size, 1))
    attr = TestRunAttr(prog_fd=fd, data_size_in=len(data), data_in=ctypes.addressof(data_in),
                       data_out=ctypes.addressof(data_out), data_size_out=max(out_size, 1), repeat=repeat)
    ctx_in = ctx_out = None
    if ctx is not None:
        ctx_in = ctypes.create_string_buffer(bytes(ctx), max(len(ctx), 1))
        attr.ctx_in, attr.ctx_size_in = ctypes.addressof(ctx_in), len(ctx)
    if ctx is not None or kind in _SKB_TYPES:
        ctx_out = ctypes.create_string_buffer(max(_CTX_OUT_SIZE, len(ctx or b"")))
        attr.ctx_out, attr.ctx_size_out = ctypes.addressof(ctx_out), len(ctx_out)
    result, err = bpf(BPF_PROG_TEST_RUN, attr)
    if result < 0:
        if err == errno.ENOSPC:
            raise TestRunError(err, f"the program's output is {attr.data_size_out} bytes, more than "
                                    f"data_out_size={out_size} (the run happened; its map updates stand)")
        raise TestRunError(err, f"kernel refuses the test run: {explain(err, kind, data, ctx)}")
    size = min(attr.data_size_out, out_size)
    return RunResult(attr.retval, data_out.raw[:size],
                     ctx_out.raw[:attr.ctx_size_out] if ctx_out is not None else None,
                     float(attr.duration), repeat)


def explain(err: int, prog_type: str | None, data: bytes, ctx: bytes | None) -> str:
    """Why BPF_PROG_TEST_RUN said `err`, from what net/bpf/test_run.c checks (first rule that applies)."""
    name = errno.errorcode.get(err, "ENOTSUPP" if err == ENOTSUPP else str(err))
    reason = _reason(err, prog_type, data, ctx)
    return f"{name}: {reason}" if reason else f"{name}: {os.strerror(err) if err != ENOTSUPP else 'not supported'}"


def _reason(err: int, prog_type: str | None, data: bytes, ctx: bytes | None) -> str | None:
    if err == ENOTSUPP or err == errno.EOPNOTSUPP:
        return f"the kernel has no test run for {prog_type or 'this'} programs"
    if err == errno.E2BIG and ctx is not None:
        return f"the context is {len(ctx)} bytes and its bytes past the kernel's struct are not all zero"
    if err == errno.ENODEV:
        return "the context names an interface (ifindex) that does not exist"
    if err != errno.EINVAL:
        return None
    if len(data) < ETH_HLEN:
        return f"the packet is {len(data)} bytes; a test run needs at least ETH_HLEN ({ETH_HLEN})"
    if prog_type == "xdp":
        return _xdp_reason(data, ctx)
    if prog_type in _SKB_TYPES:
        if len(data) > SKB_MAX_DATA:
            return f"the packet is {len(data)} bytes; an skb test run takes at most {SKB_MAX_DATA}"
        if ctx is not None:
            return _skb_ctx_reason(data, ctx, prog_type)
    return None


def _xdp_reason(data: bytes, ctx: bytes | None) -> str | None:
    if ctx is None:
        return None
    md = parse_xdp_md(ctx.ljust(XDP_MD_SIZE, b"\0"))
    if md["data_meta"]:
        return "xdp_md.data_meta must be 0 (metadata is the first xdp_md.data bytes of the packet)"
    if md["data_end"] != len(data):
        return f"xdp_md.data_end is {md['data_end']} but the packet is {len(data)} bytes (they must be equal)"
    if md["data"] > md["data_end"]:
        return "xdp_md.data (the metadata length) is past data_end"
    if md["data"] % 4 or md["data"] > XDP_MAX_META:
        return f"xdp_md.data = {md['data']}: metadata must be a multiple of 4 bytes, at most {XDP_MAX_META}"
    if md["egress_ifindex"]:
        return "xdp_md.egress_ifindex must be 0"
    if md["rx_queue_index"] and not md["ingress_ifindex"]:
        return "xdp_md.rx_queue_index needs an ingress_ifindex"
    if md["ingress_ifindex"]:
        return (f"interface {md['ingress_ifindex']} has no XDP-registered receive queue "
                f"{md['rx_queue_index']}")
    return None


def _skb_ctx_reason(data: bytes, ctx: bytes, prog_type: str) -> str | None:
    fields = parse_sk_buff(ctx.ljust(SK_BUFF_SIZE, b"\0")[:SK_BUFF_SIZE])
    bad = [name for name, value in fields.items()
           if name not in SK_BUFF_INPUTS and (any(value) if isinstance(value, tuple) else value)]
    if bad:
        return (f"__sk_buff field(s) {', '.join(bad)} must be 0 in a test-run context (settable: "
                f"{', '.join(sorted(SK_BUFF_INPUTS))})")
    skb_len = len(data) - (0 if prog_type in _L2_TYPES else ETH_HLEN)
    wire_len = fields["wire_len"]
    if wire_len and not skb_len <= wire_len <= 65536:
        return f"__sk_buff.wire_len = {wire_len} must be 0 or between the skb length ({skb_len}) and 65536"
    if fields["gso_segs"] > 65535:
        return f"__sk_buff.gso_segs = {fields['gso_segs']} exceeds GSO_MAX_SEGS (65535)"
    return None


__all__ = [
    "ETH_HLEN",
    "SK_BUFF_FIELDS",
    "SK_BUFF_INPUTS",
    "XDP_MD_FIELDS",
    "RunResult",
    "TestRunError",
    "explain",
    "parse_sk_buff",
    "parse_xdp_md",
    "sk_buff",
    "test_run",
    "xdp_md",
]

test_run.__test__ = False  # type: ignore[attr-defined]  # a library function, not a pytest test
