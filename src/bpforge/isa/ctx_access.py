"""Which context accesses the verifier allows, per program type, and what a load gives the program.

The kernel decides this in each program type's `is_valid_access` (net/core/filter.c for the network types,
kernel/trace/bpf_trace.c for the tracing ones, kernel/bpf/syscall.c for syscall programs), called from
check_ctx_access. Each rule below mirrors one of those functions; `tests/test_ctx_access.py` compares every
offset, size and direction with the running kernel.

A load of `data`, `data_end`, `data_meta`, `sk` or `flow_keys` gives a pointer, not the field's bytes: the
kernel rewrites the load, and `CtxAccess.yields` names what the register then holds, in the verifier log's
words (`pkt`, `pkt_end`, `pkt_meta`, `sock_common_or_null`, `sock_or_null`, `flow_keys`). Other fields are
scalars; a narrow load of a 4-byte (or 8-byte) field is allowed where the kernel converts it
(bpf_ctx_narrow_access_ok), and `field_size` says which width the kernel really loads.

What this does not decide, because the verifier checks it elsewhere: the program's own pointer and store
rules (BPF_ST and atomics into the context are refused outright; a pointer stored into it leaks), and types
whose rules depend on BTF (tracing, lsm, struct_ops: the access is checked against the attach point's BTF).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .contexts import SK_BUFF, XDP_MD
from .progtypes import ATTACH_TYPE_IDS

BPF_XDP_DEVMAP = ATTACH_TYPE_IDS["xdp_devmap"]  # an XDP program a devmap runs: it may read egress_ifindex
PERF_MAX_TRACE_SIZE = 8192
MAX_BPF_FUNC_ARGS = 12
PT_REGS_SIZE = 168  # struct pt_regs on x86_64
SYSCALL_CTX_MAX = 0xFFFF  # U16_MAX


@dataclass(frozen=True)
class CtxAccess:
    """An allowed context access: what the destination register holds after a load (`scalar` or a pointer
    kind), and the field width the kernel loads for a narrow access (0 when the access is the field)."""

    yields: str = "scalar"
    field_size: int = 0


_SCALAR = CtxAccess()

# ---- helpers shared by the rules ------------------------------------------------------------------------


def _narrow(off: int, size: int, field_size: int, field_start: int) -> CtxAccess | None:
    """bpf_ctx_narrow_access_ok: a load of `size` bytes inside one `field_size` field (aligned to its size,
    which `off % size == 0` already guarantees)."""
    if size > field_size or (off - field_start) % field_size + size > field_size:
        return None
    return _SCALAR if size == field_size else CtxAccess(field_size=field_size)


def _sk_range(name: str) -> tuple[int, int]:
    f = SK_BUFF[name]
    return f.offset, f.end


_CB = (SK_BUFF["cb"].offset, SK_BUFF["cb"].end)
_FAMILY_TO_LOCAL_PORT = (SK_BUFF["family"].offset, SK_BUFF["local_port"].end)
_ADDRESSES = ((SK_BUFF["remote_ip4"].offset, SK_BUFF["local_ip6"].end),)  # remote_ip4 .. local_ip6[3]
_STRICT_U32 = ("data", "data_meta", "data_end")  # and the addresses: whole 4-byte loads only


def _in(off: int, span: tuple[int, int]) -> bool:
    return span[0] <= off < span[1]


def _field_at(off: int, *names: str) -> bool:
    return any(_in(off, _sk_range(name)) for name in names)


# ---- struct __sk_buff (bpf_skb_is_valid_access and the per-type wrappers) ----------------------------


def _skb(off: int, size: int, write: bool) -> CtxAccess | None:
    """bpf_skb_is_valid_access: what every __sk_buff program may do before its type narrows it."""
    if not 0 <= off < SK_BUFF.size or off % size:
        return None
    if _in(off, _CB):
        return _SCALAR if off + size <= _CB[1] else None
    if _field_at(off, *_STRICT_U32) or any(_in(off, span) for span in _ADDRESSES):
        return _SCALAR if size == 4 else None
    if _field_at(off, "flow_keys"):
        return _SCALAR if size == 8 else None
    if _field_at(off, "sk"):
        return CtxAccess("sock_common_or_null") if size == 8 and not write else None
    if _field_at(off, "tstamp"):
        return _SCALAR if size == 8 else None
    if _field_at(off, "hwtstamp"):
        return _SCALAR if size == 8 and not write else None
    if _field_at(off, "tstamp_type"):
        return _SCALAR if size == 1 and not write else None
    if SK_BUFF["tstamp_type"].end <= off < SK_BUFF["hwtstamp"].offset:  # padding after tstamp_type
        return None
    if write:
        return _SCALAR if size == 4 else None
    return _narrow(off, size, 4, off - off % 4)


def _skb_rule(*, refused: tuple[str, ...], writable: tuple[str, ...], pointers: dict[str, str],
              family_fields: bool) -> Callable[[int, int, bool], CtxAccess | None]:
    """A program type's wrapper around `_skb`: fields it refuses, fields it may write, fields whose load
    gives a pointer, and whether it reads the socket fields family..local_port."""

    def rule(off: int, size: int, write: bool) -> CtxAccess | None:
        if _field_at(off, *refused) or (not family_fields and _in(off, _FAMILY_TO_LOCAL_PORT)):
            return None
        if write and not _field_at(off, *writable):
            return None
        access = _skb(off, size, write)
        if access is None:
            return None
        for name, kind in pointers.items():
            if _field_at(off, name):
                return CtxAccess(kind)
        return access

    return rule


_PACKET = {"data": "pkt", "data_end": "pkt_end"}
_NOT_TC = ("tc_classid", "flow_keys", "wire_len", "tstamp_type")

_SOCKET_FILTER = _skb_rule(refused=("tc_classid", "data", "data_meta", "data_end", "flow_keys", "tstamp",
                                    "wire_len", "hwtstamp", "tstamp_type"),
                           writable=("cb",), pointers={}, family_fields=False)
_TC = _skb_rule(refused=("flow_keys",), writable=("mark", "tc_index", "priority", "tc_classid", "queue_mapping",
                                                  "tstamp", "cb"),
                pointers=dict(_PACKET, data_meta="pkt_meta"), family_fields=False)
_CGROUP_SKB = _skb_rule(refused=("data_meta",) + _NOT_TC, writable=("mark", "priority", "tstamp", "cb"),
                        pointers=_PACKET, family_fields=True)
_LWT = _skb_rule(refused=("data_meta", "tstamp", "hwtstamp") + _NOT_TC, writable=("mark", "priority", "cb"),
                 pointers=_PACKET, family_fields=False)
_SK_SKB = _skb_rule(refused=("mark", "data_meta", "tstamp", "hwtstamp") + _NOT_TC,
                    writable=("tc_index", "priority"), pointers=_PACKET, family_fields=True)


def _flow_dissector(off: int, size: int, write: bool) -> CtxAccess | None:
    """flow_dissector_is_valid_access: only the packet pointers and the flow keys, read-only."""
    if write:
        return None
    kinds = {"data": ("pkt", 4), "data_end": ("pkt_end", 4), "flow_keys": ("flow_keys", 8)}
    for name, (kind, width) in kinds.items():
        if off == SK_BUFF.offset(name):
            return CtxAccess(kind) if size == width else None
    return None


# ---- other contexts -------------------------------------------------------------------------------------


def _xdp(off: int, size: int, write: bool, attach: int) -> CtxAccess | None:
    """xdp_is_valid_access (a program not bound to a device writes nothing)."""
    if write or not 0 <= off < XDP_MD.size or off % size or size != 4:
        return None
    if off == XDP_MD.offset("egress_ifindex") and attach != BPF_XDP_DEVMAP:
        return None
    kinds = {"data": "pkt", "data_end": "pkt_end", "data_meta": "pkt_meta"}
    for name, kind in kinds.items():
        if off == XDP_MD.offset(name):
            return CtxAccess(kind)
    return _SCALAR


def _sk_lookup(off: int, size: int, write: bool) -> CtxAccess | None:
    """sk_lookup_is_valid_access: `sk` (a socket or NULL, assigned only through bpf_sk_assign), then the
    lookup's u32 fields, narrow loads allowed; nothing is written."""
    if write or off < 0 or off % size:
        return None
    if off == 0:
        return CtxAccess("sock_or_null") if size == 8 else None
    if 8 <= off < 68:
        return _narrow(off, size, 4, off - off % 4)
    return None


def _read_only_window(lo: int, hi: int) -> Callable[[int, int, bool], CtxAccess | None]:
    """Tracing contexts read as plain memory: any aligned load inside [lo, hi), no store."""

    def rule(off: int, size: int, write: bool) -> CtxAccess | None:
        return _SCALAR if not write and lo <= off and off + size <= hi and not off % size else None

    return rule


def _perf_event(off: int, size: int, write: bool) -> CtxAccess | None:
    """pe_prog_is_valid_access: the saved registers as whole u64 loads, sample_period and addr narrow."""
    if write or off < 0 or off % size:
        return None
    if off < PT_REGS_SIZE:
        return _SCALAR if size == 8 else None
    if PT_REGS_SIZE <= off < PT_REGS_SIZE + 16:  # sample_period, addr (u64 each)
        return _narrow(off, size, 8, off - off % 8)
    return None


def _syscall(off: int, size: int, write: bool) -> CtxAccess | None:
    """syscall_prog_is_valid_access: the context is the caller's buffer, read and written freely."""
    return _SCALAR if 0 <= off < SYSCALL_CTX_MAX and not off % size else None


_RULES: dict[str, Callable[[int, int, bool], CtxAccess | None]] = {
    "socket_filter": _SOCKET_FILTER,
    "sched_cls": _TC, "sched_act": _TC,
    "cgroup_skb": _CGROUP_SKB,
    "lwt_in": _LWT, "lwt_out": _LWT, "lwt_xmit": _LWT, "lwt_seg6local": _LWT,
    "sk_skb": _SK_SKB,
    "flow_dissector": _flow_dissector,
    "sk_lookup": _sk_lookup,
    "kprobe": _read_only_window(0, PT_REGS_SIZE),
    "tracepoint": _read_only_window(8, PERF_MAX_TRACE_SIZE),  # the first 8 bytes are the common header
    "raw_tracepoint": _read_only_window(0, MAX_BPF_FUNC_ARGS * 8),
    "perf_event": _perf_event,
    "syscall": _syscall,
}


def known_types() -> frozenset[str]:
    """The program types whose context rules this module states."""
    return frozenset(_RULES) | {"xdp"}


def ctx_access(prog_type: str, off: int, size: int, write: bool, *, attach: int = 0) -> CtxAccess | None:
    """The access of `size` bytes at context offset `off` (a store when `write`) as the verifier allows it
    for `prog_type` (with `attach`, the expected attach type), or None when the verifier refuses it.
    KeyError for a type whose rules are not stated here (`known_types()`)."""
    if prog_type == "xdp":
        return _xdp(off, size, write, attach)
    return _RULES[prog_type](off, size, write)


__all__ = ["CtxAccess", "ctx_access", "known_types"]
