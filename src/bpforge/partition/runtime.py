"""What a partitionable application imports, usable as plain Python.

Typed values are descriptors that know their size and their encoding (the bytes a BPF map holds, in host
order as bpf() copies them): `U8`, `U16`, `U32`, `U64`, `Bytes(n)` (fixed size, zero-padded) and
`Struct(name, field=descriptor, ...)` (C layout: natural alignment, tail padding), whose values are
namedtuples. `HashMap` and `ArrayMap` are dict-like maps that enforce those types and the kernel's rules
(a full HashMap refuses a new key with E2BIG, an ArrayMap has every index and no deletion). Unbacked, a map
lives in this process on the interpreter's model of the kernel map (vm.maps), so it behaves as the kernel's
does; `attach(kernel_map)` moves its contents into a real kernel map and from then on every operation goes
through bpf() to it, which is how the Python half and a BPF half share state. `@offload(hook=..., port=...)`
marks the per-packet handler for the partitioner and changes nothing else.
"""

from __future__ import annotations

import errno
import struct
import sys
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import BpforgeError
from ..isa.maptypes import BPF_ANY, MapError, MapSpec
from ..vm.maps import create_map

_ORDER = "<" if sys.byteorder == "little" else ">"  # map contents are in the host's byte order


class PartitionError(BpforgeError):
    """A partitionable application used the runtime wrongly (a value of the wrong type or size, a backing
    map of the wrong shape, a bad @offload)."""


class MissingKey(PartitionError, KeyError):
    """No element at that key: a BpforgeError, and a KeyError so dict idioms (`in`, `.get`) keep working."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.message


class MapFull(MapError):
    """A HashMap at max_entries refused a new key (E2BIG, as the kernel does)."""


# ---- typed values ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scalar:
    """An unsigned fixed-width integer of `size` bytes."""

    name: str
    size: int

    @property
    def align(self) -> int:
        return self.size

    @property
    def _format(self) -> struct.Struct:
        return _SCALAR_FORMATS[self.size]

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PartitionError(f"{self.name} needs an int, not {type(value).__name__}")
        if not 0 <= value < 1 << (8 * self.size):
            raise PartitionError(f"{value} does not fit in {self.name}")
        return value

    def encode(self, value: Any) -> bytes:
        return self._format.pack(self.check(value))

    def decode(self, raw: bytes) -> int:
        return self._format.unpack(raw)[0]

    def __repr__(self) -> str:
        return self.name


_SCALAR_FORMATS = {size: struct.Struct(_ORDER + code) for size, code in ((1, "B"), (2, "H"), (4, "I"), (8, "Q"))}
U8, U16, U32, U64 = Scalar("U8", 1), Scalar("U16", 2), Scalar("U32", 4), Scalar("U64", 8)


@dataclass(frozen=True)
class Bytes:
    """A byte string of at most `size` bytes, stored zero-padded to exactly `size` (as a C `char[size]`).
    Decoding gives all `size` bytes: the padding cannot be told from trailing zeros of the value, so an
    application that stores data with zeros in it keeps its length beside it (see Struct)."""

    size: int

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise PartitionError(f"Bytes needs a positive size, not {self.size!r}")

    @property
    def align(self) -> int:
        return 1

    def check(self, value: Any) -> bytes:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise PartitionError(f"Bytes({self.size}) needs bytes, not {type(value).__name__}")
        value = bytes(value)
        if len(value) > self.size:
            raise PartitionError(f"{len(value)} bytes do not fit in Bytes({self.size})")
        return value.ljust(self.size, b"\0")

    def encode(self, value: Any) -> bytes:
        return self.check(value)

    def decode(self, raw: bytes) -> bytes:
        return bytes(raw)

    def __repr__(self) -> str:
        return f"Bytes({self.size})"


class Struct:
    """A record of named fields in C layout: `Entry = Struct("Entry", flags=U32, data=Bytes(64))`.
    `Entry(flags=1, data=b"x")` makes a value (a namedtuple, Bytes fields zero-padded); a map whose value
    is `Entry` stores `Entry.size` bytes laid out as the C struct with the same members would be."""

    def __init__(self, name: str, **fields: Scalar | Bytes | Struct):
        if not fields:
            raise PartitionError(f"Struct {name} needs at least one field")
        for field_name, desc in fields.items():
            if not isinstance(desc, (Scalar, Bytes, Struct)):
                raise PartitionError(f"field {field_name} of {name}: {desc!r} is not a U8..U64, Bytes or Struct")
        self.name = name
        self.fields = dict(fields)
        self.type = namedtuple(name, list(fields))  # type: ignore[misc]
        offset, self.offsets = 0, {}
        for field_name, desc in fields.items():
            offset = -(-offset // desc.align) * desc.align  # C: each member at a multiple of its alignment
            self.offsets[field_name] = offset
            offset += desc.size
        self.align = max(desc.align for desc in fields.values())
        self.size = -(-offset // self.align) * self.align  # tail padding: arrays of it stay aligned

    def __call__(self, *args: Any, **kwargs: Any):
        return self.check(self.type(*args, **kwargs))

    def check(self, value: Any):
        if isinstance(value, dict):
            value = self.type(**value)
        if not isinstance(value, tuple) or len(value) != len(self.fields):
            raise PartitionError(f"{self.name} needs {len(self.fields)} fields ({', '.join(self.fields)}), "
                                 f"not {value!r}")
        try:
            return self.type(*(desc.check(item) for desc, item in zip(self.fields.values(), value)))
        except PartitionError as err:
            raise PartitionError(f"{self.name}: {err.message}") from None

    def encode(self, value: Any) -> bytes:
        raw = bytearray(self.size)
        for (field_name, desc), item in zip(self.fields.items(), self.check(value)):
            at = self.offsets[field_name]
            raw[at:at + desc.size] = desc.encode(item)
        return bytes(raw)

    def decode(self, raw: bytes):
        return self.type(*(desc.decode(raw[self.offsets[n]:self.offsets[n] + desc.size])
                           for n, desc in self.fields.items()))

    def __repr__(self) -> str:
        return f"Struct({self.name!r}, " + ", ".join(f"{n}={d!r}" for n, d in self.fields.items()) + ")"


Descriptor = Scalar | Bytes | Struct


def _descriptor(what: str, desc: Any) -> Descriptor:
    if not isinstance(desc, (Scalar, Bytes, Struct)):
        raise PartitionError(f"{what} must be U8, U16, U32, U64, Bytes(n) or a Struct, not {desc!r}")
    return desc


# ---- typed maps --------------------------------------------------------------------------------------------

class _TypedMap:
    """What HashMap and ArrayMap share: encoding through the descriptors, and the backend (the interpreter's
    model of the kernel map, or a kernel map after `attach`) that holds the bytes."""

    type_name = ""

    def __init__(self, key: Descriptor, value: Descriptor, max_entries: int, name: str | None):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries <= 0:
            raise PartitionError(f"max_entries must be a positive int, not {max_entries!r}")
        self.key = _descriptor("key", key)
        self.value = _descriptor("value", value)
        self.max_entries = max_entries
        self.name = name or self.type_name
        self._local = create_map(self.spec)
        self._backend: Any = self._local

    @property
    def spec(self) -> MapSpec:
        """The kernel map this one stands for (what the BPF half creates, or what `attach` expects)."""
        return MapSpec.of(self.type_name, self.key.size, self.value.size, self.max_entries, name=self.name)

    # ---- backing -------------------------------------------------------------------------------------------

    @property
    def backed(self) -> bool:
        return self._backend is not self._local

    def attach(self, kernel_map: Any, *, carry: bool = True) -> _TypedMap:
        """Keep this map's contents in `kernel_map` (a kernel.KernelMap, or anything with its lookup /
        update / delete / keys) from now on: with `carry`, the entries held so far are written there
        (an array's zero elements are not: the kernel's are zero already, or hold what a BPF program has
        written, which must not be overwritten), then every operation goes through bpf().
        PartitionError when its type or sizes are not this map's."""
        want = self.spec
        have = (getattr(kernel_map, "type_name", None), getattr(kernel_map, "key_size", None),
                getattr(kernel_map, "value_size", None), getattr(kernel_map, "max_entries", None))
        if have[0] not in self._compatible or have[1:] != (want.key_size, want.value_size, want.max_entries):
            raise PartitionError(f"map '{self.name}' ({want.type_name}, key {want.key_size}, value "
                                 f"{want.value_size}, {want.max_entries} entries) cannot be backed by "
                                 f"{kernel_map!r}")
        if self.backed:
            raise PartitionError(f"map '{self.name}' is already backed by {self._backend!r}")
        for key, value in list(self._local.items()) if carry else ():
            if self.type_name != "array" or any(value):
                kernel_map.update(key, value)
        self._backend = kernel_map
        return self

    def detach(self) -> None:
        """Back to a map in this process, holding what the kernel map holds now."""
        if not self.backed:
            return
        entries = list(self._backend.items())
        self._local, self._backend = create_map(self.spec), None
        for key, value in entries:
            self._local.update(key, value)
        self._backend = self._local

    @contextmanager
    def backing(self, kernel_map: Any) -> Iterator[_TypedMap]:
        """`with cache.backing(kmap): ...`: attached for the block, detached after it."""
        self.attach(kernel_map)
        try:
            yield self
        finally:
            self.detach()

    # ---- the dict face -------------------------------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        raw = self._backend.lookup(self.key.encode(key))
        if raw is None:
            raise MissingKey(f"map '{self.name}' has no element {key!r}")
        return self.value.decode(raw)

    def get(self, key: Any, default: Any = None) -> Any:
        raw = self._backend.lookup(self.key.encode(key))
        return default if raw is None else self.value.decode(raw)

    def __contains__(self, key: Any) -> bool:
        return self._backend.lookup(self.key.encode(key)) is not None

    def __setitem__(self, key: Any, value: Any) -> None:
        self._update(key, value, BPF_ANY)

    def put(self, key: Any, value: Any) -> int:
        """Insert or replace, returning 0 or a negative errno as bpf_map_update_elem does (-E2BIG when a
        full HashMap is asked for a new key): the form a handler that should run as BPF can test."""
        try:
            self._update(key, value, BPF_ANY)
        except MapError as err:
            return -err.errno
        return 0

    def _update(self, key: Any, value: Any, flags: int) -> None:
        raw_key, raw_value = self.key.encode(key), self.value.encode(value)
        try:
            self._backend.update(raw_key, raw_value, flags)
        except MapError as err:
            if err.errno == errno.E2BIG and self.type_name == "hash":
                raise MapFull(errno.E2BIG, f"map '{self.name}' is full ({self.max_entries} entries)") from None
            raise

    def __iter__(self) -> Iterator[Any]:
        for raw in list(self._backend.keys()):
            yield self.key.decode(raw)

    def keys(self) -> Iterator[Any]:
        return iter(self)

    def items(self) -> Iterator[tuple[Any, Any]]:
        for raw_key, raw_value in list(self._backend.items()):
            yield self.key.decode(raw_key), self.value.decode(raw_value)

    def values(self) -> Iterator[Any]:
        for _, value in self.items():
            yield value

    def __len__(self) -> int:
        return sum(1 for _ in self._backend.keys())

    def __repr__(self) -> str:
        where = f"backed by {self._backend!r}" if self.backed else "local"
        return f"{type(self).__name__}({self.name!r}, key={self.key!r}, value={self.value!r}, " \
               f"max_entries={self.max_entries}, {where})"


class HashMap(_TypedMap):
    """`HashMap(key=Bytes(32), value=U64, max_entries=1024)`: a BPF hash map, usable as a dict. Keys and
    values are checked and encoded by their descriptors; a new key in a full map raises MapFull (E2BIG)
    from `m[k] = v` (`put` returns -E2BIG instead); `del m[k]` of a missing key raises MissingKey."""

    type_name = "hash"
    _compatible = ("hash",)

    def __init__(self, *, key: Descriptor, value: Descriptor, max_entries: int, name: str | None = None):
        super().__init__(key, value, max_entries, name)

    def __delitem__(self, key: Any) -> None:
        try:
            self._backend.delete(self.key.encode(key))
        except MapError as err:
            if err.errno == errno.ENOENT:
                raise MissingKey(f"map '{self.name}' has no element {key!r}") from None
            raise

    def delete(self, key: Any) -> int:
        """Remove `key`: 0, or -ENOENT when absent (bpf_map_delete_elem's answer)."""
        try:
            self._backend.delete(self.key.encode(key))
        except MapError as err:
            return -err.errno
        return 0


class ArrayMap(_TypedMap):
    """`ArrayMap(value=U64, max_entries=16)`: a BPF array, indexed by a U32 from 0 to max_entries - 1.
    Every element exists (zero until written) and none can be deleted; an index out of range raises
    MissingKey on reads and MapError (E2BIG, as the kernel says) on writes."""

    type_name = "array"
    _compatible = ("array",)

    def __init__(self, *, value: Descriptor, max_entries: int, name: str | None = None):
        super().__init__(U32, value, max_entries, name)

    def __delitem__(self, key: Any) -> None:
        raise MapError(errno.EINVAL, f"map '{self.name}': array elements cannot be deleted")


# ---- the handler marker -------------------------------------------------------------------------------------

HOOKS = ("xdp", "tc")


@dataclass(frozen=True)
class Offload:
    """Where a handler marked with @offload wants to run: the hook and, for UDP servers, the port its
    packets arrive on."""

    hook: str
    port: int | None = None


def offload(hook: str = "xdp", *, port: int | None = None) -> Callable[[Callable], Callable]:
    """Mark the per-packet handler for the partitioner: records `Offload(hook, port)` on the function as
    `__bpforge_offload__` and returns the function itself, so the program runs unchanged as Python."""
    if hook not in HOOKS:
        raise PartitionError(f"hook must be one of {', '.join(HOOKS)}, not {hook!r}")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise PartitionError(f"port must be 1..65535, not {port!r}")
    marker = Offload(hook, port)

    def mark(function: Callable) -> Callable:
        if not callable(function):
            raise PartitionError(f"@offload marks a function, not {function!r}")
        function.__bpforge_offload__ = marker  # type: ignore[attr-defined]
        return function

    return mark


def offload_of(function: Any) -> Offload | None:
    """The @offload marker of `function`, or None."""
    marker = getattr(function, "__bpforge_offload__", None)
    return marker if isinstance(marker, Offload) else None


def declared(namespace: dict[str, Any]) -> tuple[dict[str, Callable], dict[str, _TypedMap]]:
    """The marked handlers and the typed maps among a module's globals (`vars(module)`), by name."""
    handlers = {name: value for name, value in namespace.items() if offload_of(value) is not None}
    maps = {name: value for name, value in namespace.items() if isinstance(value, _TypedMap)}
    return handlers, maps


__all__ = ["U8", "U16", "U32", "U64", "ArrayMap", "Bytes", "HashMap", "MapFull", "MissingKey", "Offload",
           "PartitionError", "Scalar", "Struct", "declared", "offload", "offload_of"]
