"""The interpreter's address space: regions of bytes at synthetic 64-bit addresses, bounds-checked.

Region i lives at `(i + 1) << 32`: an address names its region by its high half and the offset by its low
half, so translating is two shifts and a bounds check, and pointer arithmetic is plain integer arithmetic
as on real hardware. An address below a region's start or past its end lands outside every valid window
and faults, naming the instruction, the region, the offset and the size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BpforgeError

REGION_SHIFT = 32
OFFSET_MASK = (1 << REGION_SHIFT) - 1


class VmFault(BpforgeError):
    """A program did something the machine refuses at run time: bad memory access, unknown helper, too
    deep calls, budget exhausted. `where.insn` is the slot."""


@dataclass
class Region:
    """Bytes a program may address. Accesses must fall in [lo, hi) of `buf` (the packet's window moves with
    bpf_xdp_adjust_head/tail/meta); `writable` False for read-only data such as .rodata or a function."""

    name: str
    buf: bytearray
    base: int
    writable: bool = True
    lo: int = 0
    hi: int | None = None  # None: the whole buffer
    # Context fields whose loads the kernel rewrites: `pointers` (offset -> value) give a 64-bit pointer
    # (data/data_end as the verifier converts them); `computed` (offset -> value) a field whose value follows
    # the machine's state (skb->len), read like bytes holding it (narrow loads take its low bytes).
    pointers: dict[int, Callable[[], int]] | None = None
    computed: dict[int, Callable[[], int]] | None = None

    def limit(self) -> int:
        return len(self.buf) if self.hi is None else self.hi


class Memory:
    def __init__(self) -> None:
        self.regions: list[Region] = []
        self._by_buffer: dict[int, Region] = {}  # id(buffer) -> region, so a map value maps once

    def map(self, buf: bytearray, name: str, *, writable: bool = True) -> Region:
        """The region holding `buf`, mapping it on first use (a map value looked up twice: one region)."""
        region = self._by_buffer.get(id(buf))
        if region is not None and region.buf is buf:
            return region
        region = Region(name, buf, (len(self.regions) + 1) << REGION_SHIFT, writable)
        self.regions.append(region)
        self._by_buffer[id(buf)] = region
        return region

    def reserve(self, name: str) -> Region:
        """An address that names something but holds no bytes (a map handle, a function): any access faults."""
        return self.map(bytearray(), name, writable=False)

    def region_at(self, addr: int) -> Region | None:
        index = (addr >> REGION_SHIFT) - 1
        return self.regions[index] if 0 <= index < len(self.regions) else None

    def translate(self, addr: int, size: int, *, write: bool = False) -> tuple[Region, int]:
        region = self.region_at(addr)
        offset = addr & OFFSET_MASK
        if region is None:
            raise VmFault(f"invalid {'write' if write else 'read'} of {size} bytes at {addr:#x}: no memory there")
        if not region.lo <= offset or offset + size > region.limit():
            raise VmFault(f"invalid {'write' if write else 'read'} of {size} bytes at offset "
                          f"{offset - region.lo} of {region.name} (valid: 0..{region.limit() - region.lo})")
        if write and not region.writable:
            raise VmFault(f"write of {size} bytes to read-only {region.name} at offset {offset - region.lo}")
        return region, offset

    def load(self, addr: int, size: int) -> int:
        region, offset = self.translate(addr, size)
        if region.pointers is not None and offset in region.pointers:
            return region.pointers[offset]()
        if region.computed is not None:
            for start, value in region.computed.items():
                if start <= offset < start + 4:
                    shift = 8 * (offset - start)
                    return (value() >> shift) & ((1 << (8 * size)) - 1)
        return int.from_bytes(region.buf[offset:offset + size], "little")

    def store(self, addr: int, size: int, value: int) -> None:
        region, offset = self.translate(addr, size, write=True)
        region.buf[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def read(self, addr: int, size: int) -> bytes:
        region, offset = self.translate(addr, size)
        return bytes(region.buf[offset:offset + size])

    def write(self, addr: int, data: bytes) -> None:
        region, offset = self.translate(addr, len(data), write=True)
        region.buf[offset:offset + len(data)] = data
