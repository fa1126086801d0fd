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
  = 3712 bytes. The sk_buff has a dummy socket (family from the packet's IP version); cgroup_skb programs
  see data but not data_end (the kernel does not compute it for them), lwt programs see both.
- flow_dissector: the program's data..data_end is the whole frame; the result (`data_out`) is the
  `struct bpf_flow_keys` it filled (nhoff and thoff clamped afterwards); the context may set only `flags`.
- sk_lookup: no packet; the context (`struct bpf_sk_lookup`, required) gives family, protocol, addresses and
  ports; it comes back with `cookie` 0 unless the program selected a socket.
- syscall and raw_tracepoint: no packet, no repeat; the context is a plain buffer (syscall: up to 64 KiB,
  copied back after the run; raw_tracepoint: up to 12 u64 arguments).
Which types run, and every rule above, are data in `isa.contexts`, shared with the VM.

`repeat` runs the program that many times on the *same* packet and context: nothing is reset between runs
(each sees the bytes, and after bpf_xdp_adjust_head the bounds, the previous run left, and map state
carries over); `retval`, `data_out` and `ctx_out` are the last run's, `duration_ns` the kernel's average
time per run. Time a program that modifies its packet with that in mind.
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ENOTSUPP, BpforgeError, errno_name, errno_text
from ..isa.contexts import (
    ETH_HLEN, FLOW_KEYS, ONE_SHOT_KINDS, SK_BUFF, SK_LOOKUP, TEST_RUN_KINDS, XDP_MD, ctx_returned, input_refusal,
)
from .syscall import BPF_PROG_TEST_RUN, TestRunAttr, bpf

if TYPE_CHECKING:
    from .program import KernelProgram

DEFAULT_DATA_OUT_EXTRA = 1 << 16  # room for programs that grow the packet
_CTX_OUT_SIZE = 1024  # more than any context struct; the kernel says how much it wrote


@dataclass
class TestRunResult:
    """What BPF_PROG_TEST_RUN gave back (the last run's, for `repeat` runs)."""

    __test__ = False  # not a pytest class, whatever its name says

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

def xdp_md(data_len: int, *, meta_len: int = 0, ingress_ifindex: int = 0, rx_queue_index: int = 0) -> bytes:
    """A `struct xdp_md` test-run context for `data_len` bytes of input whose first `meta_len` bytes are
    metadata (the program's data_meta..data)."""
    return XDP_MD.pack(dict(data=meta_len, data_end=data_len, ingress_ifindex=ingress_ifindex,
                            rx_queue_index=rx_queue_index))


def sk_buff(**fields) -> bytes:
    """A `struct __sk_buff` test-run context: mark=, priority=, ifindex=, cb=(...), tstamp=, ... (see
    isa.contexts.SK_BUFF_INPUTS for what the kernel accepts as input)."""
    try:
        return SK_BUFF.pack(fields)
    except KeyError as err:
        raise BpforgeError(err.args[0]) from None


def sk_lookup(**fields) -> bytes:
    """A `struct bpf_sk_lookup` test-run context: family=, protocol=, remote_ip4=, remote_port=, local_ip4=,
    local_port=, ... (addresses and remote_port in network byte order, local_port in host order)."""
    try:
        return SK_LOOKUP.pack(fields)
    except KeyError as err:
        raise BpforgeError(err.args[0]) from None


def flow_keys(flags: int = 0) -> bytes:
    """A `struct bpf_flow_keys` test-run context: only `flags` may be set."""
    return FLOW_KEYS.pack(dict(flags=flags))


def parse_xdp_md(ctx: bytes) -> dict[str, int]:
    return XDP_MD.unpack(ctx)  # type: ignore[return-value]


def parse_sk_buff(ctx: bytes) -> dict[str, int | tuple[int, ...]]:
    return SK_BUFF.unpack(ctx)


# ---- the run ----------------------------------------------------------------------------------------------

def test_run(prog: KernelProgram | int, data: bytes, *, ctx: bytes | None = None, repeat: int = 1,
             data_out_size: int | None = None, prog_type: str | None = None) -> TestRunResult:
    """Run `prog` (a KernelProgram, or a program fd with its `prog_type`) on `data` with BPF_PROG_TEST_RUN.

    `ctx` is the raw context struct (build one with `xdp_md()`, `sk_buff()`, `sk_lookup()`, ...); `ctx_out` is
    returned where the kernel reports one (`isa.contexts.ctx_returned`: always for skb types, for syscall
    programs their context as the program left it). Types that take no packet (sk_lookup, syscall,
    raw_tracepoint) get none; syscall and raw_tracepoint runs cannot repeat (the kernel refuses repeat for
    them), so `repeat` must be 1 there. `data_out_size` bounds the output buffer (default: the input plus
    64 KiB, for programs that grow the packet). TestRunError with the kernel's errno, and the reason where
    it can be told, when the kernel refuses to run."""
    fd = prog if isinstance(prog, int) else prog.fd
    kind_name = prog_type or (None if isinstance(prog, int) else prog.prog_type)
    kind = TEST_RUN_KINDS.get(kind_name or "")
    if fd < 0:
        raise BpforgeError("the program is closed")
    if not 1 <= repeat <= 0xFFFFFFFF:
        raise BpforgeError(f"repeat must be between 1 and 2^32-1, not {repeat}")
    if kind in ONE_SHOT_KINDS and repeat != 1:
        raise BpforgeError(f"{kind_name} test runs cannot repeat (the kernel runs them once)")
    data = bytes(data)
    takes_data = kind not in ONE_SHOT_KINDS and kind != "sk_lookup"
    out_size = data_out_size if data_out_size is not None else len(data) + DEFAULT_DATA_OUT_EXTRA
    attr = TestRunAttr(prog_fd=fd, repeat=0 if kind in ONE_SHOT_KINDS else repeat)
    buffers = []  # what the kernel reads and writes must outlive the syscall
    data_out = None
    if takes_data or data:
        data_in = ctypes.create_string_buffer(data, max(len(data), 1))
        buffers.append(data_in)
        attr.data_in, attr.data_size_in = ctypes.addressof(data_in), len(data)
    if takes_data:
        data_out = ctypes.create_string_buffer(max(out_size, 1))
        attr.data_out, attr.data_size_out = ctypes.addressof(data_out), max(out_size, 1)
    ctx_in = ctx_out = None
    if ctx is not None:
        ctx_in = ctypes.create_string_buffer(bytes(ctx), max(len(ctx), 1))
        attr.ctx_in, attr.ctx_size_in = ctypes.addressof(ctx_in), len(ctx)
    if kind not in ONE_SHOT_KINDS and (ctx is not None or kind == "skb"):
        ctx_out = ctypes.create_string_buffer(max(_CTX_OUT_SIZE, len(ctx or b"")))
        attr.ctx_out, attr.ctx_size_out = ctypes.addressof(ctx_out), len(ctx_out)
    result, err = bpf(BPF_PROG_TEST_RUN, attr)
    if result < 0:
        if err == errno.ENOSPC:
            raise TestRunError(err, f"the program's output is {attr.data_size_out} bytes, more than "
                                    f"data_out_size={out_size} (the run happened; its map updates stand)")
        raise TestRunError(err, f"kernel refuses the test run: {explain(err, kind_name, data, ctx)}")
    out = b""
    if data_out is not None:
        out = data_out.raw[:min(attr.data_size_out, out_size)]
    returned = None
    if kind == "syscall" and ctx_in is not None:
        returned = ctx_in.raw[:len(ctx)]  # the kernel copies the context back over the input
    elif ctx_out is not None and ctx_returned(kind_name or "", ctx is not None):
        returned = ctx_out.raw[:attr.ctx_size_out]
    return TestRunResult(attr.retval, out, returned, float(attr.duration), repeat)


def explain(err: int, prog_type: str | None, data: bytes, ctx: bytes | None) -> str:
    """Why BPF_PROG_TEST_RUN said `err`, from what net/bpf/test_run.c checks (first rule that applies)."""
    name = errno_name(err)
    refusal = input_refusal(prog_type or "", data, ctx) if prog_type else None
    if err in (ENOTSUPP, errno.EOPNOTSUPP) and (refusal is None or refusal.errno != ENOTSUPP):
        return f"{name}: the kernel has no test run for {prog_type or 'this'} programs"
    if refusal is not None and refusal.errno == err:
        return f"{name}: {refusal.reason}"
    return errno_text(err)


__all__ = ["ETH_HLEN", "TestRunError", "TestRunResult", "explain", "flow_keys", "parse_sk_buff", "parse_xdp_md",
           "sk_buff", "sk_lookup", "test_run", "xdp_md"]

test_run.__test__ = False  # type: ignore[attr-defined]  # a library function, not a pytest test
