"""Kernel helper functions for the interpreter, by helper id. Each takes the running interpreter and
returns r0 (an int, negative errnos as in the kernel) — or, for a successful tail call, the program to
continue in. An id without an implementation is an error naming the helper, never a silent zero."""

from __future__ import annotations

import errno
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from ..isa import helper_id, helper_name
from .context import ETH_HLEN
from .memory import VmFault

M64 = (1 << 64) - 1
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
TC_ACT_REDIRECT = 7
XDP_FRAME_SIZE = 40  # sizeof(struct xdp_frame): the headroom bpf_xdp_adjust_head/meta must leave
BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_NOT_FWDED = 0, 4
MAX_TAIL_CALLS = 33  # MAX_TAIL_CALL_CNT

Helper = Callable[..., object]
_HELPERS: dict[int, Helper] = {}


def helper(name: str):
    def register(fn: Helper) -> Helper:
        hid = helper_id(name)
        assert hid is not None, name
        _HELPERS[hid] = fn
        return fn
    return register


@dataclass
class TailCall:
    """A helper's request to continue in another program (bpf_tail_call that found its target)."""

    program: object


def call_helper(vm, hid: int, r1: int, r2: int, r3: int, r4: int, r5: int):
    """r0 after helper `hid`, or a TailCall, or None when the helper leaves r0 as it was.

    `vm` offers .machine, .input and .tail_calls (both tiers pass their run state)."""
    fn = _HELPERS.get(hid)
    if fn is None:
        name = helper_name(hid)
        raise VmFault(f"helper {name}#{hid} is not implemented by the interpreter"
                      if name else f"unknown helper id {hid}")
    result = fn(vm, r1, r2, r3, r4, r5)
    return result & M64 if isinstance(result, int) else result


def implemented() -> dict[int, str]:
    return {hid: helper_name(hid) for hid in sorted(_HELPERS)}


def _err(code: int) -> int:
    return -code & M64


# ---- maps ------------------------------------------------------------------------------------------------

@helper("map_lookup_elem")
def _map_lookup(vm, map_ptr, key_ptr, *_):
    m = vm.machine.map_at(map_ptr)
    found = m.prog_lookup(vm.machine.memory.read(key_ptr, m.key_size), vm.machine.cpu)
    if found is None:
        return 0
    if not isinstance(found, bytearray):  # map-in-map: the inner map itself
        return vm.machine.map_handle(found)
    return vm.machine.value_pointer(m, found)


@helper("map_update_elem")
def _map_update(vm, map_ptr, key_ptr, value_ptr, flags, _):
    m, mem = vm.machine.map_at(map_ptr), vm.machine.memory
    return m.prog_update(mem.read(key_ptr, m.key_size), mem.read(value_ptr, m.value_size), flags, vm.machine.cpu)


@helper("map_delete_elem")
def _map_delete(vm, map_ptr, key_ptr, *_):
    m = vm.machine.map_at(map_ptr)
    return m.prog_delete(vm.machine.memory.read(key_ptr, m.key_size), vm.machine.cpu)


@helper("tail_call")
def _tail_call(vm, ctx, map_ptr, index, *_):
    prog_array = vm.machine.map_at(map_ptr)
    target = prog_array.prog_at(index & 0xFFFFFFFF)
    if target is None or vm.tail_calls >= MAX_TAIL_CALLS:
        return None  # the call falls through; r0 is left as it was
    vm.tail_calls += 1
    return TailCall(target)


# ---- time, randomness, cpu, tracing ---------------------------------------------------------------------

@helper("ktime_get_ns")
def _ktime(vm, *_):
    vm.machine.clock_ns += 1  # a deterministic clock that still moves forward
    return vm.machine.clock_ns


@helper("ktime_get_boot_ns")
def _ktime_boot(vm, *_):
    return _ktime(vm)


@helper("get_prandom_u32")
def _prandom(vm, *_):
    return vm.machine.rng.getrandbits(32)


@helper("get_smp_processor_id")
def _cpu(vm, *_):
    return vm.machine.cpu


@helper("trace_printk")
def _trace_printk(vm, fmt_ptr, fmt_size, a1, a2, a3):
    raw = vm.machine.memory.read(fmt_ptr, fmt_size)
    fmt = raw.split(b"\0", 1)[0].decode("latin-1")
    args = iter((a1, a2, a3))

    def one(m: re.Match) -> str:
        spec = m.group(0)
        if spec == "%%":
            return "%"
        value = next(args, 0)
        conv = spec[-1]
        bits = 64 if "l" in spec else 32
        value &= (1 << bits) - 1
        if conv in "di":
            value = value - (1 << bits) if value >> (bits - 1) else value
            return str(value)
        if conv == "u":
            return str(value)
        if conv in "xX":
            return format(value, conv)
        if conv == "p":
            return hex(value)
        return spec

    text = re.sub(r"%%|%l{0,2}[diuxXp]", one, fmt)
    vm.machine.trace.append(text)
    return len(text) + 1


# ---- packet (XDP) ---------------------------------------------------------------------------------------

def _packet(vm):
    packet = vm.input.packet
    if packet is None:
        raise VmFault("this helper needs a packet")
    return packet


@helper("xdp_adjust_head")
def _xdp_adjust_head(vm, ctx, delta, *_):
    packet = _packet(vm)
    delta = _s32(delta)
    meta_len = packet.data - packet.meta
    data = packet.data + delta
    if data < XDP_FRAME_SIZE + meta_len or data > packet.end - ETH_HLEN:
        return _err(errno.EINVAL)
    packet.meta, packet.data = data - meta_len, data
    packet.sync()
    return 0


@helper("xdp_adjust_tail")
def _xdp_adjust_tail(vm, ctx, delta, *_):
    packet = _packet(vm)
    end = packet.end + _s32(delta)
    if end > packet.max_end or end < packet.data + ETH_HLEN:
        return _err(errno.EINVAL)
    if end > packet.end:  # grown bytes are cleared, as the kernel does
        packet.region.buf[packet.end:end] = bytes(end - packet.end)
    packet.end = end
    packet.sync()
    return 0


@helper("xdp_adjust_meta")
def _xdp_adjust_meta(vm, ctx, delta, *_):
    packet = _packet(vm)
    meta = packet.meta + _s32(delta)
    meta_len = packet.data - meta
    if meta_len & 3 or meta_len > 32:
        return _err(errno.EACCES)
    if meta < XDP_FRAME_SIZE or meta > packet.data:
        return _err(errno.EINVAL)
    packet.meta = meta
    packet.sync()
    return 0


@helper("redirect")
def _redirect(vm, ifindex, flags, *_):
    if vm.input.prog_type == "xdp":
        return XDP_REDIRECT if flags == 0 else XDP_ABORTED
    return TC_ACT_REDIRECT


@helper("redirect_map")
def _redirect_map(vm, map_ptr, key, flags, *_):
    m = vm.machine.map_at(map_ptr)
    found = m.prog_lookup((key & 0xFFFFFFFF).to_bytes(m.key_size, "little")[:m.key_size], vm.machine.cpu)
    return XDP_REDIRECT if found is not None else flags & 3  # the low bits of flags: the action on a miss


def legacy_load(inp, size: int, offset: int) -> int | None:
    """LD_ABS/LD_IND: a big-endian read at `offset` (a signed int) from skb->data; None when out of bounds,
    which ends the program with 0 as in the kernel. Negative offsets reach the kernel's ancillary-data
    loads (SKF_NET_OFF...), which are not modelled: they end the program too."""
    packet = inp.packet
    if packet is None or inp.prog_type not in ("socket_filter", "sched_cls", "sched_act"):
        raise VmFault("legacy packet loads need a socket buffer (socket_filter or sched_cls program)")
    start = packet.data + offset
    if offset < 0 or start + size > packet.end:
        return None
    return int.from_bytes(packet.region.buf[start:start + size], "big")


# ---- checksums and socket buffers -------------------------------------------------------------------------

def _fold32(total: int) -> int:
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


@helper("csum_diff")
def _csum_diff(vm, from_ptr, from_size, to_ptr, to_size, seed):
    """One's-complement sum of ~from and to, 32-bit words, added to seed (the kernel's csum_partial)."""
    if from_size % 4 or to_size % 4 or from_size > 512 or to_size > 512:
        return _err(errno.EINVAL)
    mem = vm.machine.memory
    total = seed & 0xFFFFFFFF
    old = mem.read(from_ptr, from_size) if from_size else b""
    new = mem.read(to_ptr, to_size) if to_size else b""
    for (word,) in struct.iter_unpack("<I", old):
        total += ~word & 0xFFFFFFFF
    for (word,) in struct.iter_unpack("<I", new):
        total += word
    return _fold32(total)


def _skb_bytes(vm, offset: int, length: int):
    packet = _packet(vm)
    start = packet.data + offset
    if offset < 0 or length < 0 or start + length > packet.end:
        return None
    return packet, start


@helper("skb_load_bytes")
def _skb_load_bytes(vm, skb, offset, to_ptr, length, _):
    where = _skb_bytes(vm, _s32(offset), length & 0xFFFFFFFF)
    if where is None:
        vm.machine.memory.write(to_ptr, bytes(length & 0xFFFFFFFF))
        return _err(errno.EFAULT)
    packet, start = where
    vm.machine.memory.write(to_ptr, bytes(packet.region.buf[start:start + length]))
    return 0


@helper("skb_store_bytes")
def _skb_store_bytes(vm, skb, offset, from_ptr, length, flags):
    where = _skb_bytes(vm, _s32(offset), length & 0xFFFFFFFF)
    if where is None:
        return _err(errno.EFAULT)
    packet, start = where
    packet.region.buf[start:start + length] = vm.machine.memory.read(from_ptr, length)
    return 0


def _csum_replace(vm, offset, old, new, size, pseudo_sum=None):
    where = _skb_bytes(vm, _s32(offset), 2)
    if where is None:
        return _err(errno.EFAULT)
    packet, start = where
    check = int.from_bytes(packet.region.buf[start:start + 2], "little")
    # RFC 1624: HC' = ~(~HC + ~m + m'), on little-endian loads of big-endian data, as the kernel does.
    if size == 0:  # `new` is already a checksum difference (from csum_diff)
        total = (~check & 0xFFFF) + _fold32(new & 0xFFFFFFFF)
    elif size == 2:
        total = (~check & 0xFFFF) + (~old & 0xFFFF) + (new & 0xFFFF)
    else:
        total = (~check & 0xFFFF) + (~old & 0xFFFF) + ((~old >> 16) & 0xFFFF) + (new & 0xFFFF) + ((new >> 16) & 0xFFFF)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    result = ~total & 0xFFFF
    packet.region.buf[start:start + 2] = result.to_bytes(2, "little")
    return 0


@helper("l3_csum_replace")
def _l3_csum_replace(vm, skb, offset, old, new, flags):
    size = flags & 0xF
    if size not in (0, 2, 4):
        return _err(errno.EINVAL)
    return _csum_replace(vm, offset, old, new, size)


@helper("l4_csum_replace")
def _l4_csum_replace(vm, skb, offset, old, new, flags):
    size = flags & 0xF
    if size not in (0, 2, 4):
        return _err(errno.EINVAL)
    return _csum_replace(vm, offset, old, new, size)


@helper("get_hash_recalc")
def _get_hash_recalc(vm, *_):
    """The kernel hashes the flow keys with a seed chosen at boot, so no run can reproduce its value; this
    is a stable hash of the packet instead (same packet, same hash)."""
    return zlib.crc32(_packet(vm).bytes()) or 1


# ---- ring buffers --------------------------------------------------------------------------------------

@helper("ringbuf_output")
def _ringbuf_output(vm, map_ptr, data_ptr, size, flags, _):
    return vm.machine.map_at(map_ptr).output(vm.machine.memory.read(data_ptr, size), flags)


@helper("ringbuf_reserve")
def _ringbuf_reserve(vm, map_ptr, size, flags, *_):
    m = vm.machine.map_at(map_ptr)
    buf = m.reserve(size, flags)
    return 0 if buf is None else vm.machine.memory.map(buf, f"ringbuf record of {m.name}").base


def _ringbuf_record(vm, ptr):
    region = vm.machine.memory.region_at(ptr)
    if region is None:
        raise VmFault(f"{ptr:#x} is not a ring buffer record")
    return region


@helper("ringbuf_submit")
def _ringbuf_submit(vm, ptr, flags, *_):
    region = _ringbuf_record(vm, ptr)
    _owner(vm, region.buf).submit(region.buf)
    return 0


@helper("ringbuf_discard")
def _ringbuf_discard(vm, ptr, flags, *_):
    region = _ringbuf_record(vm, ptr)
    _owner(vm, region.buf).discard(region.buf)
    return 0


def _owner(vm, record):
    for m in vm.machine.program.maps:
        if getattr(m, "type_name", "") == "ringbuf" and m.owns(record):
            return m
    raise VmFault("submit/discard of memory that no ring buffer reserved")


# ---- routing ---------------------------------------------------------------------------------------------

@helper("fib_lookup")
def _fib_lookup(vm, ctx, params_ptr, plen, flags, _):
    """The route table is `Machine(fib={ipv4_dst (host int): (ifindex, smac, dmac)})`; IPv4 only."""
    mem = vm.machine.memory
    params = bytearray(mem.read(params_ptr, 64))
    family = params[0]
    if family != 2:  # AF_INET
        return BPF_FIB_LKUP_RET_NOT_FWDED
    dst = int.from_bytes(params[32:36], "big")
    route = vm.machine.fib.get(dst)
    if route is None:
        return BPF_FIB_LKUP_RET_NOT_FWDED
    ifindex, smac, dmac = route
    struct.pack_into("<I", params, 8, ifindex)
    params[52:58], params[58:64] = smac, dmac
    mem.write(params_ptr, bytes(params))
    return BPF_FIB_LKUP_RET_SUCCESS


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


