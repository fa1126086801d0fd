"""Lowering a program for the JITs: every slot's effects (`mir.effects_of`), the slots code must be able to
reach by label, the blocks instruction counting charges, and the control-block cells the code reads
(map handles, map value pointers, function addresses, context fields): all a backend needs, none of it
specific to one architecture.

A lowered program is compiled in one of two modes. Verified (our verifier accepted it): memory accesses
are not re-checked, loads of context fields the kernel rewrites (data, data_end, skb->len, ...) read a cell
the run keeps current, as the kernel's convert_ctx_access turns them into loads of its own structures.
Sandbox: every access is checked against its region, anything else goes to the run's `Memory`, and
instructions are counted against the run's budget, so a program no verifier accepted faults as the
interpreter faults instead of crashing the process or running forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..analysis.frame import MapHandle, program_frame_states
from ..isa.helpers import helper_id
from ..isa.ops import Call, Exit, Jump, Load, LoadImm64, MayGoto, Op, decode_ops, following
from . import abi
from .mir import Effect, effects_of


@dataclass(frozen=True)
class SlotCode:
    slot: int
    op: Op
    effects: list[Effect]
    next: int


@dataclass
class Cells:
    """Where each per-program value lives in the control block (byte offsets)."""

    maps: dict[int, int] = field(default_factory=dict)  # map reference -> its handle
    map_values: dict[int, int] = field(default_factory=dict)  # map reference -> its first value's address
    functions: dict[int, int] = field(default_factory=dict)  # slot -> the function's VM address
    ctx_loads: dict[int, int] = field(default_factory=dict)  # load slot -> the context field's value
    kfuncs: list[tuple[int, int]] = field(default_factory=list)  # (btf id, module) by index
    array_tables: dict[int, int] = field(default_factory=dict)  # map reference -> its table of value addresses
    lookup_caches: dict[int, int] = field(default_factory=dict)  # map reference -> its lookup cache
    next: int = abi.CELLS

    def cell(self, table: dict, key) -> int:
        if key not in table:
            if self.next >= abi.CELLS + abi.MAX_CELLS * abi.CELL:
                raise ValueError("the program needs more control-block cells than the JIT has")
            table[key] = self.next
            self.next += abi.CELL
        return table[key]


@dataclass
class Lowered:
    name: str
    code: list[SlotCode]
    entries: tuple[int, ...]
    bounds: dict[int, tuple[int, int]]  # function entry -> [start, end)
    leaders: dict[int, int]  # block start -> instructions in the block
    targets: frozenset[int]  # slots jumped or called to
    sandbox: bool
    count: bool  # charge instructions against the run's budget
    cells: Cells
    ctx_fields: dict[int, tuple[int, int]]  # load slot -> (context offset, size) read through a cell
    checked: frozenset[int]  # load slots checked even when verified (the context on some paths only)
    image: int = 0  # the number call-backs name the program by (a run's images share one control block)
    lookups: dict[int, "InlineLookup"] = field(default_factory=dict)  # bpf_map_lookup_elem slot -> how

    def function_of(self, slot: int) -> int:
        for entry, (lo, hi) in self.bounds.items():
            if lo <= slot < hi:
                return entry
        raise ValueError(f"slot {slot} is in no function")


def lower(program, *, sandbox: bool, ctx_fields: dict[int, tuple[int, int]] | None = None,
          checked: frozenset[int] = frozenset(), image: int = 0, first_cell: int = abi.CELLS) -> Lowered:
    """`program`: a `vm.VmProgram`. `ctx_fields` (verified mode): the loads of special context fields, by
    slot; `checked`: loads to check although the program is verified. `first_cell`: where this program's
    cells start (programs that tail-call each other share a control block)."""
    ops = decode_ops(program.insns)
    code = [SlotCode(slot, op, effects_of(op), following(ops, slot)) for slot, op in enumerate(ops) if op is not None]
    entries = program.entries
    bounds = {entry: program.function_bounds(entry) for entry in entries}
    targets: set[int] = set(entries)
    ends: set[int] = set()
    cells = Cells(next=first_cell)
    for sc in code:
        op = sc.op
        if isinstance(op, (Jump, MayGoto)):
            targets.add(op.target)
            ends.add(sc.next)
        elif isinstance(op, (Call, Exit)):
            ends.add(sc.next)
            if isinstance(op, Call) and op.kind == "local":
                targets.add(op.target)
            if isinstance(op, Call) and op.kind == "kfunc" and (op.target, op.module) not in cells.kfuncs:
                cells.kfuncs.append((op.target, op.module))
        elif isinstance(op, LoadImm64):
            if op.kind == "map":
                cells.cell(cells.maps, op.value)
            elif op.kind == "map_value":
                cells.cell(cells.map_values, op.value)
            elif op.kind == "func":
                cells.cell(cells.functions, op.value)
    fields = dict(ctx_fields or {})
    for slot in sorted(fields):
        if isinstance(ops[slot], Load):
            cells.cell(cells.ctx_loads, slot)
        else:
            del fields[slot]
    lookups = {} if sandbox else _inline_lookups(program, ops, cells)
    leaders: dict[int, int] = {}
    start = None
    for sc in code:
        if start is None or sc.slot in targets or sc.slot in ends:
            start = sc.slot
            leaders[start] = 0
        leaders[start] += 1
    return Lowered(program.name, code, entries, bounds, leaders, frozenset(targets), sandbox,
                   sandbox or program.has_may_goto, cells, fields, frozenset(checked), image, lookups)


MAP_LOOKUP_ELEM = helper_id("bpf_map_lookup_elem")
INLINE_ARRAY_TYPES = frozenset({"array", "percpu_array"})
MAX_INLINE_ENTRIES = 1 << 20
# Maps whose lookups change nothing a later lookup could see (an LRU lookup only sets the element's
# idempotent reference bit): their results can be cached until the next helper that may change a map.
CACHED_TYPES = frozenset({"hash", "percpu_hash", "lru_hash", "lru_percpu_hash", "lpm_trie", "hash_of_maps"})
MAX_CACHED_KEY = 64
CACHE_SLOTS = 256  # direct-mapped: a key hashes to one slot
# Helpers that add, remove or replace no map element (what a cached lookup result depends on: they may
# write through pointers into a map value, which moves nothing): the caches survive them.
MAP_NEUTRAL_HELPERS: frozenset[int] = frozenset(helper_id("bpf_" + name) for name in (
    "ktime_get_ns", "ktime_get_boot_ns", "ktime_get_coarse_ns", "ktime_get_tai_ns", "jiffies64",
    "get_prandom_u32", "get_smp_processor_id", "get_numa_node_id", "trace_printk", "csum_diff", "csum_update",
    "skb_load_bytes", "skb_load_bytes_relative", "xdp_load_bytes", "skb_store_bytes", "xdp_store_bytes",
    "l3_csum_replace", "l4_csum_replace", "xdp_adjust_head", "xdp_adjust_meta", "xdp_adjust_tail",
    "get_hash_recalc", "redirect"))
SKB_LOAD_BYTES = helper_id("bpf_skb_load_bytes")


@dataclass(frozen=True)
class InlineLookup:
    """How a bpf_map_lookup_elem of a known map is inlined: `array` (index bounds, then the run's table of
    value addresses) or `cache` (the key hashed into the map's direct-mapped cache of earlier results)."""

    kind: str
    ref: int
    entries: int = 0  # array: max_entries
    key_size: int = 0  # cache

    @property
    def key_words(self) -> list[int]:
        """The byte sizes of the words a cache key is read in: 8-byte words, then what is left as 4, 2 and
        1 bytes (each zero-extended to a word)."""
        rest = self.key_size % 8
        return [8] * (self.key_size // 8) + [size for size in (4, 2, 1) if rest & size]

    @property
    def slot_size(self) -> int:
        return 8 * (2 + len(self.key_words))  # valid, key words, result

    @property
    def cache_words(self) -> int:
        """The u64 words of the whole cache."""
        return CACHE_SLOTS * self.slot_size // 8


def cache_hash(words: list[int]) -> int:
    """The slot of a key in a lookup cache (what native code computes): h = (h + w) * K per word, top bits."""
    h = 0
    for word in words:
        h = ((h + word) * CACHE_MULTIPLIER) & (1 << 64) - 1
    return h >> 56


CACHE_MULTIPLIER = 0x9E3779B97F4A7C15


def _inline_lookups(program, ops, cells: Cells) -> dict[int, InlineLookup]:
    """bpf_map_lookup_elem calls whose map is known (analysis.frame: r1 holds the handle of one map on every
    path): array and per-CPU array lookups are inlined as the kernel inlines them (array_map_gen_lookup),
    through a table of each index's value address the run fills as lookups first reach an index; lookups
    of hash-like maps go through a cache of earlier results the run fills and empties."""
    calls = [slot for slot, op in enumerate(ops)
             if isinstance(op, Call) and op.kind == "helper" and op.target == MAP_LOOKUP_ELEM]
    if not calls:
        return {}
    states = program_frame_states(ops)
    found = {}
    for slot in calls:
        handle = states.get(slot, (None,) * 11)[1]
        if not isinstance(handle, MapHandle) or not 0 <= handle.ref < len(program.maps):
            continue
        vm_map = program.maps[handle.ref]
        if vm_map is None:
            continue
        if vm_map.type_name in INLINE_ARRAY_TYPES and vm_map.key_size == 4 and vm_map.max_entries <= MAX_INLINE_ENTRIES:
            cells.cell(cells.array_tables, handle.ref)
            found[slot] = InlineLookup("array", handle.ref, entries=vm_map.max_entries)
        elif vm_map.type_name in CACHED_TYPES and 0 < vm_map.key_size <= MAX_CACHED_KEY:
            cells.cell(cells.lookup_caches, handle.ref)
            found[slot] = InlineLookup("cache", handle.ref, key_size=vm_map.key_size)
    return found
