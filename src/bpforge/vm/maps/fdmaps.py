"""Maps whose values are other objects: prog_array (for bpf_tail_call), array_of_maps and hash_of_maps.

Through bpf() such a value is a u32: a file descriptor going in, an object id coming out. Here both are a
*handle*, a number the map hands out for an object registered with it (`register(obj)`; handles count
from 1 and each map has its own). So `update(key, handle)` stores the object, `lookup(key)` gives the
handle back, and an unknown handle is EBADF as a closed fd is. `set(key, obj)` does both steps.

A program object is opaque here: whatever the interpreter tail-calls into (`prog_at` returns it). The
kernel also refuses a program of another type than the array's first one (bpf_prog_array_compatible);
objects carry no type here, so that check is the caller's.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from ...isa.maptypes import (
    BPF_ANY, BPF_F_ACCESS_MASK, BPF_F_INNER_MAP, BPF_F_NUMA_NODE, BPF_F_RDONLY_PROG, BPF_F_WRONLY_PROG,
    MAP_IN_MAP_TYPES, MapSpec,
)
from .array import ArrayMap, check_array, index_of
from .base import VmMap, check_create
from .hash import HashMap
from .limits import check_memory

_ARRAY_TYPES = ("array", "percpu_array")  # inner maps whose max_entries must match (array_map_meta_equal)
# How a map of maps makes its inner template: the package's factory, which knows every map type (passed in,
# so that this module need not import the package that imports it).
MakeMap = Callable[[MapSpec], VmMap]


class Handles:
    """Objects registered with one map, by handle."""

    def __init__(self) -> None:
        self._objects: dict[int, object] = {}
        self._ids: dict[int, int] = {}  # id(obj) -> handle

    def register(self, obj: object) -> int:
        handle = self._ids.get(id(obj))
        if handle is None or self._objects[handle] is not obj:
            handle = len(self._objects) + 1
            self._objects[handle] = obj
            self._ids[id(obj)] = handle
        return handle

    def get(self, handle: int) -> object | None:
        return self._objects.get(handle)


def _name(obj: object) -> str:
    """How a dump names what a slot holds: an inner map by its name; a program (opaque here: whatever the
    interpreter tail-calls into, a VmProgram in practice) by its `name` if it has one."""
    if isinstance(obj, VmMap):
        return obj.name
    return str(getattr(obj, "name", None) or repr(obj))


class _FdArray(ArrayMap):
    """The array of objects behind prog_array, array_of_maps and perf_event_array (fd_array_map_*): slots
    hold handles. Key and value are 4 bytes whatever the definition says, as KernelMap.create makes them."""

    extra_flags = 0  # creation flags this type allows beyond the common ones

    def __init__(self, mapdef: MapSpec, num_cpus: int, max_entries: int | None = None):
        entries = mapdef.max_entries if max_entries is None else max_entries
        check_create(mapdef.name, mapdef.type_name, not mapdef.flags & (BPF_F_RDONLY_PROG | BPF_F_WRONLY_PROG),
                     "BPF_F_RDONLY_PROG/BPF_F_WRONLY_PROG are not for maps of objects")
        check_array(mapdef, 4, 4, BPF_F_NUMA_NODE | BPF_F_ACCESS_MASK | self.extra_flags, entries)
        check_memory(mapdef.name, mapdef.type_name, entries * 8)  # a pointer per slot
        VmMap.__init__(self, mapdef.name, mapdef.type, 4, 4, entries, mapdef.flags, num_cpus)
        self._slots: dict[int, int] = {}  # index -> handle, for the filled slots
        self.handles = Handles()

    def register(self, obj: object) -> int:
        return self.handles.register(obj)

    def set(self, index: int, obj: object) -> None:
        """Put `obj` in slot `index` (an update with its handle)."""
        self.update(index.to_bytes(4, "little"), self.register(obj).to_bytes(4, "little"))

    def _accepts(self, obj: object) -> int:
        """0, or the errno with which the kernel refuses this object in a slot."""
        return 0

    def _sys_lookup(self, key):
        handle = self._slots.get(index_of(key))
        return (-errno.ENOENT, None) if handle is None else (0, handle.to_bytes(4, "little"))

    def _sys_update(self, key, value, flags):
        # bpf_fd_array_map_update_elem: only BPF_ANY, then the index, then the fd.
        if flags != BPF_ANY:
            return -errno.EINVAL
        index = index_of(key)
        if index >= self.max_entries:
            return -errno.E2BIG
        handle = int.from_bytes(value, "little")
        obj = self.handles.get(handle)
        if obj is None:
            return -errno.EBADF
        err = self._accepts(obj)
        if err:
            return -err
        self._slots[index] = handle
        return 0

    def _sys_delete(self, key):
        index = index_of(key)
        if index >= self.max_entries:
            return -errno.E2BIG
        return 0 if self._slots.pop(index, None) is not None else -errno.ENOENT

    def object_at(self, index: int) -> object | None:
        handle = self._slots.get(index)
        return None if handle is None else self.handles.get(handle)

    def _dump_entry(self, key, value):
        return {"key": key.hex(), "value": value.hex(), "target": _name(self.object_at(index_of(key)))}

    def prog_lookup(self, key, cpu):
        raise self._prog_refused("bpf_map_lookup_elem")

    def prog_update(self, key, value, flags, cpu):
        raise self._prog_refused("bpf_map_update_elem")

    def prog_delete(self, key, cpu=0):
        raise self._prog_refused("bpf_map_delete_elem")

    def set_initial(self, data: bytes) -> None:
        check_create(self.name, self.type_name, False, "maps of objects have no initial contents")


class ProgArrayMap(_FdArray):
    """BPF_MAP_TYPE_PROG_ARRAY: `prog_at(index)` is what bpf_tail_call jumps to (None: the call falls
    through). Programs cannot look it up or change it."""

    def prog_at(self, index: int) -> object | None:
        return self.object_at(index)


def _meta_equal(template: VmMap, inner: object) -> bool:
    """bpf_map_meta_equal (and array_map_meta_equal): an inner map must look like the template."""
    if not isinstance(inner, VmMap):
        return False
    same = (inner.type == template.type and inner.key_size == template.key_size
            and inner.value_size == template.value_size and inner.flags == template.flags)
    if same and template.type_name in _ARRAY_TYPES and not template.flags & BPF_F_INNER_MAP:
        same = inner.max_entries == template.max_entries
    return same


def _template(mapdef: MapSpec, make_map: MakeMap) -> VmMap:
    inner = mapdef.inner
    check_create(mapdef.name, mapdef.type_name, inner is not None, "a map of maps needs its inner map's definition")
    check_create(mapdef.name, mapdef.type_name, inner.type_name not in MAP_IN_MAP_TYPES,
                 "maps of maps of maps are not supported by the kernel")
    return make_map(inner)


class ArrayOfMapsMap(_FdArray):
    """BPF_MAP_TYPE_ARRAY_OF_MAPS: `prog_lookup` gives the inner VmMap itself (the program gets a map
    pointer, not a value pointer), or None for an empty slot."""

    def __init__(self, mapdef: MapSpec, num_cpus: int, make_map: MakeMap):
        super().__init__(mapdef, num_cpus)
        self.template = _template(mapdef, make_map)

    def _accepts(self, obj):
        return 0 if _meta_equal(self.template, obj) else errno.EINVAL

    def prog_lookup(self, key, cpu):
        index = index_of(key)
        return self.object_at(index) if index < self.max_entries else None


class HashOfMapsMap(HashMap):
    """BPF_MAP_TYPE_HASH_OF_MAPS: a hash map whose values are handles of inner maps; `prog_lookup` gives
    the inner VmMap."""

    def __init__(self, mapdef: MapSpec, num_cpus: int, make_map: MakeMap):
        super().__init__(mapdef, num_cpus, value_size=4)
        self.handles = Handles()
        self.template = _template(mapdef, make_map)

    def register(self, obj: object) -> int:
        return self.handles.register(obj)

    def set(self, key: bytes, obj: object, flags: int = BPF_ANY) -> None:
        self.update(key, self.register(obj).to_bytes(4, "little"), flags)

    def _sys_update(self, key, value, flags):
        # bpf_fd_htab_map_update_elem resolves the fd before the hash map sees the flags.
        obj = self.handles.get(int.from_bytes(value, "little"))
        if obj is None:
            return -errno.EBADF
        if not _meta_equal(self.template, obj):
            return -errno.EINVAL
        return super()._sys_update(key, value, flags)

    def _dump_entry(self, key, value):
        return {"key": key.hex(), "value": value.hex(), "target": _name(self.handles.get(int.from_bytes(value, "little")))}

    def prog_lookup(self, key, cpu):
        elem = self._elems.get(bytes(key))
        return None if elem is None else self.handles.get(int.from_bytes(elem.value, "little"))

    def prog_update(self, key, value, flags, cpu):
        raise self._prog_refused("bpf_map_update_elem")

    def prog_delete(self, key, cpu=0):
        raise self._prog_refused("bpf_map_delete_elem")
