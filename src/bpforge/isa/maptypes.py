"""Map types, map creation flags, the one description of a map (`MapSpec`) and the map API shared by the
interpreter's maps and the kernel's (uapi `enum bpf_map_type`, `BPF_F_*` map flags, update flags, and the
errors both report the same way).

A `MapSpec` is what a map is declared as, apart from any live map (cilium/ebpf's MapSpec vs Map): the ELF
reader, the K2 reader and the kernel probes fill it; `vm.maps.create_map` and `kernel.KernelMap.create`
make maps of it.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import BpforgeError, errno_text

MAP_TYPES = (
    "unspec", "hash", "array", "prog_array", "perf_event_array", "percpu_hash", "percpu_array", "stack_trace",
    "cgroup_array", "lru_hash", "lru_percpu_hash", "lpm_trie", "array_of_maps", "hash_of_maps", "devmap",
    "sockmap", "cpumap", "xskmap", "sockhash", "cgroup_storage", "reuseport_sockarray", "percpu_cgroup_storage",
    "queue", "stack", "sk_storage", "devmap_hash", "struct_ops", "ringbuf", "inode_storage", "task_storage",
    "bloom_filter", "user_ringbuf", "cgrp_storage", "arena",
)  # enum bpf_map_type, spelled as bpftool prints it
MAP_TYPE_IDS = {name: number for number, name in enumerate(MAP_TYPES)}
PERCPU_TYPES = frozenset({"percpu_hash", "percpu_array", "lru_percpu_hash", "percpu_cgroup_storage"})
MAP_IN_MAP_TYPES = frozenset({"array_of_maps", "hash_of_maps"})

# Update flags (bpf_map_update_elem's last argument).
BPF_ANY, BPF_NOEXIST, BPF_EXIST, BPF_F_LOCK = 0, 1, 2, 4
# Map creation flags (uapi BPF_F_* of BPF_MAP_CREATE's map_flags).
BPF_F_NO_PREALLOC, BPF_F_NO_COMMON_LRU, BPF_F_NUMA_NODE = 0x1, 0x2, 0x4
BPF_F_RDONLY, BPF_F_WRONLY = 0x8, 0x10  # the syscall side may only read / only write
BPF_F_ZERO_SEED, BPF_F_RDONLY_PROG, BPF_F_WRONLY_PROG = 0x40, 0x80, 0x100
BPF_F_CLONE, BPF_F_MMAPABLE, BPF_F_PRESERVE_ELEMS, BPF_F_INNER_MAP = 0x200, 0x400, 0x800, 0x1000
BPF_F_SEGV_ON_FAULT, BPF_F_NO_USER_CONV = 0x20000, 0x40000  # arenas
BPF_F_ACCESS_MASK = BPF_F_RDONLY | BPF_F_RDONLY_PROG | BPF_F_WRONLY | BPF_F_WRONLY_PROG


class Slots(dict):
    """A map's initial slots (slot -> map or program name), read-only like the spec that holds them (and,
    unlike a mappingproxy, picklable)."""

    def _read_only(self, *args, **kwargs):
        raise TypeError("a MapSpec's slots are read-only (make another spec with dataclasses.replace)")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self):
        return type(self), (dict(self),)


@dataclass(frozen=True)
class MapSpec:
    """A map as declared, before any map exists: what BPF_MAP_CREATE takes, plus what a loader does with the
    map once it is made (fill `initial` contents or `values` slots, freeze .rodata).

    source: "btf" (an object's .maps), "legacy" (struct bpf_map_def in `maps`), "data" (the array libbpf makes
    of a global data section or .kconfig; `initial` holds its contents), "k2" (a line of K2's NAME.maps),
    "probe" (a feature probe), "user" (made by hand). An arena's `initial` is the object's `.addr_space.1`
    (its __arena globals; elf.maps.with_arena_data)."""

    name: str
    type: int  # enum bpf_map_type
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0  # BPF_F_* creation flags
    source: str = "user"
    section: str = ""  # where an object declares it (.maps, maps, a data section)
    offset: int = 0  # of the definition within that section
    pinning: int = 0  # LIBBPF_PIN_* (kept, not acted on)
    numa_node: int | None = None  # given: BPF_F_NUMA_NODE and this node
    map_extra: int = 0  # bloom filter: hash count; arena: user_vm_start
    btf_key_type_id: int | None = None  # the object's BTF ids of key and value, when declared with __type()
    btf_value_type_id: int | None = None
    inner: MapSpec | None = None  # map-in-map: the inner maps' template
    # Initial slots of a map-in-map or prog_array (`.values = { [i] = &x }`): slot -> map or program name.
    values: Mapping[int, str] = field(default_factory=dict, hash=False)
    initial: bytes | None = None  # the single element's contents (global data), or an arena's globals
    ref: int | None = None  # the number raw bytecode names the map by (lddw map_fd imm; K2's `fd`)

    def __post_init__(self) -> None:
        # Frozen all the way: the slots of a spec cannot be changed behind the maps made from it.
        object.__setattr__(self, "values", Slots(self.values))
        if self.initial is not None and not isinstance(self.initial, bytes):
            object.__setattr__(self, "initial", bytes(self.initial))

    @property
    def type_name(self) -> str:
        return map_type_name(self.type)

    @classmethod
    def of(cls, type_name: str, key_size: int, value_size: int, max_entries: int, flags: int = 0, *,
           name: str | None = None, **more) -> MapSpec:
        """A spec by map type name: `MapSpec.of("hash", 4, 8, 16)`."""
        if type_name not in MAP_TYPE_IDS:
            raise BpforgeError(f"unknown map type '{type_name}'")
        return cls(name or type_name, MAP_TYPE_IDS[type_name], key_size, value_size, max_entries, flags, **more)


def round8(size: int) -> int:
    """A per-CPU value's stride in the syscall ABI: each CPU's value rounded up to 8 bytes."""
    return (size + 7) & ~7


def split_cpu_values(value: bytes, value_size: int, num_cpus: int) -> list[bytes]:
    """A per-CPU map's syscall value split into each CPU's `value_size` bytes (the 8-byte padding dropped)."""
    step = round8(value_size)
    return [value[i * step:i * step + value_size] for i in range(num_cpus)]


def check_value_size(name: str, value: bytes, value_size: int, percpu_cpus: int | None) -> None:
    """EINVAL unless `value` has the syscall's size: value_size, or for a per-CPU map (percpu_cpus given)
    every CPU's value rounded up to 8 bytes."""
    expected = value_size if percpu_cpus is None else percpu_cpus * round8(value_size)
    if len(value) != expected:
        per = f" ({percpu_cpus} CPUs x {round8(value_size)} bytes)" if percpu_cpus is not None else ""
        raise MapError(errno.EINVAL, f"map '{name}': value must be {expected} bytes{per}, got {len(value)}")


def map_errno_text(err: int) -> str:
    """How a map operation's errno is quoted (ENOTSUPP: the operation does not exist for the map type)."""
    return errno_text(err, "operation not supported by this map type")


def map_type_name(number: int) -> str:
    return MAP_TYPES[number] if 0 <= number < len(MAP_TYPES) else f"unknown({number})"


class MapError(BpforgeError):
    """A map operation refused, with the errno the kernel gives for it (ENOENT, EEXIST, E2BIG, EINVAL...)."""

    def __init__(self, err: int, message: str = "", **where):
        self.errno = err
        super().__init__(message or map_errno_text(err), **where)


class BpfMap(Protocol):
    """What both the interpreter's maps and the kernel's maps offer to Python code (keys and values as bytes;
    a per-CPU map's value is the concatenation of every CPU's value, each rounded up to 8 bytes, as in the
    syscall ABI)."""

    name: str
    type_name: str
    key_size: int
    value_size: int
    max_entries: int

    def lookup(self, key: bytes) -> bytes | None: ...

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def keys(self) -> Iterator[bytes]: ...

    def items(self) -> Iterator[tuple[bytes, bytes]]: ...


def dump_map(name: str, bpf_map) -> dict:
    """A map's entries as bpf() lists them (BPF_MAP_GET_NEXT_KEY + LOOKUP). Types bpf() cannot list that
    way (queues, stacks, bloom filters, perf event arrays, ...) give no entries and say why, in every engine."""
    try:
        entries = [{"key": k.hex(), "value": v.hex()} for k, v in bpf_map.items()]
    except MapError as err:
        return {"name": name, "type": bpf_map.type_name, "entries": [],
                "unlisted": f"bpf() does not list the entries of {bpf_map.type_name} maps ({err.message})"}
    return {"name": name, "type": bpf_map.type_name, "entries": entries}


def preload_maps(maps: Mapping[str, object], preload: Mapping[str, list[tuple[bytes, bytes]]]) -> None:
    """Write `preload`'s entries (map name -> (key, value) pairs) into the maps of those names."""
    for name, entries in preload.items():
        if name not in maps:
            raise BpforgeError(f"the program uses no map named '{name}' (its maps: {', '.join(maps) or 'none'})")
        for key, value in entries:
            try:
                maps[name].update(key, value)
            except BpforgeError as err:
                raise BpforgeError(f"preloading map '{name}': {err.message}") from None
