"""The interpreter's maps: the kernel's map semantics, in Python.

`create_map(spec, num_cpus=N)` makes one from an `isa.maptypes.MapSpec`. Every map has two faces:

- the syscall face, the `isa.maptypes.BpfMap` protocol as bpf() behaves: `lookup`, `update`, `delete`,
  `keys`, `items`, plus `next_key` (BPF_MAP_GET_NEXT_KEY from any key) and `freeze`. Failures raise
  `MapError` with the kernel's errno. Per-CPU values are all CPUs' values, each rounded up to 8 bytes.
- the program face, what the helpers call: `prog_lookup(key, cpu)` returns the element's *live* storage
  (a bytearray the interpreter maps into the program's memory; the same object for as long as the element
  lives), `prog_update(key, value, flags, cpu)` and `prog_delete(key, cpu)` return 0 or -errno. Map-in-map
  lookups return the inner map object instead of storage; `prog_array.prog_at(i)` is the tail-call target;
  ring buffers have `reserve`/`submit`/`discard`/`output`/`query`/`owns` and `records`/`consume`;
  queues, stacks and bloom filters `push_elem`/`get_elem`/`peek_elem`; perf event arrays `output`;
  redirect maps (cpumap, devmap, devmap_hash, xskmap) `redirect_target`; cgroup storage `local_storage`,
  sk_storage `storage_get`/`storage_delete`.

`dump()` gives a map as JSON-friendly data and `load_entries(read_entries(path))` preloads one from a
file in the same format (a JSON list of {"key": hex, "value": hex}, or a dump's object).

Each module says where it follows the kernel source and where it cannot (LRU eviction under contention,
hash seeds, the reuse order of freed elements).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from ...errors import ENOTSUPP, BpforgeError
from ...isa.maptypes import MAP_IN_MAP_TYPES, MapSpec
from .arena import ArenaMap
from .array import ArrayMap, PercpuArrayMap
from .base import PerCpuValue, VmMap
from .fdmaps import ArrayOfMapsMap, HashOfMapsMap, ProgArrayMap
from .hash import HashMap, jhash
from .lpm import LpmTrieMap
from .perf import PerfEvent, PerfEventArrayMap
from .queue import BloomFilterMap, QueueStackMap
from .redirect import CpuMap, DevMap, DevMapHash, XskMap
from .ringbuf import RingBufMap
from .storage import CgroupStorageMap, SkStorageMap

_CLASSES: dict[str, type] = {
    "array": ArrayMap, "percpu_array": PercpuArrayMap,
    "hash": HashMap, "percpu_hash": HashMap, "lru_hash": HashMap, "lru_percpu_hash": HashMap,
    "lpm_trie": LpmTrieMap, "prog_array": ProgArrayMap, "ringbuf": RingBufMap,
    "array_of_maps": ArrayOfMapsMap, "hash_of_maps": HashOfMapsMap,
    "perf_event_array": PerfEventArrayMap, "cpumap": CpuMap, "devmap": DevMap, "devmap_hash": DevMapHash,
    "xskmap": XskMap, "queue": QueueStackMap, "stack": QueueStackMap, "bloom_filter": BloomFilterMap,
    "cgroup_storage": CgroupStorageMap, "percpu_cgroup_storage": CgroupStorageMap, "sk_storage": SkStorageMap,
    "arena": ArenaMap,
}
SUPPORTED = tuple(_CLASSES)


def create_map(mapdef: MapSpec, *, num_cpus: int = 1) -> VmMap:
    """A new interpreter map for `mapdef` (of an object, a K2 file or made by hand), with `num_cpus` values
    per element if it is a per-CPU map (and as many CPUs' LRU lists and free lists). Global data
    (`mapdef.initial`) fills the single element; a map read-only to programs (.rodata) is then frozen, as
    libbpf does. MapError when the kernel would refuse the definition; BpforgeError for a map type the
    interpreter does not model."""
    if num_cpus < 1:
        raise BpforgeError(f"map '{mapdef.name}': num_cpus must be at least 1, not {num_cpus}")
    cls = _CLASSES.get(mapdef.type_name)
    if cls is None:
        raise BpforgeError(f"map '{mapdef.name}': the interpreter has no {mapdef.type_name} maps "
                           f"(it models {', '.join(SUPPORTED)})")
    if mapdef.type_name in MAP_IN_MAP_TYPES:  # their inner template may be any type: this factory makes it
        vm_map = cls(mapdef, num_cpus, lambda inner: create_map(inner, num_cpus=num_cpus))
    else:
        vm_map = cls(mapdef, num_cpus)
    if mapdef.initial is not None:
        vm_map.set_initial(mapdef.initial)
        if vm_map.readonly_prog:
            vm_map.freeze()
    return vm_map


def create_maps(mapdefs: Iterable[MapSpec], *, num_cpus: int = 1,
                programs: Mapping[str, object] | None = None) -> dict[str, VmMap]:
    """Every map of an object, by name, with the slots its definitions fill (`MapSpec.values`): inner maps
    of a map-in-map by map name, programs of a prog_array from `programs` by name (without `programs`,
    prog_array slots stay empty for the caller to fill)."""
    defs = list(mapdefs)
    maps = {d.name: create_map(d, num_cpus=num_cpus) for d in defs}

    def find(kind: str, symbol: str):
        obj = (programs or {}).get(symbol) if kind == "program" else maps.get(symbol)
        if obj is None:
            raise BpforgeError(f"the {kind} '{symbol}' does not exist")
        return obj

    for d in defs:
        if d.type_name != "prog_array" or programs is not None:
            fill_slots(d, maps[d.name], find)
    return maps


def fill_slots(mapdef: MapSpec, vm_map, find) -> None:
    """Put what a map's definition names into its slots (`MapSpec.values`: slot -> symbol), as libbpf does
    after loading: `find("program", name)` gives a prog_array's programs, `find("map", name)` the inner maps
    of a map of maps."""
    kind = "program" if mapdef.type_name == "prog_array" else "map"
    for slot, symbol in sorted(mapdef.values.items()):
        try:
            target = find(kind, symbol)
        except BpforgeError as err:
            raise BpforgeError(f"map '{mapdef.name}': slot {slot} names {kind} '{symbol}': {err.message}") from None
        key = slot.to_bytes(vm_map.key_size, "little")
        vm_map.update(key, vm_map.register(target).to_bytes(4, "little"))


def read_entries(path: str) -> list[dict]:
    """The entries of a preload file: a JSON list of {"key": hex, "value": hex} (per-CPU maps may give
    "values": [hex per CPU]), or an object with such an "entries" list (what `dump()` writes)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as err:
        raise BpforgeError(f"cannot read map entries: {err.strerror}", file=path) from None
    except json.JSONDecodeError as err:
        raise BpforgeError(f"map entries are not JSON: {err.msg}", file=path, line=err.lineno,
                           col=err.colno) from None
    if isinstance(data, dict) and "entries" in data:
        data = data["entries"]
    if not isinstance(data, list):
        raise BpforgeError('map entries must be a JSON list of {"key": hex, "value": hex}', file=path)
    return data


__all__ = [
    "ENOTSUPP",
    "SUPPORTED",
    "ArrayMap",
    "ArrayOfMapsMap",
    "BloomFilterMap",
    "CgroupStorageMap",
    "CpuMap",
    "DevMap",
    "DevMapHash",
    "HashMap",
    "HashOfMapsMap",
    "LpmTrieMap",
    "PerCpuValue",
    "PercpuArrayMap",
    "PerfEvent",
    "PerfEventArrayMap",
    "ProgArrayMap",
    "QueueStackMap",
    "RingBufMap",
    "SkStorageMap",
    "XskMap",
    "VmMap",
    "create_map",
    "create_maps",
    "fill_slots",
    "jhash",
    "read_entries",
]
