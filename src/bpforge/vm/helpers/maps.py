"""Helpers on maps: element operations, tail calls, queues and bloom filters, per-CPU lookups, iteration
with a callback, local storage, XDP redirects through maps, perf event output and ring buffers.

Map semantics live in vm.maps; these functions only move bytes between the program's memory and the map
and turn results into r0 the way kernel/bpf/helpers.c, net/core/filter.c and kernel/trace/bpf_trace.c
do."""

from __future__ import annotations

import errno

from ...isa.contexts import TEST_RUN_KINDS
from ...isa.numbers import M32
from ..maps import BloomFilterMap, CgroupStorageMap, PerfEventArrayMap, QueueStackMap, RingBufMap, SkStorageMap
from ..maps.perf import BPF_F_CTXLEN_MASK, BPF_F_INDEX_MASK
from ..maps.redirect import BPF_F_BROADCAST, REDIRECT_MAPS
from ..memory import VmFault
from .registry import TailCall, dummy_socket, err, helper, needs, packet

MAX_TAIL_CALLS = 33  # MAX_TAIL_CALL_CNT
XDP_ABORTED, XDP_REDIRECT = 0, 4
XDP_ACTION_MASK = 3  # XDP_ABORTED | XDP_DROP | XDP_PASS | XDP_TX: the action bpf_redirect_map returns on a miss
PERF_EVENT_VALUE_SIZE = 24
_ITERABLE = ("array", "percpu_array", "hash", "percpu_hash", "lru_hash", "lru_percpu_hash")  # struct bpf_perf_event_value: counter, enabled, running


def _map(vm, handle: int):
    return vm.machine.map_at(handle)


# ---- element operations ------------------------------------------------------------------------------------

@helper("map_lookup_elem")
def _map_lookup(vm, map_ptr, key_ptr, *_):
    m = _map(vm, map_ptr)
    found = m.prog_lookup(vm.machine.memory.read(key_ptr, m.key_size), vm.machine.cpu)
    return _pointer(vm, m, found)


def _pointer(vm, m, found) -> int:
    if found is None:
        return 0
    if not isinstance(found, bytearray):  # map-in-map: the inner map itself
        return vm.machine.map_handle(found)
    return vm.machine.value_pointer(m, found)


@helper("map_update_elem")
def _map_update(vm, map_ptr, key_ptr, value_ptr, flags, _):
    m, mem = _map(vm, map_ptr), vm.machine.memory
    return m.prog_update(mem.read(key_ptr, m.key_size), mem.read(value_ptr, m.value_size), flags, vm.machine.cpu)


@helper("map_delete_elem")
def _map_delete(vm, map_ptr, key_ptr, *_):
    m = _map(vm, map_ptr)
    return m.prog_delete(vm.machine.memory.read(key_ptr, m.key_size), vm.machine.cpu)


@helper("map_lookup_percpu_elem")
def _map_lookup_percpu(vm, map_ptr, key_ptr, cpu, *_):
    """The value of another CPU (NULL for a CPU number past the possible ones)."""
    m = _map(vm, map_ptr)
    needs(vm, m.percpu, f"bpf_map_lookup_percpu_elem needs a per-CPU map, not {m.type_name}")
    cpu &= M32
    if cpu >= m.num_cpus:
        return 0
    return _pointer(vm, m, m.prog_lookup(vm.machine.memory.read(key_ptr, m.key_size), cpu))


@helper("tail_call")
def _tail_call(vm, ctx, map_ptr, index, *_):
    target = _map(vm, map_ptr).prog_at(index & M32)
    if target is None or vm.tail_calls >= MAX_TAIL_CALLS:
        return None  # the call falls through; r0 is left as it was
    vm.tail_calls += 1
    return TailCall(target)


# ---- queues, stacks, bloom filters -------------------------------------------------------------------------

def _keyless(vm, map_ptr, helper_name: str):
    m = _map(vm, map_ptr)
    needs(vm, isinstance(m, QueueStackMap | BloomFilterMap),
          f"{helper_name} needs a queue, stack or bloom filter, not {m.type_name}")
    return m


@helper("map_push_elem")
def _map_push(vm, map_ptr, value_ptr, flags, *_):
    m = _keyless(vm, map_ptr, "bpf_map_push_elem")
    return m.push_elem(vm.machine.memory.read(value_ptr, m.value_size), flags)


@helper("map_pop_elem")
def _map_pop(vm, map_ptr, value_ptr, *_):
    m = _keyless(vm, map_ptr, "bpf_map_pop_elem")
    needs(vm, isinstance(m, QueueStackMap), "bpf_map_pop_elem on a bloom filter")
    result, value = m.get_elem(True)
    vm.machine.memory.write(value_ptr, value)  # zeros when empty
    return result


@helper("map_peek_elem")
def _map_peek(vm, map_ptr, value_ptr, *_):
    m = _keyless(vm, map_ptr, "bpf_map_peek_elem")
    if isinstance(m, BloomFilterMap):  # a bloom filter reads the value to test
        return m.peek_elem(vm.machine.memory.read(value_ptr, m.value_size))
    result, value = m.get_elem(False)
    vm.machine.memory.write(value_ptr, value)
    return result


# ---- iteration ------------------------------------------------------------------------------------------

@helper("for_each_map_elem")
def _for_each_map_elem(vm, map_ptr, callback, callback_ctx, flags, _):
    """callback(map, key, value, ctx) for each element in the kernel's order until it returns non-zero:
    the number of elements visited (the one that stopped included)."""
    m = _map(vm, map_ptr)
    needs(vm, m.type_name in _ITERABLE, f"bpf_for_each_map_elem is not for {m.type_name} maps")
    if flags:
        return err(errno.EINVAL)
    key_buf = m.iteration_key()
    key_ptr = vm.machine.memory.map(key_buf, f"key of map {m.name}", writable=False).base
    visited = 0
    for key, storage in m.prog_elements(vm.machine.cpu):
        key_buf[:] = key
        visited += 1
        if vm.call_function(callback, map_ptr, key_ptr, vm.machine.value_pointer(m, storage), callback_ctx, 0):
            break
    return visited


# ---- local storage -----------------------------------------------------------------------------------------

@helper("get_local_storage")
def _get_local_storage(vm, map_ptr, flags, *_):
    m = _map(vm, map_ptr)
    needs(vm, isinstance(m, CgroupStorageMap),
          f"bpf_get_local_storage needs a cgroup storage map, not {m.type_name}")
    return vm.machine.value_pointer(m, m.local_storage(vm.machine.memory, vm.machine.cpu))


def _socket(vm, sk: int, helper_name: str) -> int:
    needs(vm, sk == 0 or sk == dummy_socket(vm),
          f"{helper_name}: {sk:#x} is not a socket (a test run has only the one on its skb)")
    return sk


@helper("sk_storage_get")
def _sk_storage_get(vm, map_ptr, sk, value_ptr, flags, _):
    m = _map(vm, map_ptr)
    needs(vm, isinstance(m, SkStorageMap), f"bpf_sk_storage_get needs an sk_storage map, not {m.type_name}")
    if not _socket(vm, sk, "bpf_sk_storage_get"):
        return 0
    value = vm.machine.memory.read(value_ptr, m.value_size) if value_ptr else None
    return _pointer(vm, m, m.storage_get(vm.machine.memory, sk, value, flags))


@helper("sk_storage_delete")
def _sk_storage_delete(vm, map_ptr, sk, *_):
    m = _map(vm, map_ptr)
    needs(vm, isinstance(m, SkStorageMap), f"bpf_sk_storage_delete needs an sk_storage map, not {m.type_name}")
    if not _socket(vm, sk, "bpf_sk_storage_delete"):
        return err(errno.EINVAL)
    return m.storage_delete(vm.machine.memory, sk)


# ---- XDP redirect through a map ------------------------------------------------------------------------------

@helper("redirect_map")
def _redirect_map(vm, map_ptr, key, flags, *_):
    """__bpf_xdp_redirect_map: XDP_REDIRECT when the map has an entry at the key (a u32), else the action
    in the low flag bits; devmaps also take BPF_F_BROADCAST (redirect to all, found or not) and
    BPF_F_EXCLUDE_INGRESS. test_run reports the action; the redirect itself is not carried out."""
    m = _map(vm, map_ptr)
    needs(vm, isinstance(m, REDIRECT_MAPS),
          f"bpf_redirect_map needs a devmap, devmap_hash, cpumap or xskmap, not {m.type_name}")
    needs(vm, vm.input.prog_type == "xdp", "bpf_redirect_map is for XDP programs")
    if flags & ~(XDP_ACTION_MASK | m.redirect_flags):
        return XDP_ABORTED
    if not m.redirect_target(key & M32) and not flags & BPF_F_BROADCAST:
        return flags & XDP_ACTION_MASK
    return XDP_REDIRECT


# ---- perf events -------------------------------------------------------------------------------------------

@helper("perf_event_output")
def _perf_event_output(vm, ctx, map_ptr, flags, data_ptr, size):
    """bpf_perf_event_output in the flavour of the program type: XDP and socket buffer programs may append
    the first (flags >> 32) bytes of the packet to the sample (BPF_F_CTXLEN_MASK); the others only take
    the index bits."""
    m = _map(vm, map_ptr)
    needs(vm, isinstance(m, PerfEventArrayMap), f"bpf_perf_event_output needs a perf_event_array, not {m.type_name}")
    kind = TEST_RUN_KINDS.get(vm.input.prog_type)
    sample = vm.machine.memory.read(data_ptr, size) if size else b""
    if kind in ("xdp", "skb"):
        if flags & ~(BPF_F_CTXLEN_MASK | BPF_F_INDEX_MASK):
            return err(errno.EINVAL)
        ctx_size = (flags & BPF_F_CTXLEN_MASK) >> 32
        pkt = packet(vm)
        whole = pkt.bytes() + (bytes(pkt.frags) if kind == "xdp" else b"")  # xdp_get_buff_len counts frags
        if ctx_size > len(whole):
            return err(errno.EFAULT)
        sample += whole[:ctx_size]
    elif flags & ~BPF_F_INDEX_MASK:
        return err(errno.EINVAL)
    return m.output(flags, vm.machine.cpu, sample)


def _perf_counter(vm, map_ptr, flags) -> int:
    """get_map_perf_counter: 0 for an event of this CPU (a BPF output event counts nothing), or -errno."""
    m = _map(vm, map_ptr)
    needs(vm, isinstance(m, PerfEventArrayMap), f"bpf_perf_event_read needs a perf_event_array, not {m.type_name}")
    if flags & ~BPF_F_INDEX_MASK:
        return -errno.EINVAL
    index = vm.machine.cpu if flags == BPF_F_INDEX_MASK else flags
    if index >= m.max_entries:
        return -errno.E2BIG
    event = m.object_at(index)
    if event is None:
        return -errno.ENOENT
    return 0 if event.cpu == vm.machine.cpu else -errno.EINVAL  # perf_event_read_local: not this CPU's


@helper("perf_event_read")
def _perf_event_read(vm, map_ptr, flags, *_):
    return _perf_counter(vm, map_ptr, flags)


@helper("perf_event_read_value")
def _perf_event_read_value(vm, map_ptr, flags, buf_ptr, size, _):
    result = -errno.EINVAL if size != PERF_EVENT_VALUE_SIZE else _perf_counter(vm, map_ptr, flags)
    vm.machine.memory.write(buf_ptr, bytes(size))  # counter, enabled and running: all 0 (or cleared)
    return result


# ---- ring buffers ------------------------------------------------------------------------------------------

def _ringbuf(vm, map_ptr, helper_name: str):
    m = _map(vm, map_ptr)
    needs(vm, isinstance(m, RingBufMap), f"{helper_name} needs a ring buffer, not {m.type_name}")
    return m


@helper("ringbuf_output")
def _ringbuf_output(vm, map_ptr, data_ptr, size, flags, _):
    data = vm.machine.memory.read(data_ptr, size) if size else b""
    return _ringbuf(vm, map_ptr, "bpf_ringbuf_output").output(data, flags)


@helper("ringbuf_reserve")
def _ringbuf_reserve(vm, map_ptr, size, flags, *_):
    m = _ringbuf(vm, map_ptr, "bpf_ringbuf_reserve")
    buf = m.reserve(size, flags)
    return 0 if buf is None else vm.machine.memory.map(buf, f"ringbuf record of {m.name}").base


def _ringbuf_record(vm, ptr):
    region = vm.machine.memory.region_at(ptr)
    if region is None or ptr != region.base:
        raise VmFault(f"{ptr:#x} is not a ring buffer record")
    for m in vm.machine.program.maps:
        if isinstance(m, RingBufMap) and m.owns(region.buf):
            return m, region.buf
    raise VmFault("submit/discard of memory that no ring buffer reserved")


@helper("ringbuf_submit")
def _ringbuf_submit(vm, ptr, flags, *_):
    m, record = _ringbuf_record(vm, ptr)
    m.submit(record, flags)
    return 0


@helper("ringbuf_discard")
def _ringbuf_discard(vm, ptr, flags, *_):
    m, record = _ringbuf_record(vm, ptr)
    m.discard(record, flags)
    return 0


@helper("ringbuf_query")
def _ringbuf_query(vm, map_ptr, flags, *_):
    return _ringbuf(vm, map_ptr, "bpf_ringbuf_query").query(flags)

