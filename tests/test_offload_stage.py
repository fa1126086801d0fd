"""Multi-stage XDP processing (offload.stage): the cut, the device and host programs (our verifier's and the
kernel's verdicts), and staged runs equal to the original on the differential harness's xdp_lb scenario —
the device part on the VM with the device's copies of its maps, the host part on the VM or in the kernel
with the host's; retval, packet and every map compared after each frame of a sequence (maps carry over, so
connections made by one frame are found by the next)."""

from __future__ import annotations

import random

import pytest
from difftest import examples
from difftest import packets as P

from bpforge import vm
from bpforge.analysis import build_cfg
from bpforge.analysis.frame import MapHandle, frame_states
from bpforge.isa import assemble
from bpforge.isa.helpers import helper_id
from bpforge.isa.maptypes import MapSpec
from bpforge.isa.ops import Call
from bpforge.offload import stage
from bpforge.verifier.check import verify_program
from bpforge.vm.maps import create_map

XDP_DROP, XDP_PASS = 1, 2
CLOCK = 5_000_000_000  # a fixed ktime for both runs: conn_table's atime is then compared too
UNSUPPORTED_HELPERS = ("bpf_ktime_get_ns", "bpf_csum_diff")
HOST_MAP_TYPES = ("lru_hash", "percpu_array")  # what the NFP-like profile cannot hold


# ---- xdp_lb on the NFP-like profile -----------------------------------------------------------------------

def nfp_like(insns, maps) -> tuple[frozenset[int], frozenset[int]]:
    """What the profile check reports (taken here as parameters): calls of unsupported helpers and of
    helpers on maps the device cannot hold (r1's map, as analysis.frame knows it) are blocked; hash and
    array maps are the device's."""
    cfg = build_cfg(insns)
    states = frame_states(cfg, 0)
    unsupported = {helper_id(n) for n in UNSUPPORTED_HELPERS}
    blocked = set()
    for slot, op in enumerate(cfg.ops):
        if isinstance(op, Call) and op.kind == "helper":
            handle = states.get(slot, (None,) * 11)[1]
            if op.target in unsupported or isinstance(handle, MapHandle) and maps[handle.ref].type_name in HOST_MAP_TYPES:
                blocked.add(slot)
    return frozenset(blocked), frozenset(i for i, m in enumerate(maps) if m.type_name in ("hash", "array"))


def _lb(several: bool):
    scenario, twin = examples.xdp_lb("")
    program = scenario.program
    blocked, device_maps = nfp_like(program.insns, program.maps)
    cut = stage.plan_cut(program.insns, program.maps, blocked, device_maps, several=several)
    staged = stage.split(program.insns, program.maps, cut)
    return program, blocked, device_maps, cut, staged, scenario.packets + twin.packets


@pytest.fixture(scope="module")
def lb():
    """xdp_lb cut at one point (`plan_cut(several=False)`: the best single dominating cut)."""
    return _lb(False)


@pytest.fixture(scope="module")
def lbm():
    """xdp_lb cut as `plan_cut` chooses: at several points."""
    return _lb(True)


def fresh_maps(program, cpus: int = 1):
    out = []
    for i, spec in enumerate(program.maps):
        m = create_map(spec, num_cpus=cpus)
        for index, key, value in program.setup:
            if index == i:
                m.update(key, value * cpus if spec.type_name.startswith("percpu") else value)
        out.append(m)
    return out


def contents(m) -> list[tuple[bytes, bytes]]:
    return sorted((bytes(k), bytes(v)) for k, v in m.items())


def lb_frames(seed: int, count: int) -> list[bytes]:
    """Random frames aimed at xdp_lb: VIPs, clients and reals as addresses, its ports; all kinds the
    generator makes (VLAN, fragments, options, IPv6 extension headers, ARP, truncated)."""
    rng = random.Random(seed)
    v4 = (examples.VIP4, examples.VIP4_ANY, examples.VIP4_BYPASS, examples.VIP4_FAR, examples.VIP4_NO_RING,
          examples.REALS[0][0]) + examples.CLIENTS4
    v6 = (examples.VIP6, examples.REALS[2][0]) + examples.CLIENTS6
    out: list[bytes] = []
    while len(out) < count:
        frame = P.random_frame(rng, v4_addrs=v4, v6_addrs=v6, ports=(80, 53, 443, 40000, 41000, 42000, 5353))
        if len(frame) >= P.ETH_HLEN if hasattr(P, "ETH_HLEN") else 14:  # what a test run takes
            out.append(frame)
    return out


def compare_sequence(program, staged, frames, *, device="interp", host="interp", host_maps=None,
                     points: dict | None = None) -> dict[str, int]:
    """Run the frames one after the other through the original (one VM, all maps) and staged; every
    retval, packet and map must be equal after each. Returns how many frames each stage decided (and
    counts in `points` how many the device handed over at each point)."""
    original, device_maps = fresh_maps(program), fresh_maps(program)
    host_maps = host_maps if host_maps is not None else fresh_maps(program)
    config = program.config_maps
    decided: dict[str, int] = {}
    whole = vm.from_insns(program.insns, original)
    for n, frame in enumerate(frames):
        want = vm.Machine(whole, clock_ns=CLOCK).run(frame, "xdp")
        got = stage.run_staged(staged, frame, device_maps=device_maps, host_maps=host_maps, device=device,
                               host=host, vm_options={"clock_ns": CLOCK})
        where = f"frame {n} ({frame.hex()}), decided by the {got.stage} (tag {got.tag})"
        assert got.retval == want.retval & 0xFFFFFFFF, where
        assert got.data_out == want.data_out, where
        for i, (a, b) in enumerate(zip(original, got.maps)):
            if i not in config and b is not None:
                assert contents(a) == contents(b), f"{where}: map {program.maps[i].name}"
        decided[f"{got.stage}/{got.tag}"] = decided.get(f"{got.stage}/{got.tag}", 0) + 1
        if points is not None and got.point is not None:
            points[got.point] = points.get(got.point, 0) + 1
    for i in config:
        assert contents(original[i]) == contents(got.maps[i])
    return decided


def test_xdp_lb_cut_is_found_and_explained(lb):
    program, blocked, device_maps, cut, staged, _ = lb
    assert cut.point == 10  # after the Ethernet check and the ethertype's load: the IPv4 and IPv6 paths fork
    assert [m for i, m in enumerate(program.maps) if i in device_maps] and not cut.device_maps  # none used early
    text = cut.explain()
    assert text.startswith("cut at insn 10: the device runs insns 0-9, 433")
    assert "blocked after it: insns 113 (map lb_stats" in text and "bpf_map_lookup_elem" in text
    kinds = {q.place: q for q in cut.pieces}
    assert kinds["r2"].kind == "scalar" and (kinds["r2"].lo, kinds["r2"].hi, kinds["r2"].size) == (0, 0xFFFF, 2)
    assert (kinds["r1"].kind, kinds["r1"].value, kinds["r1"].range) == ("pkt", 14, 14)
    assert kinds["r9"].kind == "pkt_end" and kinds["r0"].kind == "const"
    assert cut.meta_size == 8 and cut.exact
    assert set(blocked) <= set(cut.blocked) and min(cut.blocked) > 10  # all of them after the cut


def test_xdp_lb_programs_pass_our_verifier(lb):
    program, *_, staged, _ = lb
    for code in (staged.device, staged.host):
        assert verify_program(code, "xdp", program.maps).accepted


def test_xdp_lb_programs_pass_the_kernel_verifier(kernel, lb):
    program, *_, staged, _ = lb
    maps = [kernel.KernelMap.create(spec) for spec in program.maps]
    try:
        for name, code in (("device", staged.device), ("host", staged.host)):
            verdict = kernel.verify_insns(code, "xdp", maps=maps)
            assert verdict.accepted, f"{name}: {verdict.log[-2000:]}"
    finally:
        for m in maps:
            m.close()


def test_xdp_lb_staged_equals_original(lb):
    program, *_, staged, frames = lb
    frames = frames + lb_frames(1, 220)
    decided = compare_sequence(program, staged, frames)
    # every frame a test run takes has its Ethernet header: all reach the cut
    assert decided == {"host/cut": 300}


@pytest.mark.slow
def test_xdp_lb_staged_equals_original_soak(lb):
    program, *_, staged, _ = lb
    compare_sequence(program, staged, lb_frames(7, 3000))


def test_xdp_lb_staged_with_the_host_in_the_kernel(kernel, lb):
    """The host part in the kernel (BPF_PROG_TEST_RUN, the device's metadata in the context): verdict and
    packet equal the original's on the VM; so are the tables the host holds (connection atime masked:
    the kernel's clock)."""
    host_in_the_kernel(kernel, lb)


def host_in_the_kernel(kernel, lb) -> None:
    program, *_, staged, frames = lb
    kmaps = [kernel.KernelMap.create(spec) for spec in program.maps]
    try:
        for index, key, value in program.setup:
            spec = program.maps[index]
            kmaps[index].update(key, value * kernel.possible_cpus() if spec.type_name.startswith("percpu") else value)
        with kernel.load_insns(staged.host, "xdp", maps=kmaps) as prog:
            original, device_maps = fresh_maps(program), fresh_maps(program)
            whole = vm.from_insns(program.insns, original)
            for frame in frames[:80]:
                want = vm.Machine(whole, clock_ns=CLOCK).run(frame, "xdp")
                got = stage.run_staged(staged, frame, device_maps=device_maps, host_maps=[None] * len(kmaps),
                                       host=prog, vm_options={"clock_ns": CLOCK})
                assert (got.retval, got.data_out) == (want.retval & 0xFFFFFFFF, want.data_out), frame.hex()
            for name in ("rev_nat", "conn_table", "vip_map"):
                i = program.map_index(name)
                mask = (lambda v: v[:8] + bytes(8)) if name == "conn_table" else (lambda v: v)
                assert sorted((k, mask(v)) for k, v in kmaps[i].items()) == \
                    sorted((k, mask(v)) for k, v in contents(original[i])), name
    finally:
        for m in kmaps:
            m.close()


def test_xdp_lb_device_part_on_an_emulated_device(lb):
    from bpforge.jit.device import unicorn_available

    reason = unicorn_available()
    if reason is not None:
        pytest.skip(reason)
    program, *_, staged, frames = lb
    compare_sequence(program, staged, frames[:30], device="arm64")


# ---- small programs: the edge cases ------------------------------------------------------------------------

ARRAY = MapSpec.of("array", 4, 8, 4, name="counts")


def asm(text: str) -> list:
    return assemble(text)


def _program(insns, maps=()):
    from dataclasses import dataclass

    @dataclass
    class Program:
        insns: list
        maps: list
        setup: tuple = ()
        config_maps: frozenset = frozenset()

        def map_index(self, name):
            return [m.name for m in self.maps].index(name)

    return Program(insns, list(maps))


def _slot_of(insns, text: str) -> int:
    from bpforge.isa import format_insn, slot_starts

    return next(s for s, i in zip(slot_starts(insns), insns) if format_insn(i) == text)


def _frames() -> list[bytes]:
    rng = random.Random(3)
    out = [P.random_frame(rng) for _ in range(40)]
    return out + [bytes(14), bytes(12) + b"\x08\x00" + bytes(20), bytes(12) + b"\x08\x00" + bytes(range(40))]


ONE_PATH = """
    r2 = *(u32 *)(r1 + 0)
    r3 = *(u32 *)(r1 + 4)
    r4 = r2
    r4 += 14
    if r4 > r3 goto drop
    r5 = *(u8 *)(r2 + 12)
    if r5 == 8 goto slow
    w0 = 2
    exit
slow:
    call 5
    r0 &= 1
    r0 += 1
    exit
drop:
    w0 = 1
    exit
"""


def test_a_blocked_instruction_on_one_path_only():
    insns = asm(ONE_PATH)
    call = _slot_of(insns, "call 5")
    cut = stage.plan_cut(insns, [], {call}, frozenset())
    assert cut.point == call and cut.pieces == () and cut.meta_size == 4
    staged = stage.split(insns, [], cut)
    decided = compare_sequence(_program(insns), staged, _frames())
    assert decided.get("device/done", 0) and decided.get("host/cut", 0)


LIVE_STATE = """
    r2 = *(u32 *)(r1 + 0)
    r3 = *(u32 *)(r1 + 4)
    r4 = r2
    r4 += 34
    if r4 > r3 goto drop
    r6 = *(u8 *)(r2 + 14)
    r6 &= 15
    r7 = r2
    r7 += r6
    r8 = r7
    r8 += 20
    if r8 > r3 goto drop
    r5 = *(u8 *)(r2 + 23)
    r5 += 1000
    r0 = r5
    r0 /= 3
    r0 += *(u8 *)(r7 + 19)
    r0 += r6
    r0 &= 3
    exit
drop:
    w0 = 1
    exit
"""


def test_a_cut_with_a_packet_pointer_and_a_bounded_scalar_live():
    insns = asm(LIVE_STATE.replace("r0 += *(u8 *)(r7 + 19)", "r1 = *(u8 *)(r7 + 19)\n    r0 += r1"))
    div = _slot_of(insns, "r0 /= 3")  # division: what the device cannot do
    cut = stage.plan_cut(insns, [], {div}, frozenset())
    assert cut.point == div
    pieces = {q.place: q for q in cut.pieces}
    assert pieces["r7"].kind == "pkt" and (pieces["r7"].lo, pieces["r7"].hi, pieces["r7"].range) == (0, 15, 20)
    assert pieces["r6"].kind == "scalar" and (pieces["r6"].hi, pieces["r6"].size) == (15, 1)
    assert pieces["r0"].kind == "scalar" and (pieces["r0"].lo, pieces["r0"].hi) == (1000, 1255)  # r0-r5: a temp
    staged = stage.split(insns, [], cut)
    for code in (staged.device, staged.host):
        assert verify_program(code, "xdp", []).accepted
    decided = compare_sequence(_program(insns), staged, _frames())
    assert decided.get("host/cut", 0) > 5


def test_the_live_state_program_passes_the_kernel_verifier(kernel):
    insns = asm(LIVE_STATE.replace("r0 += *(u8 *)(r7 + 19)", "r1 = *(u8 *)(r7 + 19)\n    r0 += r1"))
    cut = stage.plan_cut(insns, [], {_slot_of(insns, "r0 /= 3")}, frozenset())
    staged = stage.split(insns, [], cut)
    for code in (staged.device, staged.host):
        verdict = kernel.verify_insns(code, "xdp")
        assert verdict.accepted, verdict.log[-2000:]


def test_a_program_that_needs_no_cut():
    insns = asm(ONE_PATH)
    cut = stage.plan_cut(insns, [], frozenset(), frozenset())
    assert cut.point is None and "no cut" in cut.explain()
    staged = stage.split(insns, [], cut)
    assert staged.host is None and staged.device == insns
    decided = compare_sequence(_program(insns), staged, _frames()[:10])
    assert set(decided) <= {"device/none"}


ENTRY_ONLY = """
    r1 = map_fd(0) ll
    r2 = r10
    r2 += -8
    r3 = 0
    *(u64 *)(r10 - 8) = r3
    call 1
    if r0 == 0 goto out
    r6 = r0
    call 5
    r1 = *(u64 *)(r6 + 0)
    r1 += 1
    *(u64 *)(r6 + 0) = r1
out:
    w0 = 2
    exit
"""


def test_a_program_whose_only_eligible_cut_is_the_entry():
    insns = asm(ENTRY_ONLY)
    cut = stage.plan_cut(insns, [ARRAY], {_slot_of(insns, "call 5")}, frozenset({0}))
    assert cut.point == 0 and "the host runs the whole program" in cut.explain()
    assert "not insn 9: r6 at insn 9 is map_value" in cut.explain()
    assert "not insn 6: r1 at insn 6 is map_ptr" in cut.explain()
    staged = stage.split(insns, [ARRAY], cut)
    decided = compare_sequence(_program(insns, [ARRAY]), staged, _frames()[:10])
    assert set(decided) == {"host/cut"}


def test_an_explicit_cut_that_is_not_eligible_says_why():
    insns = asm(ENTRY_ONLY)
    call = _slot_of(insns, "call 5")
    with pytest.raises(stage.StageError, match=r"insn 9: r6 at insn 9 is map_value") as err:
        stage.explicit_cut(insns, [ARRAY], {call}, frozenset({0}), 9)
    assert err.value.where.insn == 9 and "\n" not in err.value.message
    with pytest.raises(stage.StageError, match=rf"insn {call + 1} does not dominate blocked insn {call}"):
        stage.explicit_cut(insns, [ARRAY], {call}, frozenset({0}), call + 1)
    with pytest.raises(stage.StageError, match=r"does not dominate blocked insn 0 \(map counts, which the device"):
        stage.explicit_cut(insns, [ARRAY], {call}, frozenset(), 2)
    assert stage.explicit_cut(insns, [ARRAY], {call}, frozenset({0}), 0).point == 0


def test_the_cost_model_is_a_pure_function():
    model = stage.CostModel()
    assert stage.score(model, 10, 0.5, 4) == 10 + 20 * 0.5 - 0.5 * (12 + 2)
    assert stage.score(model, 0, 1.0, 0) < 0  # host only: the hand-off is all cost




# ---- cuts at several points ------------------------------------------------------------------------------

def test_xdp_lb_gets_a_cut_at_several_points(lb, lbm):
    """The NFP-like profile blocks an early instruction on each of the IPv4 and IPv6 paths (lb_stats
    updates): one dominating cut must sit at insn 10, before the fork, and the device runs 11 instructions.
    At several points the device parses both: insns 11-37 are the IPv4 header's checks (IHL, fragments,
    the addresses into the flow key), 185-211 the IPv6 header's — 27 + 27 + the 10 before the fork, so
    the device part holds at least 60 instructions (it holds 74: 421-424 and 585-588 lead to lb_stats
    updates that are points of their own)."""
    one, many = lb[3], lbm[3]
    assert len(one.device_slots) == 11
    assert many.points == (38, 212, 425, 589) and many.point == 38
    assert len(many.device_slots) >= 60 and set(range(11, 38)) | set(range(185, 212)) <= many.device_slots
    assert any(13 <= p < 185 for p in many.points) and any(185 <= p < 433 for p in many.points)  # both branches
    assert many.score > one.score
    assert [h.tag for h in many.handoffs] == [stage.TAG_CUT + i for i in range(4)]
    assert all(h.meta_size <= stage.META_MAX and h.exact for h in many.handoffs)
    assert many.meta_size == max(h.meta_size for h in many.handoffs)
    assert not many.device_maps  # lb_stats is updated on both sides of every point
    assert set(lb[1]) <= set(many.blocked) and not set(lb[1]) & many.device_slots
    text = many.explain()
    assert text.startswith("cut at insns 38, 212, 425, 589 (4 points): the device runs insns 0-37, 185-211, 421-424, "
                           "433, 585-588 (74 instructions)")
    assert "point insn 38 (tag 0x0bf5c070" in text and "moved up from insn" in text
    assert "insn 39: the live state at insn 39 needs 40 bytes of metadata" in text  # why not one insn later
    assert "point insn 425 (tag 0x0bf5c072" in text and "the first blocked insn on its paths (map lb_stats" in text
    assert "the best cut at one point (insn 10) scores" in text
    ipv6 = many.handoff(212)
    assert {q.place: q.kind for q in ipv6.pieces}["r6"] == "pkt"


def test_xdp_lb_multi_programs_pass_both_verifiers(kernel, lbm):
    program, *_, staged, _ = lbm
    maps = [kernel.KernelMap.create(spec) for spec in program.maps]
    try:
        for name, code in (("device", staged.device), ("host", staged.host)):
            assert verify_program(code, "xdp", program.maps).accepted, name
            verdict = kernel.verify_insns(code, "xdp", maps=maps)
            assert verdict.accepted, f"{name}: {verdict.log[-2000:]}"
    finally:
        for m in maps:
            m.close()


def test_xdp_lb_multi_staged_equals_original(lbm):
    program, *_, staged, frames = lbm
    points: dict[int, int] = {}
    decided = compare_sequence(program, staged, frames + lb_frames(1, 220), points=points)
    # non-IP frames (ARP, ...) are passed on the device; the others hand over at one of the points
    assert decided["device/done"] >= 20 and decided["host/cut"] >= 200
    assert set(decided) == {"device/done", "host/cut"}
    assert len(points) >= 3 and set(points) <= set(staged.cut.points)


def test_xdp_lb_multi_with_the_host_in_the_kernel(kernel, lbm):
    host_in_the_kernel(kernel, lbm)


TWO_BRANCHES = """
    r2 = *(u32 *)(r1 + 0)
    r3 = *(u32 *)(r1 + 4)
    r4 = r2
    r4 += 34
    if r4 > r3 goto drop
    r6 = *(u8 *)(r2 + 12)
    if r6 == 8 goto v4
    r7 = *(u8 *)(r2 + 13)
    if r7 == 1 goto pass
    call 8
    r0 += r7
    r0 &= 1
    r0 += 1
    exit
v4:
    r7 = *(u8 *)(r2 + 23)
    r7 &= 15
    call 5
    r0 += r7
    r0 &= 1
    r0 += 1
    exit
pass:
    w0 = 2
    exit
drop:
    w0 = 1
    exit
"""


def test_two_blocked_branches_get_a_point_each():
    insns = asm(TWO_BRANCHES)
    a, b = _slot_of(insns, "call 8"), _slot_of(insns, "call 5")
    cut = stage.plan_cut(insns, [], {a, b}, frozenset())
    assert cut.points == (a, b) and cut.point == a
    for h, hi in zip(cut.handoffs, (255, 15)):
        (r7,) = [q for q in h.pieces if q.place == "r7"]
        assert (r7.kind, r7.lo, r7.hi, r7.size) == ("scalar", 0, hi, 1) and h.meta_size == 8
    assert "the first blocked insn on its paths (bpf_get_smp_processor_id)" in cut.explain()
    staged = stage.split(insns, [], cut)
    for code in (staged.device, staged.host):
        assert verify_program(code, "xdp", []).accepted
    points: dict[int, int] = {}
    decided = compare_sequence(_program(insns), staged, _frames(), points=points)
    assert decided.get("device/none", 0) and set(points) == {a, b}  # short frames dropped on the device
    # one point is not a cut: the other branch reaches its blocked call
    with pytest.raises(stage.StageError, match=rf"insn {a} does not dominate blocked insn {b} \(bpf_ktime_get_ns\)"):
        stage.explicit_cut(insns, [], {a, b}, frozenset(), a)
    assert stage.explicit_cut(insns, [], {a, b}, frozenset(), [b, a]).points == (a, b)


def test_two_blocked_branches_pass_the_kernel_verifier(kernel):
    insns = asm(TWO_BRANCHES)
    blocked = {_slot_of(insns, "call 8"), _slot_of(insns, "call 5")}
    staged = stage.split(insns, [], stage.plan_cut(insns, [], blocked, frozenset()))
    for code in (staged.device, staged.host):
        verdict = kernel.verify_insns(code, "xdp")
        assert verdict.accepted, verdict.log[-2000:]


MOVES_UP = """
    r2 = *(u32 *)(r1 + 0)
    r3 = *(u32 *)(r1 + 4)
    r4 = r2
    r4 += 14
    if r4 > r3 goto drop
    r6 = *(u8 *)(r2 + 12)
    if r6 == 8 goto v4
    call 8
    r0 &= 1
    r0 += 1
    exit
v4:
    r1 = map_fd(0) ll
    r2 = r10
    r2 += -8
    r3 = 0
    *(u64 *)(r10 - 8) = r3
    call 1
    if r0 == 0 goto out
    r6 = r0
    call 5
    r1 = *(u64 *)(r6 + 0)
    r1 += r0
    *(u64 *)(r6 + 0) = r1
out:
    w0 = 2
    exit
drop:
    w0 = 1
    exit
"""


def test_a_point_whose_state_cannot_travel_moves_up_to_its_dominator():
    insns = asm(MOVES_UP)
    a, b = _slot_of(insns, "call 8"), _slot_of(insns, "call 5")
    v4 = _slot_of(insns, "r1 = map_fd(0) ll")
    cut = stage.plan_cut(insns, [ARRAY], {a, b}, frozenset({0}))
    assert cut.points == (a, v4)  # call 5 holds a map value in r6: up to where nothing of the lookup is live
    text = cut.explain()
    assert f"point insn {v4} (tag 0x0bf5c071" in text and f"moved up from insn {b}" in text
    assert f"r6 at insn {b} is map_value" in text
    assert cut.host_maps >= {0} and not cut.device_maps  # the lookup runs on the host
    staged = stage.split(insns, [ARRAY], cut)
    for code in (staged.device, staged.host):
        assert verify_program(code, "xdp", [ARRAY]).accepted
    points: dict[int, int] = {}
    compare_sequence(_program(insns, [ARRAY]), staged, _frames(), points=points)
    assert set(points) == {a, v4}


def test_explicit_cuts_at_several_points_and_their_errors():
    insns = asm(MOVES_UP)
    a, b = _slot_of(insns, "call 8"), _slot_of(insns, "call 5")
    v4 = _slot_of(insns, "r1 = map_fd(0) ll")
    args = (insns, [ARRAY], {a, b}, frozenset({0}))
    assert stage.explicit_cut(*args, (a, v4)).points == (a, v4)
    errors = {
        (a, b): rf"insn {b}: r6 at insn {b} is map_value",
        (a, v4, b): rf"insn {b} is reached only through insn {v4}, which dominates it",
        (a, a): rf"insn {a} is given twice",
        (a, 10_000): r"insn 10000 is not the start of an instruction",
        (v4,): rf"insn {v4} does not dominate blocked insn {a}",
        (a, v4 + 2): rf"insn {v4 + 2}: r1 at insn {v4 + 2} is map_ptr",
        (a, v4 + 1): rf"insn {v4 + 1} is not the start of an instruction",
    }
    for points, pattern in errors.items():
        with pytest.raises(stage.StageError, match=pattern) as err:
            stage.explicit_cut(*args, points)
        assert "\n" not in err.value.message and err.value.where.insn in points, points
    with pytest.raises(stage.StageError, match="at least one point"):
        stage.explicit_cut(*args, ())


def test_the_cost_model_scores_several_points():
    model = stage.CostModel()
    assert stage.score(model, 10, [0.25, 0.25], [4, 0]) == 10 + 20 * 0.5 - 0.25 * (12 + 2) - 0.25 * 12
    assert stage.score(model, 10, [0.5], [4]) == stage.score(model, 10, 0.5, 4)
    with pytest.raises(ValueError):
        stage.score(model, 10, [0.5], [4, 4])


@pytest.mark.slow
def test_xdp_lb_multi_staged_equals_original_soak(lbm):
    program, *_, staged, _ = lbm
    compare_sequence(program, staged, lb_frames(7, 3000))
