"""What every interpreter map shares: the syscall face (the `BpfMap` protocol, with the permission and flag
checks kernel/bpf/syscall.c makes before a map's own code runs), the program face the helpers call, and
dump/preload.

Map operations return 0 or a negative errno, as the kernel's map_ops do; the syscall face turns a failure
into `MapError(errno)`, the program face hands the number to the program as bpf_map_*_elem does.
"""

from __future__ import annotations

import errno
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ...errors import ENOTSUPP, BpforgeError
from ...isa.maptypes import (
    BPF_ANY, BPF_F_LOCK, BPF_F_RDONLY, BPF_F_RDONLY_PROG, BPF_F_WRONLY, BPF_F_WRONLY_PROG, MapError,
    check_value_size, map_errno_text, map_type_name, round8, split_cpu_values,
)
from ...isa.numbers import M64


class Unlisted:
    """A mixin for map types whose keys bpf() does not walk (BPF_MAP_GET_NEXT_KEY is ENOTSUPP): ring
    buffers, socket storage."""

    def keys(self):
        self._readable("get_next_key")
        raise self._error(ENOTSUPP, "get_next_key")

    def _keys(self):
        return []

    def _next_key(self, key):
        raise self._error(ENOTSUPP, "get_next_key")


class VmMap(ABC):
    """An interpreter map. Subclasses implement the `_sys_*` operations (syscall semantics) and the `prog_*`
    ones (helper semantics); this class adds the checks common to all maps and the tooling.

    `syscall_cpu` is the CPU the Python side runs on (0 unless set): it matters to hash maps, whose free
    lists and LRU lists are per CPU (the kernel differential tests run their syscalls on that CPU)."""

    percpu = False
    map_extra = 0  # what the map was created with (bloom filters and arenas use it; others must have 0)

    def __init__(self, name: str, type_id: int, key_size: int, value_size: int, max_entries: int, flags: int,
                 num_cpus: int):
        self.name = name
        self.type = type_id
        self.type_name = map_type_name(type_id)
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.num_cpus = num_cpus
        self.syscall_cpu = 0
        self.frozen = False
        self._iteration_key: bytearray | None = None

    # ---- the BpfMap protocol (what bpf(BPF_MAP_*_ELEM) does) ---------------------------------------------

    @property
    def syscall_value_size(self) -> int:
        """Bytes of a value through the syscall: every CPU's value, each rounded up to 8, for per-CPU maps."""
        return self.num_cpus * round8(self.value_size) if self.percpu else self.value_size

    @property
    def readonly_prog(self) -> bool:
        """Programs may not write this map (BPF_F_RDONLY_PROG, e.g. .rodata): its values are read-only memory
        to them. Freezing is a different thing: it stops only the syscall side."""
        return bool(self.flags & BPF_F_RDONLY_PROG)

    def lookup(self, key: bytes) -> bytes | None:
        """The value at `key` (per-CPU maps: all CPUs' values), or None where the kernel says ENOENT."""
        self._readable("lookup")
        err, value = self._sys_lookup(self._key(key))
        if err == -errno.ENOENT:
            return None
        if err:
            raise self._error(-err, "lookup")
        return value

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """BPF_MAP_UPDATE_ELEM. EPERM when the map is frozen or BPF_F_RDONLY; EINVAL for BPF_F_LOCK (none of
        our maps holds a bpf_spin_lock) and for a key or value of the wrong length."""
        self._writable("update")
        self._update(key, value, flags)

    def delete(self, key: bytes) -> None:
        self._writable("delete")
        err = self._sys_delete(self._key(key))
        if err:
            raise self._error(-err, "delete")

    def keys(self) -> Iterator[bytes]:
        """Every key in BPF_MAP_GET_NEXT_KEY order, as a snapshot taken now (the kernel walks the live map,
        so changing it mid-walk may restart or skip there; here it changes nothing)."""
        self._readable("get_next_key")
        return iter(self._keys())

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs in key order; keys without a value (an empty prog_array slot) are skipped."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def next_key(self, key: bytes | None) -> bytes | None:
        """BPF_MAP_GET_NEXT_KEY: the key after `key` (None: the first), None at the end (ENOENT). A key that
        is not in the map gives the first key for hash maps and tries, as in the kernel."""
        self._readable("get_next_key")
        return self._next_key(None if key is None else self._key(key))

    def freeze(self) -> None:
        """BPF_MAP_FREEZE: from now on the syscall side may not write (programs still may). Freezing again
        is EPERM, not EBUSY: map_freeze checks write permission first, which a frozen map has lost."""
        self._writable("freeze")
        self.frozen = True

    def cpu_values(self, value: bytes) -> list[bytes]:
        """A syscall value split into each CPU's `value_size` bytes (one item for other maps)."""
        if not self.percpu:
            return [value]
        return split_cpu_values(value, self.value_size, self.num_cpus)

    def iteration_key(self) -> bytearray:
        """The one buffer bpf_for_each_map_elem shows its callback each key in (mapped once per map, so that
        iterating makes no new memory)."""
        if self._iteration_key is None:
            self._iteration_key = bytearray(self.key_size)
        return self._iteration_key

    def __len__(self) -> int:
        """Elements present (an array's are all there)."""
        return sum(1 for _ in self._keys())

    # ---- the program side (what the helpers do) ----------------------------------------------------------

    def prog_lookup(self, key: bytes, cpu: int) -> Any:
        """bpf_map_lookup_elem: the element's live value storage (for per-CPU maps `cpu`'s), or None."""
        raise self._prog_refused("bpf_map_lookup_elem")

    def prog_update(self, key: bytes, value: bytes, flags: int, cpu: int) -> int:
        """bpf_map_update_elem: 0 or -errno."""
        raise self._prog_refused("bpf_map_update_elem")

    def prog_delete(self, key: bytes, cpu: int = 0) -> int:
        """bpf_map_delete_elem: 0 or -errno. `cpu` matters to hash maps (the freed element goes onto that
        CPU's free list, whence that CPU's next insert takes it)."""
        raise self._prog_refused("bpf_map_delete_elem")

    # ---- dump and preload ---------------------------------------------------------------------------------

    def dump(self) -> dict:
        """The map as JSON-friendly data (`bpforge run --dump-maps`): keys and values in hex, per-CPU values
        one per CPU (padding dropped). Its "entries" list is what `load_entries` reads back."""
        return {**self._header(), "entries": [self._dump_entry(k, v) for k, v in self._items()]}

    def load_entries(self, entries: Iterable[Mapping]) -> None:
        """Preload entries ({"key": hex, "value": hex}, per-CPU maps also {"key": hex, "values": [hex per
        CPU]}) as BPF_ANY updates made before any program runs: they may fill a map that is frozen."""
        for number, entry in enumerate(entries):
            try:
                if not isinstance(entry, Mapping) or "key" not in entry:
                    raise BpforgeError('an entry is an object with "key" and "value" (or per-CPU "values")')
                key = _hex(entry["key"], "key")
                value = self._entry_value(entry)
                self._update(key, value, BPF_ANY)
            except MapError as err:
                raise MapError(err.errno, f"entry {number}: {err.message}") from None
            except BpforgeError as err:
                raise BpforgeError(f"map '{self.name}': entry {number}: {err.message}") from None

    def _entry_value(self, entry: Mapping) -> bytes:
        if "values" in entry and self.percpu:
            values = entry["values"]
            if not isinstance(values, list) or len(values) != self.num_cpus:
                raise BpforgeError(f'"values" must list one hex value per CPU ({self.num_cpus})')
            step = round8(self.value_size)
            out = b""
            for cpu, text in enumerate(values):
                one = _hex(text, f"values[{cpu}]")
                if len(one) not in (self.value_size, step):
                    raise BpforgeError(f"values[{cpu}] must be {self.value_size} bytes, got {len(one)}")
                out += one.ljust(step, b"\0")
            return out
        if "value" not in entry:
            raise BpforgeError('entry has no "value"')
        return _hex(entry["value"], "value")

    def _header(self) -> dict:
        return {"name": self.name, "type": self.type_name, "key_size": self.key_size,
                "value_size": self.value_size, "max_entries": self.max_entries, "flags": self.flags}

    def _dump_entry(self, key: bytes, value: bytes) -> dict:
        if self.percpu:
            return {"key": key.hex(), "values": [v.hex() for v in self.cpu_values(value)]}
        return {"key": key.hex(), "value": value.hex()}

    def _items(self) -> Iterator[tuple[bytes, bytes]]:
        # Dump ignores BPF_F_WRONLY: it is the interpreter looking, not a syscall.
        for key in self._keys():
            err, value = self._sys_lookup(key)
            if not err:
                yield key, value

    # ---- what subclasses implement -----------------------------------------------------------------------

    @abstractmethod
    def _sys_lookup(self, key: bytes) -> tuple[int, bytes | None]:
        ...

    @abstractmethod
    def _sys_update(self, key: bytes, value: bytes, flags: int) -> int:
        ...

    @abstractmethod
    def _sys_delete(self, key: bytes) -> int:
        ...

    @abstractmethod
    def _keys(self) -> list[bytes]:
        ...

    def _next_key(self, key: bytes | None) -> bytes | None:
        keys = self._keys()
        if key is None or key not in keys:
            return keys[0] if keys else None
        at = keys.index(key) + 1
        return keys[at] if at < len(keys) else None

    # ---- shared checks -----------------------------------------------------------------------------------

    def _update(self, key: bytes, value: bytes, flags: int) -> None:
        key = self._key(key)
        value = bytes(value)
        check_value_size(self.name, value, self.value_size, self.num_cpus if self.percpu else None)
        if flags & BPF_F_LOCK:  # syscall.c refuses it for a map whose value holds no bpf_spin_lock
            raise self._error(errno.EINVAL, "update")
        err = self._sys_update(key, value, flags & M64)
        if err:
            raise self._error(-err, "update")

    def _key(self, key: bytes) -> bytes:
        key = bytes(key)
        if len(key) != self.key_size:
            raise MapError(errno.EINVAL, f"map '{self.name}': key must be {self.key_size} bytes, got {len(key)}")
        return key

    def _readable(self, op: str) -> None:
        if self.flags & BPF_F_WRONLY:
            raise self._error(errno.EPERM, op)

    def _writable(self, op: str) -> None:
        # map_get_sys_perms(): a frozen map's fd loses FMODE_CAN_WRITE, as does one made with BPF_F_RDONLY.
        if self.frozen or self.flags & BPF_F_RDONLY:
            raise self._error(errno.EPERM, op)

    def _error(self, err: int, op: str) -> MapError:
        return MapError(err, f"map '{self.name}' ({self.type_name}): {op}: {map_errno_text(err)}")

    def _prog_refused(self, helper: str) -> MapError:
        return MapError(errno.EINVAL, f"map '{self.name}' ({self.type_name}): {helper} is not allowed on this map "
                                      "type (the verifier refuses such a program)")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, {self.type_name}, key={self.key_size}, "
                f"value={self.value_size}, entries={self.max_entries})")


def _hex(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise BpforgeError(f"{what} must be a hex string")
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise BpforgeError(f"{what} is not hex: {text!r}") from None



def check_create(name: str, type_name: str, ok: bool, why: str, err: int = errno.EINVAL) -> None:
    """Refuse a definition the kernel's map_alloc_check would refuse (BPF_MAP_CREATE fails with `err`)."""
    if not ok:
        raise MapError(err, f"cannot create map '{name}' ({type_name}): {why}")


def check_access_flags(name: str, type_name: str, flags: int, allowed: int) -> None:
    """The flag checks every map type makes: only its own flags, and not both read-only and write-only."""
    check_create(name, type_name, not flags & ~allowed, f"flags {flags & ~allowed:#x} are not valid for this type")
    both = BPF_F_RDONLY_PROG | BPF_F_WRONLY_PROG
    check_create(name, type_name, flags & both != both, "BPF_F_RDONLY_PROG and BPF_F_WRONLY_PROG together")
    both = BPF_F_RDONLY | BPF_F_WRONLY
    check_create(name, type_name, flags & both != both, "BPF_F_RDONLY and BPF_F_WRONLY together")


class PerCpuValue:
    """One element of a per-CPU map: a value per CPU. `values[cpu]` is what a program on that CPU points
    to (value_size bytes); `pads[cpu]` holds the bytes that round it up to 8, which the syscall copies in
    and out (bpf_long_memcpy of round_up(value_size, 8)) but no program can reach."""

    __slots__ = ("pads", "values")

    def __init__(self, num_cpus: int, value_size: int):
        self.values = [bytearray(value_size) for _ in range(num_cpus)]
        self.pads = [bytes(round8(value_size) - value_size)] * num_cpus

    def syscall_bytes(self) -> bytes:
        return b"".join(bytes(v) + p for v, p in zip(self.values, self.pads))

    def set_all(self, value: bytes) -> None:
        """The syscall's copy: every CPU's slot, padding included."""
        size = len(self.values[0])
        step = round8(size)
        for cpu, storage in enumerate(self.values):
            storage[:] = value[cpu * step:cpu * step + size]
            self.pads[cpu] = value[cpu * step + size:(cpu + 1) * step]

    def set_one(self, cpu: int, value: bytes) -> None:
        """A program's copy (copy_map_value): value_size bytes into its own CPU's slot."""
        self.values[cpu][:] = value
