"""BPF ring buffers (kernel/bpf/ringbuf.c), as a producer sees them.

max_entries is the data area in bytes: a power of 2 and a multiple of the page size. Each record takes an
8-byte header plus its data, rounded up to 8 (`round_up(size + 8, 8)` bytes of ring). A reservation fails
(reserve gives NULL, output -EAGAIN) when the producer would get `size - 1` or more bytes ahead of the
consumer, or of the oldest record still reserved (__bpf_ringbuf_reserve's two checks). Discarded records
keep their space until a consumer passes them, as in the kernel.

Records are kept as separate buffers rather than bytes of one ring: a program writes into the bytearray
`reserve` returned, and only positions are accounted. Nobody consumes during a run; `consume()` is the
user-space consumer (records then free their space), `records()` looks without consuming.
"""

from __future__ import annotations

import errno
import mmap

from ...errors import ENOTSUPP
from ...isa.maptypes import BPF_F_NUMA_NODE, MapSpec, MapError, round8
from .base import Unlisted, VmMap, check_create
from .limits import check_memory

HDR_SIZE = 8  # BPF_RINGBUF_HDR_SZ: u32 len (busy and discard bits on top), u32 page offset
MAX_RECORD = 0xFFFFFFFF // 4  # RINGBUF_MAX_RECORD_SZ
BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP = 1, 2
BPF_RB_AVAIL_DATA, BPF_RB_RING_SIZE, BPF_RB_CONS_POS, BPF_RB_PROD_POS = range(4)


class _Record:
    __slots__ = ("busy", "data", "discarded", "length", "pos")

    def __init__(self, pos: int, data: bytearray):
        self.pos, self.data = pos, data
        self.length = round8(len(data) + HDR_SIZE)
        self.busy, self.discarded = True, False


class RingBufMap(Unlisted, VmMap):
    def __init__(self, mapdef: MapSpec, num_cpus: int, page_size: int = mmap.PAGESIZE):
        size, name, type_name = mapdef.max_entries, mapdef.name, mapdef.type_name
        check_create(name, type_name, not mapdef.flags & ~BPF_F_NUMA_NODE, f"flags {mapdef.flags:#x}")
        check_create(name, type_name, size > 0 and size & (size - 1) == 0 and size % page_size == 0,
                     f"max_entries (the ring size) must be a power of 2 and a multiple of {page_size}, not {size}")
        check_memory(name, type_name, size + 3 * page_size)  # the data pages, the header and position pages
        # Key and value sizes are 0 for a ring buffer whatever the definition says (libbpf zeroes them).
        super().__init__(name, mapdef.type, 0, 0, size, mapdef.flags, num_cpus)
        self.mask = size - 1
        self.producer_pos = self.consumer_pos = self.pending_pos = 0
        self._records: list[_Record] = []  # in ring order; [_head:] not consumed yet
        self._head = 0
        self._pending = 0  # index of the record at pending_pos (len(_records): none)
        self._reserved: dict[int, _Record] = {}  # id(data) -> record, while busy

    # ---- the program side -----------------------------------------------------------------------------

    def reserve(self, size: int, flags: int = 0) -> bytearray | None:
        """bpf_ringbuf_reserve: a zeroed buffer of `size` bytes to fill, or None (NULL)."""
        if flags or size > MAX_RECORD:
            return None
        length = round8(size + HDR_SIZE)
        if length > self.mask + 1:
            return None
        self._advance_pending()
        new_pos = self.producer_pos + length
        if new_pos - self.consumer_pos > self.mask or new_pos - self.pending_pos > self.mask:
            return None
        record = _Record(self.producer_pos, bytearray(size))
        self.producer_pos = new_pos
        self._records.append(record)
        self._reserved[id(record.data)] = record
        return record.data

    def _advance_pending(self) -> None:
        # pending_pos moves over committed records up to the oldest one still reserved (or the producer).
        # Records already consumed were committed, so it never stops before the consumer position.
        i = max(self._pending, self._head)
        while i < len(self._records) and not self._records[i].busy:
            i += 1
        self._pending = i
        self.pending_pos = self._records[i].pos if i < len(self._records) else self.producer_pos

    def owns(self, buf: object) -> bool:
        """Whether `buf` is a reservation of this ring buffer not yet submitted or discarded."""
        record = self._reserved.get(id(buf))
        return record is not None and record.data is buf

    def submit(self, buf: bytearray, flags: int = 0) -> None:
        """bpf_ringbuf_submit: the record becomes visible to the consumer (the wakeup flags change nothing
        here: nobody waits)."""
        self._commit(buf).busy = False

    def discard(self, buf: bytearray, flags: int = 0) -> None:
        """bpf_ringbuf_discard: the record is skipped by the consumer."""
        record = self._commit(buf)
        record.busy, record.discarded = False, True

    def _commit(self, buf: bytearray) -> _Record:
        if not self.owns(buf):
            raise MapError(errno.EINVAL, f"ring buffer '{self.name}': submit or discard of a buffer it did not "
                                         "reserve, or committed already (the verifier refuses such a program)")
        return self._reserved.pop(id(buf))

    def output(self, data: bytes, flags: int = 0) -> int:
        """bpf_ringbuf_output: reserve, copy and submit; -EINVAL for unknown flags, -EAGAIN when full."""
        if flags & ~(BPF_RB_NO_WAKEUP | BPF_RB_FORCE_WAKEUP):
            return -errno.EINVAL
        buf = self.reserve(len(data))
        if buf is None:
            return -errno.EAGAIN
        buf[:] = data
        self.submit(buf)
        return 0

    def query(self, flags: int) -> int:
        """bpf_ringbuf_query: available data, ring size, consumer or producer position (0 otherwise)."""
        return {BPF_RB_AVAIL_DATA: self.producer_pos - self.consumer_pos, BPF_RB_RING_SIZE: self.mask + 1,
                BPF_RB_CONS_POS: self.consumer_pos, BPF_RB_PROD_POS: self.producer_pos}.get(flags, 0)

    # ---- the consumer ---------------------------------------------------------------------------------

    def records(self) -> list[bytes]:
        """Submitted records a consumer would read now, in order: up to the first one still reserved,
        discarded ones skipped. Nothing is consumed."""
        return [bytes(r.data) for r in self._readable_records() if not r.discarded]

    def consume(self) -> list[bytes]:
        """Like `records`, and give their space back (the consumer position moves past them)."""
        ready = self._readable_records()
        if ready:
            self._head += len(ready)
            self.consumer_pos = ready[-1].pos + ready[-1].length
            if self._head > 1024 and self._head * 2 > len(self._records):  # drop what is behind us
                del self._records[:self._head]
                self._pending = max(self._pending - self._head, 0)
                self._head = 0
        return [bytes(r.data) for r in ready if not r.discarded]

    def _readable_records(self) -> list[_Record]:
        out = []
        for record in self._records[self._head:]:
            if record.busy:
                break
            out.append(record)
        return out

    # ---- the syscall side: no element operations on a ring buffer -----------------------------------------

    def _sys_lookup(self, key):
        return -ENOTSUPP, None

    def _sys_update(self, key, value, flags):
        return -ENOTSUPP

    def _sys_delete(self, key):
        return -ENOTSUPP

    def __len__(self):
        return len(self.records())

    def dump(self) -> dict:
        return {**self._header(), "records": [r.hex() for r in self.records()],
                "producer_pos": self.producer_pos, "consumer_pos": self.consumer_pos}

    def load_entries(self, entries) -> None:
        raise self._error(ENOTSUPP, "preload")
