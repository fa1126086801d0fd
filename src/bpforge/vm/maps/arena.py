"""BPF arenas (kernel/bpf/arena.c): a sparse, page-granular memory shared by programs and user space.

The kernel keeps a 4 GiB kernel-side range: a program's arena pointer is dereferenced at kern_vm_start +
its low 32 bits (+ the instruction offset); user space sees the same pages at user_vm_start (map_extra) +
the same low 32 bits. Pages exist only once `bpf_arena_alloc_pages` allocated them (zeroed); a program's
access to a missing page does not fault — the kernel's exception fixup makes a load give 0 and drops a
store — and so it is here.

In the VM the arena is one region whose bytes are this map's pages (`ArenaSpace`); the arena pointer a
program casts to address space 0 (`addr_space_cast(r, 0, 1)`) becomes that region's address + the low 32
bits, so every later access lands on the right page. This is the only value that differs from the
kernel (where the cast leaves the low 32 bits alone); as1 pointers (user addresses) are the kernel's.

A loader maps the arena into user space as soon as it creates it (libbpf's bpf_object__create_maps, and
bpforge's kernel engine): that fixes user_vm_start, at map_extra or where the kernel's
arena_get_unmapped_area puts it. The VM has no address space to map into, so without map_extra it takes
the address that function derives from a fixed hint (`MMAP_HINT`), the kernel's from the process's
mmap layout: only such addresses differ between the engines. User space touching a page allocates it,
as the kernel's arena_vm_fault does; that is how a loader's copy of the __arena globals
(`set_initial`, at `elf.maps.arena_data_offset`) puts them on pages of their own.
"""

from __future__ import annotations

import errno

from ...elf.maps import arena_data_offset
from ...isa.maptypes import BPF_F_MMAPABLE, BPF_F_NO_USER_CONV, BPF_F_SEGV_ON_FAULT, MapError, MapSpec
from ...isa.numbers import PAGE_SIZE
from ..memory import VmFault
from .base import VmMap, check_create

# Where the VM's "mmap" of an arena without map_extra asks to be (any page-aligned user address would do;
# this one keeps the low 32 bits nonzero, as an address the kernel picks usually has them).
MMAP_HINT = 0x7F00_0010_0000
SPACE = 1 << 32  # the kernel-side range a program reaches (KERN_VM_SZ without its guard pages)
NUMA_NO_NODE = -1


class ArenaSpace:
    """The arena's 4 GiB as the bytes of a VM region: slices read zeros where no page is allocated, and
    writes to such pages are dropped (the kernel's fault fixup for arena accesses)."""

    def __init__(self, pages: dict[int, bytearray]):
        self.pages = pages

    def __len__(self) -> int:
        return SPACE

    def __getitem__(self, index: slice) -> bytes:
        start, stop, _ = index.indices(SPACE)
        out = bytearray()
        while start < stop:
            page, at = divmod(start, PAGE_SIZE)
            take = min(stop - start, PAGE_SIZE - at)
            buf = self.pages.get(page)
            out += buf[at:at + take] if buf is not None else bytes(take)
            start += take
        return bytes(out)

    def __setitem__(self, index: slice, data: bytes) -> None:
        start, stop, _ = index.indices(SPACE)
        data = bytes(data)
        pos = 0
        while start < stop:
            page, at = divmod(start, PAGE_SIZE)
            take = min(stop - start, PAGE_SIZE - at)
            buf = self.pages.get(page)
            if buf is not None:
                buf[at:at + take] = data[pos:pos + take]
            start += take
            pos += take


class ArenaMap(VmMap):
    """BPF_MAP_TYPE_ARENA: no keys or values for the syscall; pages for programs (and user space)."""

    def __init__(self, mapdef: MapSpec, num_cpus: int = 1) -> None:
        name, type_name, flags = mapdef.name, mapdef.type_name, mapdef.flags
        extra = mapdef.map_extra
        check_create(name, type_name, mapdef.key_size == 0 and mapdef.value_size == 0,
                     "key_size and value_size must be 0")
        check_create(name, type_name, mapdef.max_entries > 0, "max_entries (pages) must be positive")
        check_create(name, type_name, bool(flags & BPF_F_MMAPABLE), "BPF_F_MMAPABLE is required")
        check_create(name, type_name, not flags & ~(BPF_F_SEGV_ON_FAULT | BPF_F_MMAPABLE | BPF_F_NO_USER_CONV),
                     f"flags {flags:#x} are not valid for an arena")
        check_create(name, type_name, extra % PAGE_SIZE == 0, "map_extra (user_vm_start) must be page aligned")
        vm_range = mapdef.max_entries * PAGE_SIZE
        check_create(name, type_name, vm_range <= SPACE, f"{mapdef.max_entries} pages exceed 4 GiB", errno.E2BIG)
        check_create(name, type_name, extra >> 32 == (extra + vm_range - 1) >> 32,
                     "the user range would cross a 4 GiB boundary", errno.ERANGE)
        super().__init__(name, mapdef.type, 0, 0, mapdef.max_entries, flags, num_cpus)
        self.map_extra = extra
        # The loader's mmap() of the whole arena fixes user_vm_start (arena_map_mmap).
        self.user_vm_start = extra or _unmapped_area(MMAP_HINT, vm_range)
        self.user_vm_end = self.user_vm_start + vm_range
        # page number in the 4 GiB kernel-side range (the low 32 bits of its address / PAGE_SIZE) -> bytes
        self.pages: dict[int, bytearray] = {}
        self.space = ArenaSpace(self.pages)

    # ---- user space (the loader's mapping) --------------------------------------------------------------

    def set_initial(self, data: bytes) -> None:
        """The object's __arena globals, copied as libbpf copies them after mmap(): at
        `arena_data_offset` from user_vm_start, each page they touch faulted in."""
        offset = arena_data_offset(self.max_entries, len(data))
        if offset < 0:
            raise MapError(errno.E2BIG, f"arena '{self.name}': {self.max_entries} pages cannot hold "
                                        f"{len(data)} bytes of __arena globals")
        self.user_write(offset, data)

    def user_read(self, offset: int, size: int) -> bytes:
        """What user space reads at user_vm_start + `offset` (faulting in the pages it touches)."""
        return self.space[self._user_range(offset, size)]

    def user_write(self, offset: int, data: bytes) -> None:
        """User space writing `data` at user_vm_start + `offset` (faulting in the pages it touches)."""
        self.space[self._user_range(offset, len(data))] = data

    def _user_range(self, offset: int, size: int) -> slice:
        """The kernel-side bytes behind user bytes [offset, offset + size) of the mapping, each page there
        allocated as arena_vm_fault allocates it (BPF_F_SEGV_ON_FAULT: a SIGSEGV, refused here)."""
        if offset < 0 or size < 0 or offset + size > self.user_vm_end - self.user_vm_start:
            raise MapError(errno.EFAULT, f"arena '{self.name}': bytes {offset}..{offset + size} lie outside its "
                                         f"{self.user_vm_end - self.user_vm_start}-byte mapping")
        if self.flags & BPF_F_SEGV_ON_FAULT and size:
            # refused whatever the pages, as the kernel engine must (user space cannot tell which exist)
            raise MapError(errno.EFAULT, f"arena '{self.name}' has BPF_F_SEGV_ON_FAULT: user space touching a page "
                                         "the program did not allocate would be killed by SIGSEGV")
        for pgoff in range(offset // PAGE_SIZE, -(-(offset + size) // PAGE_SIZE)):
            self.pages.setdefault(self._page(pgoff), bytearray(PAGE_SIZE))
        start = (self.user_vm_start + offset) & 0xFFFFFFFF
        return slice(start, start + size)

    def direct_value_addr(self, offset: int) -> int:
        """What the verifier makes of a value load of the arena at `offset` (arena_map_direct_value_addr):
        the user address user_vm_start + offset, a plain number to the program. Up to the arena's end
        inclusive, as 6.18 checks it (later kernels refuse the end itself)."""
        if not 0 <= offset <= self.user_vm_end - self.user_vm_start:
            raise MapError(errno.ERANGE, f"invalid access to map value pointer, value_size=0 off={offset} "
                                         f"(arena '{self.name}' has {self.user_vm_end - self.user_vm_start} bytes)")
        return self.user_vm_start + offset

    # ---- the program side (kfuncs) ---------------------------------------------------------------------

    def _pgoff(self, uaddr: int) -> int:
        """compute_pgoff: the page's index in the arena."""
        return ((uaddr - self.user_vm_start) & 0xFFFFFFFF) // PAGE_SIZE

    def _page(self, pgoff: int) -> int:
        """Where the arena's page `pgoff` sits in the kernel-side range: kern_vm_start + its user address's
        low 32 bits."""
        return ((self.user_vm_start + pgoff * PAGE_SIZE) & 0xFFFFFFFF) // PAGE_SIZE

    def alloc_pages(self, uaddr: int, page_cnt: int) -> int:
        """arena_alloc_pages: the user address of `page_cnt` new zeroed pages (at `uaddr` if given, else at
        the lowest free run), or 0."""
        page_cnt_max = (self.user_vm_end - self.user_vm_start) // PAGE_SIZE
        if page_cnt > page_cnt_max:
            return 0
        if uaddr:
            if uaddr % PAGE_SIZE:
                return 0
            pgoff = self._pgoff(uaddr)
            if pgoff > page_cnt_max - page_cnt:
                return 0
            if any(self._page(p) in self.pages for p in range(pgoff, pgoff + page_cnt)):
                return 0
        else:
            pgoff = self._first_free(page_cnt, page_cnt_max)
            if pgoff is None:
                return 0
        for p in range(pgoff, pgoff + page_cnt):
            self.pages[self._page(p)] = bytearray(PAGE_SIZE)
        uaddr32 = (self.user_vm_start + pgoff * PAGE_SIZE) & 0xFFFFFFFF
        return (self.user_vm_start & ~0xFFFFFFFF) + uaddr32

    def _first_free(self, count: int, limit: int) -> int | None:
        run = 0
        for p in range(limit):
            run = run + 1 if self._page(p) not in self.pages else 0
            if run == count:
                return p - count + 1
        return None

    def free_pages(self, uaddr: int, page_cnt: int) -> None:
        """arena_free_pages: drop the pages from `uaddr` (its low 32 bits, page aligned down), clipped to
        the arena's end."""
        uaddr = uaddr & 0xFFFFFFFF & ~(PAGE_SIZE - 1)
        full = (self.user_vm_start & ~0xFFFFFFFF) + uaddr
        end = min(self.user_vm_end, full + page_cnt * PAGE_SIZE)
        if full >= end:
            return
        pgoff = self._pgoff(uaddr)
        for p in range(pgoff, pgoff + (end - full) // PAGE_SIZE):
            self.pages.pop(self._page(p), None)

    def prog_lookup(self, key: bytes, cpu: int = 0):
        return None  # programs reach an arena through its pages, not by key

    # ---- the syscall side: an arena has no elements ---------------------------------------------------

    def _sys_lookup(self, key: bytes) -> tuple[int, bytes | None]:
        return -errno.EINVAL, None  # arena_map_lookup_elem

    def _sys_update(self, key: bytes, value: bytes, flags: int) -> int:
        return -errno.EOPNOTSUPP

    def _sys_delete(self, key: bytes) -> int:
        return -errno.EOPNOTSUPP

    def _keys(self) -> list[bytes]:
        return []


def _unmapped_area(hint: int, length: int) -> int:
    """arena_get_unmapped_area for an area the mm layer found at `hint`: moved up to the next 4 GiB
    boundary when it would cross one (the low 32 bits of arena addresses must not wrap)."""
    if hint >> 32 == (hint + length - 1) >> 32:
        return hint
    return -(-hint // SPACE) * SPACE


def program_arena(machine) -> ArenaMap:
    """The arena of the running program (the kernel allows one per program)."""
    for vm_map in machine.program.maps:
        if isinstance(vm_map, ArenaMap):
            return vm_map
    raise VmFault("addr_space_cast insn can only be used in a program that has an associated arena")


def addr_space_cast(machine, imm: int, value: int) -> int:
    """`addr_space_cast(src, dst_as, src_as)` (imm = dst_as << 16 | src_as). To address space 1 (a user
    address, as the kernel's JIT computes it): user_vm_start's upper half and the low 32 bits, NULL kept
    NULL. To address space 0 (for access): the arena region's address + the low 32 bits (the kernel keeps
    the low 32 bits and adds kern_vm_start at each access)."""
    arena = program_arena(machine)
    low = value & 0xFFFFFFFF
    if imm == 1 << 16:
        return 0 if low == 0 else (arena.user_vm_start & ~0xFFFFFFFF) | low
    return machine.memory.map(arena.space, f"arena {arena.name}").base + low


__all__ = ["ArenaMap", "ArenaSpace", "PAGE_SIZE", "addr_space_cast", "program_arena"]
