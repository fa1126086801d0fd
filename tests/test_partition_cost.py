"""The partitioner's cost model: which paths go to BPF and why, the predicted speedup, the overrides."""

from __future__ import annotations

import pytest

from bpforge.partition.analyze import analyze_source
from bpforge.partition.cost import Costs, choose_cut, measure_socket_ns
from bpforge.partition.profile import PathProfile, Profile

APP = '''
import bpforge
cache = bpforge.HashMap(key=bpforge.U32, value=bpforge.U32, max_entries=8)
store = {}

@bpforge.offload(hook="xdp", port=9)
def handle(p: bytes):
    if p.startswith(b"g"):
        v = cache.get(p[1])
        if v is None:
            return b"miss"
        return b"hit"
    store[p] = 1
    return b"ok"
'''
COSTS = Costs(socket_ns=20_000, xdp_pass_ns=100, xdp_tx_ns=300, source="test")


def setup():
    a = analyze_source(APP)
    ends = {p.end_line: p.index for p in a.paths}
    lines = APP.splitlines()
    hit, miss, store = (ends[next(i for i, l in enumerate(lines, 1) if t in l)] for t in ('b"hit"', 'b"miss"', 'b"ok"'))
    profile = Profile(100, [PathProfile(hit, 70, 0.7, 2000), PathProfile(miss, 20, 0.2, 1800),
                            PathProfile(store, 10, 0.1, 3000)], 0)
    return a, profile, hit, miss, store


def test_offloadable_cheaper_paths_go_to_bpf_with_their_reasons():
    a, profile, hit, miss, store = setup()
    cut = choose_cut(a, profile, {hit: 200, miss: 150}, COSTS, prefix_ns={store: 80})
    assert cut.offloaded == {hit, miss}
    by = {d.index: d for d in cut.decisions}
    assert by[store].where == "user" and "module state store" in by[store].why
    assert by[hit].cost_ns == 500 and by[store].cost_ns == 20_000 + 3000 + 100 + 80
    python = 0.7 * 22_000 + 0.2 * 21_800 + 0.1 * 23_000
    partitioned = 0.7 * 500 + 0.2 * 450 + 0.1 * 23_180
    assert cut.predicted_speedup == pytest.approx(python / partitioned)
    assert cut.as_json()["offloaded_paths"] == sorted([hit, miss])


def test_overrides_and_no_bpf_half():
    a, profile, hit, miss, store = setup()
    cut = choose_cut(a, profile, {hit: 200, miss: 150}, COSTS, keep_user=frozenset({miss}))
    assert cut.offloaded == {hit} and "--keep-user" in {d.index: d for d in cut.decisions}[miss].why
    slow = choose_cut(a, profile, {hit: 50_000, miss: 150}, COSTS)
    assert hit not in slow.offloaded and "cheaper in user space" in {d.index: d for d in slow.decisions}[hit].why
    forced = choose_cut(a, profile, {hit: 50_000, miss: 150}, COSTS, force_offload=frozenset({hit}))
    assert hit in forced.offloaded
    none = choose_cut(a, profile, {}, COSTS)
    assert none.offloaded == frozenset() and none.predicted_speedup == pytest.approx(1.0)


def test_the_socket_round_trip_is_measured():
    assert measure_socket_ns(50) > 0  # a real round trip happened (its size is the machine's business)
