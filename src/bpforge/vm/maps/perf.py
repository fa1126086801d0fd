"""BPF_MAP_TYPE_PERF_EVENT_ARRAY (kernel/bpf/arraymap.c, kernel/trace/bpf_trace.c): slots of perf events
that bpf_perf_event_output writes samples to.

A slot holds a perf event file descriptor going in (BPF_OUTPUT software events, one per CPU as libbpf's
perf_buffer opens them); through bpf() it cannot be read back (lookup is ENOTSUPP). Here a slot holds a
`PerfEvent` registered with the map, and an output to it lands in the event's `records`. A test run
normally has none: every slot is empty and the helper returns -ENOENT, which is what the kernel's
test_run reports too. What programs tried to output is kept in `attempts` (shown by `dump()`), which
changes no result.

A declared max_entries of 0 means one slot per possible CPU: libbpf sets that before creating the map
(and KernelMap.create does the same); the kernel itself refuses 0.
"""

from __future__ import annotations

import errno
from collections import deque
from dataclasses import dataclass, field

from ...errors import ENOTSUPP
from ...isa.maptypes import BPF_F_PRESERVE_ELEMS, MapSpec
from .fdmaps import _FdArray

BPF_F_INDEX_MASK = 0xFFFFFFFF
BPF_F_CURRENT_CPU = BPF_F_INDEX_MASK
BPF_F_CTXLEN_MASK = 0xFFFFF << 32
KEPT_RECORDS = 4096  # records an event keeps (the oldest are dropped, as a consumer that kept up would)


PERF_HEADER_SIZE = 8  # struct perf_event_header before each sample


def sample_size(raw: int) -> int:
    """Bytes a PERF_SAMPLE_RAW sample of `raw` bytes takes in the ring: the header, then a u32 size and the
    data, padded to 8."""
    return PERF_HEADER_SIZE + ((raw + 4 + 7) & ~7)


@dataclass(eq=False)
class PerfEvent:
    """A BPF_OUTPUT perf event opened on `cpu` (perf_event_open(PERF_TYPE_SOFTWARE,
    PERF_COUNT_SW_BPF_OUTPUT, pid -1, cpu)), to put in a slot: `map.set(cpu, PerfEvent(cpu))`.

    `ring_size` is the data area a consumer mapped (libbpf's perf_buffer maps some pages per CPU): samples
    that no longer fit are lost (-ENOSPC), and with 0 (never mapped) every output is. None: a consumer that
    keeps up, nothing is lost (the last KEPT_RECORDS samples are kept here)."""

    cpu: int
    ring_size: int | None = None
    records: deque = field(default_factory=lambda: deque(maxlen=KEPT_RECORDS))
    used: int = 0  # ring bytes taken (nobody consumes them)
    lost: int = 0

    @property
    def name(self) -> str:
        return f"perf event on cpu {self.cpu}"

    def write(self, sample: bytes) -> int:
        """perf_event_output: 0, or -ENOSPC when the ring has no room (the sample counts as lost)."""
        size = sample_size(len(sample))
        if self.ring_size is not None and self.used + size > self.ring_size:
            self.lost += 1
            return -errno.ENOSPC
        self.used += size
        self.records.append(bytes(sample))
        return 0


class PerfEventArrayMap(_FdArray):
    extra_flags = BPF_F_PRESERVE_ELEMS

    def __init__(self, mapdef: MapSpec, num_cpus: int):
        super().__init__(mapdef, num_cpus, mapdef.max_entries or num_cpus)
        self.attempts: deque = deque(maxlen=KEPT_RECORDS)  # (index, cpu, result, record)

    def _accepts(self, obj):
        return 0 if isinstance(obj, PerfEvent) else errno.EBADF  # perf_event_get: not a perf event file

    def _sys_lookup(self, key):
        return -ENOTSUPP, None  # no map_fd_sys_lookup_elem for perf event arrays

    def output(self, flags: int, cpu: int, record: bytes) -> int:
        """__bpf_perf_event_output, after the helper checked its flags: 0 or -errno."""
        index = flags & BPF_F_INDEX_MASK
        if index == BPF_F_CURRENT_CPU:
            index = cpu
        result = self._output(index, cpu, record)
        self.attempts.append((index, cpu, result, record))
        return result

    def _output(self, index: int, cpu: int, record: bytes) -> int:
        if index >= self.max_entries:
            return -errno.E2BIG
        event = self.object_at(index)
        if event is None:
            return -errno.ENOENT
        if event.cpu != cpu:  # the event must be the one of the CPU the program runs on
            return -errno.EOPNOTSUPP
        return event.write(record)

    def dump(self) -> dict:
        out = super().dump()
        out["attempts"] = [{"index": index, "cpu": cpu, "result": result, "data": record.hex()}
                           for index, cpu, result, record in self.attempts]
        return out

    def _items(self):
        for index in sorted(self._slots):  # the dump shows the filled slots (the syscall cannot)
            yield index.to_bytes(4, "little"), self._slots[index].to_bytes(4, "little")
