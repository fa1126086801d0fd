"""The interpreter's maps against the running kernel's: the same definitions, the same operations, the same
results and errnos.

- Syscall side: hypothesis-generated sequences of update/lookup/delete/iterate/get-next-key with random
  keys, values and flags on a VM map and a KernelMap made from one MapSpec. Key order is compared exactly
  for arrays, LPM tries and BPF_F_ZERO_SEED hash maps (elsewhere the kernel's hash seed is random: sets).
  LRU maps are compared exactly too: the kernel's LRU is approximate but, on a CPU nobody else uses for
  the map, deterministic, and the model replays it (operations hop between CPUs to exercise the per-CPU
  lists); besides, the count never exceeds max_entries and every insert succeeds.
- Program side: programs run with BPF_PROG_TEST_RUN check where a pointer from bpf_map_lookup_elem leads
  after updates and deletes, that program lookups mark LRU elements used, and ring buffer capacity.

Each test skips where bpf() is not usable (the `kernel` fixture says why).
"""

from __future__ import annotations

import ctypes
import errno
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpforge.isa.maptypes import MapSpec
from bpforge.isa.maptypes import MAP_TYPE_IDS, MapError
from bpforge.vm.maps import create_map

kernel_maps = pytest.importorskip("bpforge.kernel.maps", reason="bpforge.kernel.maps (KernelMap) is not there")
KernelMap = kernel_maps.KernelMap

BPF_F_NO_PREALLOC, BPF_F_NO_COMMON_LRU, BPF_F_RDONLY, BPF_F_WRONLY = 0x1, 0x2, 0x8, 0x10
BPF_F_ZERO_SEED, BPF_F_RDONLY_PROG = 0x40, 0x80
LRU = ("lru_hash", "lru_percpu_hash")
EXAMPLES = settings.default.max_examples  # 100 in CI; HYPOTHESIS_PROFILE=deep runs many more
SLOW_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def md(type_name, key_size=4, value_size=4, max_entries=4, flags=0, **kw) -> MapSpec:
    return MapSpec(name="t", type=MAP_TYPE_IDS[type_name], key_size=key_size, value_size=value_size,
                   max_entries=max_entries, flags=flags, **kw)


@pytest.fixture(scope="module")
def cpus(kernel):
    """The CPUs this test may run on, pinned to the first: LRU lists and spare elements are per CPU, so the
    VM must know which CPU each syscall and program run executes on."""
    before = os.sched_getaffinity(0)
    allowed = sorted(before)
    os.sched_setaffinity(0, {allowed[0]})
    yield allowed
    os.sched_setaffinity(0, before)


def on_cpu(cpu: int, *vm_maps) -> None:
    os.sched_setaffinity(0, {cpu})
    for m in vm_maps:
        m.syscall_cpu = cpu


def outcome(fn, *args):
    try:
        result = fn(*args)
        return "ok", list(result) if hasattr(result, "__next__") else result  # iterators fail as they go
    except MapError as err:
        return "errno", err.errno


def kernel_next_key(kmap, key: bytes | None) -> bytes | None:
    """BPF_MAP_GET_NEXT_KEY from any key (KernelMap.keys only walks from the start)."""
    from bpforge.kernel.syscall import BPF_MAP_GET_NEXT_KEY, MapElemAttr, bpf

    kbuf = None if key is None else ctypes.create_string_buffer(key, len(key))
    nbuf = ctypes.create_string_buffer(max(kmap.key_size, 1))
    _, err = bpf(BPF_MAP_GET_NEXT_KEY, MapElemAttr(map_fd=kmap.fd, key=0 if kbuf is None else ctypes.addressof(kbuf),
                                                   value=ctypes.addressof(nbuf)))
    if err == errno.ENOENT:
        return None
    if err:
        raise MapError(err)
    return nbuf.raw[:kmap.key_size]


# ---- the syscall side: random operation sequences ----------------------------------------------------------

SHAPES = {  # (key sizes, value sizes, max_entries, creation flags)
    "array": ([4], [1, 3, 4, 8, 13], [1, 2, 5], [0]),
    "percpu_array": ([4], [1, 4, 12], [1, 3], [0]),
    "hash": ([1, 3, 4, 8, 13], [1, 4, 7, 8], [1, 2, 3, 5, 8], [0, BPF_F_NO_PREALLOC, BPF_F_ZERO_SEED,
                                                                BPF_F_ZERO_SEED | BPF_F_NO_PREALLOC]),
    "percpu_hash": ([2, 4, 9], [1, 4, 12], [1, 2, 5], [0, BPF_F_NO_PREALLOC, BPF_F_ZERO_SEED]),
    "lru_hash": ([1, 4, 6], [1, 4, 9], [1, 2, 3, 5, 8, 40, 300], [BPF_F_ZERO_SEED, BPF_F_ZERO_SEED | BPF_F_NO_COMMON_LRU]),
    "lru_percpu_hash": ([4], [4, 5], [1, 2, 3, 8, 40], [BPF_F_ZERO_SEED, BPF_F_ZERO_SEED | BPF_F_NO_COMMON_LRU]),
    "lpm_trie": ([5, 6, 8], [1, 4], [1, 2, 4, 8], [BPF_F_NO_PREALLOC]),
}
FLAGS = st.sampled_from([0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 8])


def ordered(type_name: str, flags: int) -> bool:
    """Whether the kernel's key order is reproducible: not for hash maps with a random seed."""
    return type_name in ("array", "percpu_array", "lpm_trie") or bool(flags & BPF_F_ZERO_SEED)


def key_strategy(type_name, key_size, max_entries):
    if type_name in ("array", "percpu_array"):
        index = st.one_of(st.integers(0, max_entries + 2), st.just(0xFFFFFFFF))
        return index.map(lambda n: n.to_bytes(4, "little"))
    if type_name == "lpm_trie":
        bits = 8 * (key_size - 4)
        plen = st.one_of(st.integers(0, bits), st.sampled_from([bits + 1, 0xFFFFFFFF]))
        data = st.lists(st.sampled_from([0x00, 0x0F, 0x80, 0xC0, 0xFF]), min_size=key_size - 4,
                        max_size=key_size - 4).map(bytes)
        return st.tuples(plen, data).map(lambda t: t[0].to_bytes(4, "little") + t[1])
    pool = st.integers(0, 2 * max_entries + 2).map(lambda n: (n % 256 ** key_size).to_bytes(key_size, "little"))
    return st.one_of(pool, pool, st.binary(min_size=key_size, max_size=key_size))


@st.composite
def scenarios(draw, type_name):
    key_sizes, value_sizes, entries, flag_sets = SHAPES[type_name]
    key_size, value_size = draw(st.sampled_from(key_sizes)), draw(st.sampled_from(value_sizes))
    max_entries, flags = draw(st.sampled_from(entries)), draw(st.sampled_from(flag_sets))
    mapdef = md(type_name, key_size, value_size, max_entries, flags)
    value_len = value_size if "percpu" not in type_name else kernel_maps.possible_cpus() * ((value_size + 7) & ~7)
    keys = key_strategy(type_name, key_size, max_entries)
    value = st.binary(min_size=value_len, max_size=value_len)
    op = st.one_of(
        st.tuples(st.just("update"), keys, value, FLAGS), st.tuples(st.just("update"), keys, value, FLAGS),
        st.tuples(st.just("lookup"), keys), st.tuples(st.just("delete"), keys), st.tuples(st.just("keys")),
        st.tuples(st.just("next"), st.one_of(st.none(), keys)), st.tuples(st.just("cpu"), st.integers(0, 7)))
    return mapdef, draw(st.lists(op, min_size=1, max_size=60 if type_name in LRU else 30))


def run_scenario(mapdef: MapSpec, ops, cpus) -> None:
    vm = create_map(mapdef, num_cpus=kernel_maps.possible_cpus())
    kmap = KernelMap.create(mapdef)
    exact = ordered(mapdef.type_name, mapdef.flags)
    try:
        on_cpu(cpus[0], vm)
        for step, (name, *args) in enumerate(ops):
            where = f"step {step}: {name} {[a.hex() if isinstance(a, bytes) else a for a in args]}"
            if name == "cpu":
                on_cpu(cpus[args[0] % len(cpus)], vm)
                continue
            if name == "keys":
                mine, theirs = list(vm.keys()), list(kmap.keys())
                assert (mine if exact else sorted(mine)) == (theirs if exact else sorted(theirs)), where
            elif name == "next":
                if exact:
                    assert outcome(vm.next_key, *args) == outcome(kernel_next_key, kmap, *args), where
            else:
                assert outcome(getattr(vm, name), *args) == outcome(getattr(kmap, name), *args), where
            if mapdef.type_name in LRU:  # the LRU guarantee that does not depend on modelling it exactly
                assert len(vm) <= vm.max_entries, where
                if name == "update" and args[2] in (0, 1):
                    assert vm.lookup(args[0]) is not None or outcome(kmap.lookup, args[0])[1] is None, where
        mine, theirs = list(vm.keys()), list(kmap.keys())
        assert (mine if exact else sorted(mine)) == (theirs if exact else sorted(theirs))
        assert {k: vm.lookup(k) for k in mine} == {k: kmap.lookup(k) for k in theirs}
    finally:
        kmap.close()
        on_cpu(cpus[0], vm)


@pytest.mark.parametrize("type_name", list(SHAPES))
def test_syscall_sequences_match_kernel(type_name, cpus):
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=SLOW_OK)
    @given(scenarios(type_name))
    def check(scenario):
        run_scenario(*scenario, cpus)

    check()


def test_lru_inserts_always_succeed_and_stay_bounded(cpus):
    # The coarse LRU contract, with many CPUs hopping: no insert fails, nothing exceeds max_entries, the
    # newest key is there; then the exact key sets, which the model is meant to reproduce as well.
    for type_name in LRU:
        for flags in (0, BPF_F_NO_COMMON_LRU):
            mapdef = md(type_name, 4, 8, 16, flags)
            vm = create_map(mapdef, num_cpus=kernel_maps.possible_cpus())
            with KernelMap.create(mapdef) as kmap:
                for n in range(300):
                    on_cpu(cpus[n % 3 % len(cpus)], vm)
                    value = bytes(vm.syscall_value_size)
                    kmap.update(n.to_bytes(4, "little"), value, 1)
                    vm.update(n.to_bytes(4, "little"), value, 1)
                    assert kmap.lookup(n.to_bytes(4, "little")) is not None
                    assert len(list(kmap.keys())) <= 16 and len(vm) <= vm.max_entries
                    assert sorted(vm.keys()) == sorted(kmap.keys())
            on_cpu(cpus[0], vm)


# ---- creation, permissions, flags ---------------------------------------------------------------------------

CREATIONS = [
    md("array", key_size=8), md("array", value_size=0), md("array", max_entries=0), md("array", flags=0x2),
    md("percpu_array", flags=0x400), md("array", flags=BPF_F_RDONLY | BPF_F_WRONLY), md("array", flags=0x180),
    md("hash", key_size=0), md("hash", value_size=0), md("hash", flags=BPF_F_NO_COMMON_LRU), md("hash", flags=0x400),
    md("lru_hash", flags=BPF_F_NO_PREALLOC), md("lru_percpu_hash", flags=BPF_F_NO_PREALLOC),
    md("percpu_hash", value_size=32768), md("percpu_hash", value_size=32769),
    md("lpm_trie", key_size=4, flags=1), md("lpm_trie", key_size=5, flags=1), md("lpm_trie", key_size=261, flags=1),
    md("lpm_trie", key_size=260, flags=1), md("lpm_trie", key_size=8, value_size=0, flags=1),
    md("lpm_trie", key_size=8, flags=1 | BPF_F_ZERO_SEED),
    md("ringbuf", key_size=0, value_size=0, max_entries=4096), md("ringbuf", key_size=0, value_size=0, max_entries=6000),
    md("ringbuf", key_size=0, value_size=0, max_entries=8192, flags=BPF_F_NO_PREALLOC),
    md("prog_array", max_entries=0), md("prog_array", flags=BPF_F_RDONLY_PROG),
]


@pytest.mark.parametrize("mapdef", CREATIONS, ids=lambda d: f"{d.type_name}-k{d.key_size}-v{d.value_size}-"
                                                         f"n{d.max_entries}-f{d.flags:#x}")
def test_creation_matches_kernel(mapdef, kernel):
    mine, theirs = outcome(create_map, mapdef), outcome(KernelMap.create, mapdef)
    assert mine[0] == theirs[0]
    if theirs[0] == "errno":
        assert mine == theirs
    else:
        theirs[1].close()


@pytest.mark.parametrize("flags", [BPF_F_RDONLY, BPF_F_WRONLY, 0])
@pytest.mark.parametrize("freeze", [False, True])
def test_access_flags_and_freeze_match_kernel(flags, freeze, kernel):
    mapdef = md("hash", max_entries=4, flags=flags | BPF_F_ZERO_SEED)
    vm = create_map(mapdef)
    with KernelMap.create(mapdef) as kmap:
        for m in (vm, kmap):
            assert outcome(m.update, b"\1\0\0\0", b"abcd")[0] in ("ok", "errno")
        if freeze:
            assert outcome(vm.freeze) == outcome(kmap.freeze)
            assert outcome(vm.freeze) == outcome(kmap.freeze)  # twice
        for op, args in (("update", (b"\2\0\0\0", b"efgh")), ("lookup", (b"\1\0\0\0",)), ("keys", ()),
                         ("delete", (b"\1\0\0\0",)), ("update", (b"\2\0\0\0", b"efgh", 4))):
            assert outcome(getattr(vm, op), *args) == outcome(getattr(kmap, op), *args), op


def test_ringbuf_syscall_side_matches_kernel(kernel):
    mapdef = md("ringbuf", key_size=0, value_size=0, max_entries=4096)
    vm = create_map(mapdef)
    with KernelMap.create(mapdef) as kmap:
        assert outcome(vm.lookup, b"") == outcome(kmap.lookup, b"")
        assert outcome(vm.update, b"", b"") == outcome(kmap.update, b"", b"")
        assert outcome(vm.delete, b"") == outcome(kmap.delete, b"")
        assert outcome(vm.keys) == outcome(kmap.keys)


def test_prog_array_errnos_match_kernel(kernel):
    from bpforge.kernel.syscall import close_fd, prog_load

    loaded = prog_load(bytes.fromhex("b700000002000000" "9500000000000000"), "xdp")
    assert loaded.fd is not None
    mapdef = md("prog_array", max_entries=2)
    vm = create_map(mapdef)
    handle = vm.register(object()).to_bytes(4, "little")
    try:
        with KernelMap.create(mapdef) as kmap:
            fd = loaded.fd.to_bytes(4, "little")
            bad = (loaded.fd + 1000).to_bytes(4, "little")
            for op, mine, theirs in (
                ("lookup", (b"\0\0\0\0",), (b"\0\0\0\0",)), ("delete", (b"\0\0\0\0",), (b"\0\0\0\0",)),
                ("delete", (b"\5\0\0\0",), (b"\5\0\0\0",)), ("update", (b"\0\0\0\0", bad), (b"\0\0\0\0", bad)),
                ("update", (b"\5\0\0\0", handle), (b"\5\0\0\0", fd)), ("update", (b"\0\0\0\0", handle, 1), (b"\0\0\0\0", fd, 1)),
                ("update", (b"\0\0\0\0", handle), (b"\0\0\0\0", fd)), ("delete", (b"\0\0\0\0",), (b"\0\0\0\0",)),
            ):
                a, b = outcome(getattr(vm, op), *mine), outcome(getattr(kmap, op), *theirs)
                assert a[0] == b[0] and (a[0] == "ok" or a == b), (op, a, b)
            assert [k for k, _ in vm.items()] == [k for k, _ in kmap.items()] == []
    finally:
        close_fd(loaded.fd)


# ---- the program side -----------------------------------------------------------------------------------------

def load(text: str, maps, kernel):
    from bpforge.isa.asm import parse
    from bpforge.kernel.program import load_insns

    return load_insns(parse(text).sections[0].insns, "xdp", maps=maps)


def _stores(offset: int, data: bytes) -> str:
    return "".join(f"  *(u32 *)(r10 - {offset - i}) = {int.from_bytes(data[i:i + 4], 'little'):#x}\n"
                   for i in range(0, len(data), 4))


def pointer_program(key: bytes, steps) -> str:
    """Look `key` up, keep the pointer, run `steps` (("update", key, value) / ("delete", key)) through the
    helpers, return the first 4 bytes behind the pointer (0xdead: the lookup found nothing)."""
    text = _stores(16, key.ljust(8, b"\0")) + "  r1 = map_fd(0) ll\n  r2 = r10\n  r2 += -16\n  call 1\n" \
        "  if r0 == 0 goto miss\n  r7 = r0\n"
    for name, step_key, *value in steps:
        text += _stores(16, step_key.ljust(8, b"\0")) + "  r1 = map_fd(0) ll\n  r2 = r10\n  r2 += -16\n"
        if name == "update":
            text += _stores(24, value[0]) + "  r3 = r10\n  r3 += -24\n  r4 = 0\n  call 2\n"
        else:
            text += "  call 3\n"
    return text + "  r0 = *(u32 *)(r7 + 0)\n  exit\nmiss:\n  r0 = 0xdead\n  exit\n"


def lpm(n: int) -> bytes:
    return (32).to_bytes(4, "little") + n.to_bytes(4, "big")


def plain(n: int) -> bytes:
    return n.to_bytes(4, "little")


POINTER_MAPS = [
    ("hash", 0, plain), ("hash", BPF_F_NO_PREALLOC, plain), ("percpu_hash", 0, plain),
    ("percpu_hash", BPF_F_NO_PREALLOC, plain), ("lru_hash", 0, plain), ("lru_percpu_hash", 0, plain),
    ("lpm_trie", BPF_F_NO_PREALLOC, lpm), ("array", 0, plain), ("percpu_array", 0, plain),
]
STEPS = [
    [("update", 1, b"BBBB")],
    [("update", 1, b"BBBB"), ("update", 1, b"CCCC")],
    [("update", 1, b"BBBB"), ("update", 1, b"CCCC"), ("update", 1, b"DDDD")],
    [("update", 2, b"BBBB"), ("update", 1, b"CCCC"), ("update", 2, b"DDDD"), ("update", 1, b"EEEE")],
    [("delete", 1), ("update", 2, b"BBBB")],
    [("delete", 1), ("update", 2, b"BBBB"), ("update", 3, b"CCCC")],
]


POINTER_CASES = [pytest.param(type_name, flags, key_of, steps,
                              id=f"{type_name}-{flags:#x}-" + "-".join(f"{s[0][0]}{s[1]}" for s in steps))
                 for type_name, flags, key_of in POINTER_MAPS for steps in STEPS
                 if "array" not in type_name or all(s[0] == "update" for s in steps)]  # arrays cannot delete


@pytest.mark.parametrize("type_name,flags,key_of,steps", POINTER_CASES)
def test_where_a_looked_up_pointer_leads_matches_kernel(type_name, flags, key_of, steps, cpus, kernel):
    """After updates and deletes through the helpers, does the old pointer see the old value, the new one,
    or another element's (a recycled element)?"""
    key_size = 8 if type_name == "lpm_trie" else 4
    mapdef = md(type_name, key_size, 4, 8, flags)
    vm = create_map(mapdef, num_cpus=kernel_maps.possible_cpus())
    on_cpu(cpus[0], vm)
    steps = [(name, key_of(k), *rest) for name, k, *rest in steps]
    preload = b"AAAA" * (vm.syscall_value_size // 4) if "percpu" not in type_name else b"AAAA\0\0\0\0" * vm.num_cpus
    with KernelMap.create(mapdef) as kmap:
        for m in (vm, kmap):
            m.update(key_of(1), preload)
            m.update(key_of(5), preload)
        with load(pointer_program(key_of(1), steps), [kmap], kernel) as prog:
            theirs = prog.test_run(bytes(64)).retval
        pointer = vm.prog_lookup(key_of(1), cpus[0])
        for name, step_key, *value in steps:
            err = vm.prog_update(step_key, value[0], 0, cpus[0]) if name == "update" else vm.prog_delete(step_key)
            assert err == 0
        assert int.from_bytes(pointer[:4], "little") == theirs
        assert sorted(vm.keys()) == sorted(kmap.keys())
        assert {k: vm.lookup(k) for k in vm.keys()} == {k: kmap.lookup(k) for k in kmap.keys()}


@st.composite
def program_runs(draw):
    """Programs run one after another, each on some CPU: look a key up, update and delete through the
    helpers, return what the pointer shows at the end."""
    type_name, flags, key_of = draw(st.sampled_from([m for m in POINTER_MAPS if "array" not in m[0]]))
    max_entries = draw(st.sampled_from([2, 3, 8]))
    key = st.integers(1, 4)
    step = st.one_of(st.tuples(st.just("update"), key, st.binary(min_size=4, max_size=4)),
                     st.tuples(st.just("delete"), key))
    run = st.tuples(st.integers(0, 7), key, st.lists(step, max_size=6))
    return type_name, flags, key_of, max_entries, draw(st.lists(run, min_size=1, max_size=5))


def test_pointers_across_program_runs_and_cpus_match_kernel(cpus, kernel):
    @settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=SLOW_OK)
    @given(program_runs())
    def check(case):
        type_name, flags, key_of, max_entries, runs = case
        mapdef = md(type_name, 8 if type_name == "lpm_trie" else 4, 4, max_entries, flags)
        vm = create_map(mapdef, num_cpus=kernel_maps.possible_cpus())
        try:
            with KernelMap.create(mapdef) as kmap:
                for cpu_pick, looked_up, steps in runs:
                    cpu = cpus[cpu_pick % len(cpus)]
                    on_cpu(cpu, vm)
                    steps = [(name, key_of(k), *rest) for name, k, *rest in steps]
                    with load(pointer_program(key_of(looked_up), steps), [kmap], kernel) as prog:
                        theirs = prog.test_run(bytes(64)).retval
                    pointer = vm.prog_lookup(key_of(looked_up), cpu)
                    for name, step_key, *value in steps:
                        if pointer is None:
                            break  # the program returned at once
                        if name == "update":
                            vm.prog_update(step_key, value[0], 0, cpu)
                        else:
                            vm.prog_delete(step_key, cpu)
                    mine = 0xDEAD if pointer is None else int.from_bytes(pointer[:4], "little")
                    assert mine == theirs
                    assert sorted(vm.keys()) == sorted(kmap.keys())
                    assert {k: vm.lookup(k) for k in vm.keys()} == {k: kmap.lookup(k) for k in kmap.keys()}
        finally:
            on_cpu(cpus[0], vm)

    check()


LOOKUP_FROM_PACKET = """
  r2 = *(u32 *)(r1 + 0)
  r3 = *(u32 *)(r1 + 4)
  r4 = r2
  r4 += 4
  if r4 > r3 goto out
  r5 = *(u32 *)(r2 + 0)
  *(u32 *)(r10 - 4) = r5
  r1 = map_fd(0) ll
  r2 = r10
  r2 += -4
  call 1
  if r0 == 0 goto out
  r0 = 1
  exit
out:
  r0 = 0
  exit
"""


@st.composite
def lru_traffic(draw):
    max_entries = draw(st.sampled_from([4, 8, 16, 64]))
    key = st.integers(0, 3 * max_entries)
    op = st.one_of(st.tuples(st.just("insert"), key), st.tuples(st.just("insert"), key),
                   st.tuples(st.just("touch"), key), st.tuples(st.just("touch"), key),
                   st.tuples(st.just("delete"), key), st.tuples(st.just("cpu"), st.integers(0, 7)))
    return draw(st.sampled_from(LRU)), draw(st.sampled_from([0, BPF_F_NO_COMMON_LRU])), max_entries, \
        draw(st.lists(op, min_size=1, max_size=80))


def test_program_lookups_mark_lru_elements_as_the_kernel_does(cpus, kernel):
    @settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=SLOW_OK)
    @given(lru_traffic())
    def check(traffic):
        type_name, flags, max_entries, ops = traffic
        mapdef = md(type_name, 4, 8, max_entries, flags)
        vm = create_map(mapdef, num_cpus=kernel_maps.possible_cpus())
        cpu = cpus[0]
        on_cpu(cpu, vm)
        with KernelMap.create(mapdef) as kmap, load(LOOKUP_FROM_PACKET, [kmap], kernel) as prog:
            try:
                for step, (name, n) in enumerate(ops):
                    key = n.to_bytes(4, "little")
                    if name == "cpu":
                        cpu = cpus[n % len(cpus)]
                        on_cpu(cpu, vm)
                    elif name == "insert":
                        value = bytes(vm.syscall_value_size)
                        assert outcome(vm.update, key, value) == outcome(kmap.update, key, value)
                    elif name == "delete":
                        assert outcome(vm.delete, key) == outcome(kmap.delete, key)
                    else:
                        found = prog.test_run(key + bytes(60)).retval
                        assert (vm.prog_lookup(key, cpu) is not None) == bool(found), step
                    assert sorted(vm.keys()) == sorted(kmap.keys()), f"step {step}: {name} {n}"
            finally:
                on_cpu(cpus[0], vm)

    check()


def ringbuf_program(size: int, count: int, hold: bool, discard_every: int) -> str:
    """Reserve `size` bytes `count` times (submitting, or discarding every `discard_every`-th), return how
    many reservations succeeded; with `hold`, a first 8-byte record stays reserved until the end."""
    text = "  r6 = 0\n  r8 = 0\n"
    if hold:
        text += "  r1 = map_fd(0) ll\n  r2 = 8\n  r3 = 0\n  call 131\n  if r0 == 0 goto fail\n  r8 = r0\n"
    for i in range(count):
        commit = 133 if discard_every and i % discard_every == 0 else 132
        text += (f"  r1 = map_fd(0) ll\n  r2 = {size}\n  r3 = 0\n  call 131\n  if r0 == 0 goto skip{i}\n"
                 f"  r1 = r0\n  r2 = 0\n  call {commit}\n  r6 += 1\nskip{i}:\n")
    if not hold:
        return text + "  r0 = r6\n  exit\n"
    return text + "  r1 = r8\n  r2 = 0\n  call 132\n  r0 = r6\n  exit\nfail:\n  r0 = 0xdead\n  exit\n"


@pytest.mark.parametrize("ring,size", [(4096, 1), (4096, 8), (4096, 100), (4096, 2040), (4096, 4080),
                                       (4096, 4088), (8192, 504), (8192, 8184)])
@pytest.mark.parametrize("hold,discard_every", [(False, 0), (True, 0), (False, 3)])
def test_ringbuf_capacity_matches_kernel(ring, size, hold, discard_every, kernel):
    count = ring // ((size + 15) & ~7) + 2
    mapdef = md("ringbuf", key_size=0, value_size=0, max_entries=ring)
    with KernelMap.create(mapdef) as kmap, load(ringbuf_program(size, count, hold, discard_every), [kmap],
                                                 kernel) as prog:
        theirs = prog.test_run(bytes(64)).retval
    rb = create_map(mapdef)
    held = rb.reserve(8, 0) if hold else None
    mine = 0
    for i in range(count):
        buf = rb.reserve(size, 0)
        if buf is not None:
            (rb.discard if discard_every and i % discard_every == 0 else rb.submit)(buf)
            mine += 1
    if held is not None:
        rb.submit(held)
    assert mine == theirs
