"""The user-space mapping of an arena map, made as libbpf makes it right after creating the map
(bpf_object__create_maps): the whole arena, shared, read-write, at map_extra when the definition gives
one, else where the kernel's arena_get_unmapped_area chooses. The first mmap() fixes the arena's
user_vm_start, which the verifier needs before any program using the arena loads.

One deliberate difference from libbpf: at map_extra we ask for MAP_FIXED_NOREPLACE, not MAP_FIXED, so a
map_extra that overlaps memory of this process fails with EEXIST instead of silently replacing it.

Touching a page through the mapping allocates it in the arena (arena_vm_fault) — unless the arena has
BPF_F_SEGV_ON_FAULT, where it kills the process with SIGSEGV; such accesses are refused here instead.
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass

from ..errors import errno_text
from ..isa.maptypes import BPF_F_SEGV_ON_FAULT, MapError

PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_SHARED = 0x01
MAP_FIXED_NOREPLACE = 0x100000
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)


@dataclass(eq=False)
class ArenaMapping:
    """An arena mapped into this process: `address` is the arena's user_vm_start, `size` its bytes."""

    name: str
    address: int
    size: int
    segv_on_fault: bool

    def read(self, offset: int, size: int) -> bytes:
        """The bytes at user_vm_start + `offset` (faulting in, so allocating, the pages they lie on)."""
        return ctypes.string_at(self._at(offset, size), size)

    def write(self, offset: int, data: bytes) -> None:
        """Write `data` at user_vm_start + `offset` (faulting in the pages it lies on)."""
        data = bytes(data)
        ctypes.memmove(self._at(offset, len(data)), data, len(data))

    def _at(self, offset: int, size: int) -> int:
        if self.address == 0:
            raise MapError(errno.EBADF, f"arena '{self.name}' is no longer mapped")
        if offset < 0 or size < 0 or offset + size > self.size:
            raise MapError(errno.EFAULT, f"arena '{self.name}': bytes {offset}..{offset + size} lie outside its "
                                         f"{self.size}-byte mapping")
        if self.segv_on_fault and size:
            raise MapError(errno.EFAULT, f"arena '{self.name}' has BPF_F_SEGV_ON_FAULT: user space touching a page "
                                         "the program did not allocate would be killed by SIGSEGV")
        return self.address + offset

    def close(self) -> None:
        if self.address:
            _libc.munmap(self.address, self.size)
            self.address = 0


def map_arena(name: str, fd: int, size: int, map_extra: int, flags: int) -> ArenaMapping:
    """mmap() the arena behind `fd` (`size` bytes: max_entries pages) as libbpf does. MapError(errno) when
    the kernel refuses (EINVAL, EBUSY, E2BIG from arena_map_mmap / arena_get_unmapped_area) or map_extra
    overlaps an existing mapping (EEXIST)."""
    fixed = MAP_FIXED_NOREPLACE if map_extra else 0
    address = _libc.mmap(map_extra or None, size, PROT_READ | PROT_WRITE, MAP_SHARED | fixed, fd, 0)
    if address is None or address == _MAP_FAILED:
        err = ctypes.get_errno()
        where = f" at {map_extra:#x}" if map_extra else ""
        raise MapError(err, f"cannot mmap arena '{name}' ({size} bytes{where}): {errno_text(err)}")
    if map_extra and address != map_extra:  # a kernel without MAP_FIXED_NOREPLACE takes it as a hint
        _libc.munmap(address, size)
        raise MapError(errno.EEXIST, f"cannot mmap arena '{name}' at {map_extra:#x}: the address is taken")
    return ArenaMapping(name, address, size, bool(flags & BPF_F_SEGV_ON_FAULT))


__all__ = ["ArenaMapping", "map_arena"]
