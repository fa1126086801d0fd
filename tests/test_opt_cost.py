"""The performance models: size in slots, the calibrated latency model, block weights from the VM, and the
calibration itself (kernel tests skip without bpf())."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpforge.errors import BpforgeError
from bpforge.isa.asm import assemble
from bpforge.isa.forms import FORMS
from bpforge.isa.maptypes import MapSpec
from bpforge.isa.ops import decode_ops
from bpforge.opt.calibrate import calibrate, helper_benches, insn_benches
from bpforge.opt.cost import LatencyModel, block_weights, latency_cost, profile, size_cost, slot_costs

MODEL = LatencyModel.default()


def toy_model(**insn_ns) -> LatencyModel:
    return LatencyModel({"add64_reg": 0.1, "div64_reg": 2.5, "jump.taken": 0.4, "jump.not_taken": 0.1, **insn_ns},
                        {"1": 7.0, "1.array": 0.3}, helper_default=20.0, insn_default=0.2)


# ---- size ----------------------------------------------------------------------------------------------

def test_size_counts_slots_and_lddw_twice():
    assert size_cost(assemble("r0 = 1\nexit")) == 2
    assert size_cost(assemble("r0 = 0x123456789 ll\nexit")) == 3
    assert size_cost([]) == 0


# ---- the shipped model ------------------------------------------------------------------------------------

def test_default_model_is_calibrated_here_and_complete():
    assert MODEL.machine["kernel"] and MODEL.machine["cpu"]
    for key in ("add64_reg", "add64_imm", "mov64_reg", "mul64_reg", "div64_reg", "ldx32", "stx64", "lddw",
                "atomic_add64", "jump.taken", "jump.not_taken", "ja"):
        assert key in MODEL.insn_ns, key
        assert MODEL.insn_ns[key] > 0 and math.isfinite(MODEL.insn_ns[key])
    assert {"1", "1.array", "1.hash", "2", "5"} <= set(MODEL.helper_ns)
    assert all(v > 0 for v in MODEL.helper_ns.values())
    assert MODEL.helper_default > 0 and MODEL.insn_default > 0


def test_default_model_ranks_what_the_cpu_ranks():
    assert MODEL.insn("div64_reg") > MODEL.insn("mul64_reg") > MODEL.insn("add64_reg")
    assert MODEL.insn("atomic_add64") > MODEL.insn("stx64")
    assert MODEL.helper(1, "hash") > MODEL.helper(1, "array")  # the verifier inlines array lookups


def test_model_round_trips_through_json():
    again = LatencyModel.from_json(MODEL.to_json())
    assert again == MODEL


def test_malformed_model_is_an_error(tmp_path):
    with pytest.raises(BpforgeError):
        LatencyModel.from_json({"format": 99})
    with pytest.raises(BpforgeError):
        LatencyModel.from_json({"format": 1, "insn_ns": {}})
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(BpforgeError):
        LatencyModel.load(bad)


# ---- latency_cost -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", [MODEL, toy_model()], ids=["calibrated", "toy"])
def test_div_costs_more_than_add_and_a_helper_more_than_alu(model):
    add = latency_cost(assemble("r0 += r1\nexit"), model)
    div = latency_cost(assemble("r0 /= r1\nexit"), model)
    call = latency_cost(assemble("call 1\nexit"), model)
    assert div > add
    assert call > add


def test_unknown_classes_fall_back():
    model = toy_model()
    assert latency_cost(assemble("r0 -= r1"), model) == model.insn_default
    assert latency_cost(assemble("call 99"), model) == model.helper_default


def test_weights_change_the_estimate():
    insns = assemble("r0 /= r1\nr0 += r1\nexit")
    model = toy_model(exit=0.0)
    once = latency_cost(insns, model)
    assert latency_cost(insns, model, {0: 1.0, 1: 1.0, 2: 1.0}) == pytest.approx(once)
    assert latency_cost(insns, model, {0: 3.0, 1: 1.0, 2: 1.0}) == pytest.approx(once + 2 * 2.5)
    assert latency_cost(insns, model, {1: 1.0}) == pytest.approx(0.1)  # absent slots never ran


def test_taken_fraction_prices_jumps():
    insns = assemble("if r1 == 0 goto +1\nr0 += r1\nexit")
    model = toy_model(exit=0.0)
    assert slot_costs(insns, model)[0] == pytest.approx(0.25)  # unknown: half and half
    assert slot_costs(insns, model, taken={0: 1.0})[0] == pytest.approx(0.4)
    assert slot_costs(insns, model, taken={0: 0.0})[0] == pytest.approx(0.1)


def test_map_helpers_cost_their_map_type():
    maps = [MapSpec.of("array", 4, 8, 1, name="a", ref=3), MapSpec.of("hash", 4, 8, 1, name="h", ref=5)]
    on_array = assemble("r1 = map_fd(3) ll\nr2 = r10\nr2 += -4\ncall 1\nexit")
    on_hash = assemble("r1 = map_fd(5) ll\nr2 = r10\nr2 += -4\ncall 1\nexit")
    model = toy_model()
    assert slot_costs(on_array, model, maps=maps)[4] == 0.3
    assert slot_costs(on_hash, model, maps=maps)[4] == 7.0  # no "1.hash": the generic figure
    assert slot_costs(on_array, model)[4] == 7.0  # without maps the type is unknown
    # r1 overwritten after the lddw: the map is unknown again
    clobbered = assemble("r1 = map_fd(3) ll\nr1 = r6\ncall 1\nexit")
    assert slot_costs(clobbered, model, maps=maps)[3] == 7.0


# ---- block weights --------------------------------------------------------------------------------------

LOOP = """
    r2 = *(u32 *)(r1 + 4)
    r1 = *(u32 *)(r1 + 0)
    r3 = r1
    r3 += 1
    if r3 > r2 goto out
    r4 = *(u8 *)(r1 + 0)
    r0 = 0
loop:
    if r4 == 0 goto out
    r0 += 1
    r4 -= 1
    goto loop
out:
    r0 = 2
    exit
"""


@given(st.lists(st.integers(0, 20), min_size=1, max_size=5))
def test_block_weights_count_loop_iterations(counts):
    insns = assemble(LOOP)
    packets = [bytes([n]) + bytes(15) for n in counts]
    weights = block_weights(insns, "xdp", packets=packets)
    ops = decode_ops(insns)
    assert set(weights) == {slot for slot, op in enumerate(ops) if op is not None}
    assert weights[0] == 1.0 and weights[len(ops) - 1] == 1.0  # entry and exit: once per run
    mean = sum(counts) / len(counts)
    assert weights[8] == pytest.approx(mean)  # the loop body (r0 += 1)
    assert weights[7] == pytest.approx(mean + 1)  # its test, once more to leave


def test_profile_reports_taken_fractions():
    insns = assemble(LOOP)
    prof = profile(insns, "xdp", packets=[bytes([3]) + bytes(15)])
    assert prof.runs == 1 and prof.faults == 0
    assert prof.taken[7] == pytest.approx(1 / 4)  # taken once (to leave) in four tests
    assert prof.taken[4] == 0.0


def test_weights_feed_latency_cost():
    insns = assemble(LOOP)
    model = toy_model(exit=0.0)
    short = latency_cost(insns, model, block_weights(insns, "xdp", packets=[bytes(16)]))
    long = latency_cost(insns, model, block_weights(insns, "xdp", packets=[bytes([50]) + bytes(15)]))
    assert long > short


def test_block_weights_use_maps_by_ref():
    maps = [MapSpec.of("array", 4, 8, 4, name="counts", ref=7)]
    insns = assemble("""
        *(u32 *)(r10 - 4) = 0
        r1 = map_fd(7) ll
        r2 = r10
        r2 += -4
        call 1
        if r0 == 0 goto +2
        r1 = 1
        lock *(u64 *)(r0 + 0) += r1
        r0 = 2
        exit
    """)
    weights = block_weights(insns, "xdp", maps, [bytes(64)] * 3)
    assert weights[8] == 1.0  # the lookup found element 0: the atomic ran every time


def test_block_weights_need_a_packet():
    with pytest.raises(BpforgeError):
        block_weights(assemble("exit"), "xdp", packets=[])


def test_faulting_runs_are_counted_up_to_the_fault():
    insns = assemble("r0 = *(u64 *)(r1 + 4096)\nexit")  # past the context: the VM faults
    prof = profile(insns, "xdp", packets=[bytes(64)])
    assert prof.faults == 1 and prof.weights[0] == 1.0 and prof.weights[1] == 0.0


# ---- calibration ------------------------------------------------------------------------------------

def test_benchmarks_cover_the_alu_and_memory_forms():
    keys = {b.key for b in insn_benches()}
    for form in FORMS:
        if form.kernel and form.kind in ("alu", "mov", "neg", "end", "ldx", "st", "stx", "atomic"):
            assert form.name in keys, form.name
    assert {"lddw", "jump.taken", "jump.not_taken", "ja", "call.local"} <= keys
    assert {"1.array", "1.hash", "2.hash", "5"} <= {b.key for b in helper_benches()}


def test_benchmark_programs_have_the_body_they_claim():
    for bench in insn_benches() + helper_benches():
        base, body = bench.program(0), bench.program(bench.copies)
        extra = len(bench.tail) if bench.tail else 0
        assert len(body) - len(base) - extra == bench.copies * len(bench.group), bench.key
        assert body[-1 - extra].form.name == "exit"


def test_calibrate_on_a_tiny_repeat_gives_positive_costs(kernel):
    seen = []
    model = calibrate(repeat=50, trials=1, keys=["add64_reg", "div64_reg", "jump.not_taken", "1.array", "5"],
                      progress=lambda key, mode, ns: seen.append((key, mode)))
    assert {"add64_reg", "div64_reg", "jump.not_taken", "mov64_imm"} <= set(model.insn_ns)  # mov64_imm: an extra
    assert all(v >= 0 and math.isfinite(v) for v in model.insn_ns.values())
    assert all(v > 0 for k, v in model.insn_ns.items() if k != "exit")
    assert model.helper_ns["1.array"] > 0 and model.helper_ns["5"] > 0
    assert ("add64_reg", "chain") in seen and ("add64_reg", "independent") in seen
    assert model.machine["repeat"] == 50
    LatencyModel.from_json(model.to_json())  # what bench/calibrate.py writes loads again



def test_repeated_runs_reach_the_steady_state():
    # the first run finds the flow missing and inserts it; later runs find it
    maps = [MapSpec.of("hash", 4, 8, 16, name="flows", ref=0)]
    insns = assemble("""
        *(u32 *)(r10 - 4) = 0
        *(u64 *)(r10 - 16) = 0
        r1 = map_fd(0) ll
        r2 = r10
        r2 += -4
        call 1
        if r0 != 0 goto +8
        r1 = map_fd(0) ll
        r2 = r10
        r2 += -4
        r3 = r10
        r3 += -16
        r4 = 0
        call 2
        r0 = 2
        exit
    """)
    once = profile(insns, "xdp", maps, [bytes(64)])
    steady = profile(insns, "xdp", maps, [bytes(64)], repeat=4)
    assert once.weights[15] == 1.0 and once.weights[17] == 1.0  # the insert ran
    assert steady.runs == 4 and steady.weights[15] == pytest.approx(1 / 4)
    assert steady.taken[7] == pytest.approx(3 / 4)
    with pytest.raises(BpforgeError):
        profile(insns, "xdp", maps, [bytes(64)], repeat=0)
