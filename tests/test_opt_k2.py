"""The optimizer on K2's benchmark programs (../shared/bench/k2): every output kernel-accepted, every change
proved, never longer; and the test-runnable ones give the same retval, packet and maps as the original in
the kernel on random packets (a few hundred here; `-m slow` runs 10,000 per program with the search on)."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from bpforge.formats import load_program
from bpforge.kernel import kernel_available
from bpforge.kernel.maps import KernelMap
from bpforge.kernel.program import load_insns
from bpforge.kernel.testrun import TestRunError
from bpforge.kernel.testrun import test_run as kernel_test_run
from bpforge.opt.optimize import OptimizeOptions
from bpforge.opt.run import optimize_loaded

from difftest.packets import random_frame

K2 = Path(__file__).resolve().parent.parent.parent / "shared" / "bench" / "k2"
TEST_RUNNABLE = {"xdp", "sched_cls", "socket_filter"}

pytestmark = pytest.mark.skipif(not K2.is_dir(), reason=f"K2's benchmark programs are not here ({K2})")


def _table() -> dict[str, tuple[str, int, int]]:
    rows = {}
    if K2.is_dir():
        for line in (K2 / "README.md").read_text().splitlines():
            m = re.match(r"\| (\S+) \| [^|]+ \| (\w+) \| (\d+) \| (\d+) \|", line)
            if m:
                rows[m[1]] = (m[2], int(m[3]), int(m[4]))
    return rows


TABLE = _table()
SMALL = [name for name, (_, clang, _) in TABLE.items() if clang < 200]
RUNNABLE = [name for name in SMALL if TABLE[name][0] in TEST_RUNNABLE]


def _optimized(name: str, *, budget: float | None, search: bool):
    loaded = load_program(K2 / f"{name}.insns", prog_type=TABLE[name][0])
    return loaded, optimize_loaded(loaded, OptimizeOptions(budget=budget, search=search, jobs=1, seed=1))


@pytest.mark.parametrize("name", SMALL)
def test_rule_passes_shrink_and_stay_accepted(name):
    loaded, report = _optimized(name, budget=None, search=False)
    assert report.after <= report.before
    assert all(change.proof == "proved" for change in report.outcome.changes)
    if kernel_available() is None:
        assert report.kernel_accepted is True, report.notes


def _maps(loaded):
    return {spec.ref: KernelMap.create(spec) for spec in loaded.maps}


UNREADABLE = {"perf_event_array", "ringbuf", "prog_array", "array_of_maps", "hash_of_maps", "devmap", "cpumap",
              "xskmap", "devmap_hash", "sockmap", "sockhash"}  # maps user space cannot read back (or not as data)


def _contents(kmap: KernelMap) -> dict[bytes, bytes] | None:
    return None if kmap.type_name in UNREADABLE else dict(kmap.items())


def _outcome(prog, frame: bytes):
    try:
        result = kernel_test_run(prog, frame)
    except TestRunError as err:  # a frame the kernel does not run an skb program on (too short for its headers)
        return ("refused", err.errno)
    return (result.retval, result.data_out)


def _same_behaviour(loaded, original, optimized, packets: int, seed: int) -> None:
    prog_type = loaded.prog_type
    cpu = sorted(os.sched_getaffinity(0))[0]
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # per-CPU maps: both programs must count on the same CPU
    maps_a, maps_b = _maps(loaded), _maps(loaded)
    try:
        with load_insns(original, prog_type, maps=maps_a) as a, load_insns(optimized, prog_type, maps=maps_b) as b:
            rng = random.Random(seed)
            for n in range(packets):
                frame = random_frame(rng)
                assert _outcome(a, frame) == _outcome(b, frame), f"packet {n}: {frame.hex()}"
        for ref in maps_a:
            assert _contents(maps_a[ref]) == _contents(maps_b[ref]), f"map {ref} differs"
    finally:
        os.sched_setaffinity(0, affinity)
        for kmap in [*maps_a.values(), *maps_b.values()]:
            kmap.close()


@pytest.mark.skipif(kernel_available() is not None, reason=f"needs bpf(): {kernel_available()}")
@pytest.mark.parametrize("name", RUNNABLE)
def test_optimized_programs_behave_as_the_originals_in_the_kernel(name):
    loaded, report = _optimized(name, budget=None, search=False)
    _same_behaviour(loaded, report.outcome.original, report.outcome.insns, packets=300, seed=7)


@pytest.mark.slow
@pytest.mark.skipif(kernel_available() is not None, reason=f"needs bpf(): {kernel_available()}")
@pytest.mark.parametrize("name", RUNNABLE)
def test_searched_programs_behave_as_the_originals_on_10000_packets(name):
    loaded, report = _optimized(name, budget=30, search=True)
    assert report.kernel_accepted is True
    _same_behaviour(loaded, report.outcome.original, report.outcome.insns, packets=10_000, seed=11)
