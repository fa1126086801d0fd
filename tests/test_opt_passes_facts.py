"""opt.facts, the known bits every pass reads and the gate trusts, against the reference interpreter: on
every run, at every slot it executes, every fact holds of the register's concrete value. Programs come
from a generator of straight-line code with forward branches over the whole ALU (`mem` programs: r1 is
a buffer) and from the differential generator's XDP programs (maps, helpers, loops, atomics, may_goto).
(tests/test_opt_facts.py checks the analysis against the search's own evaluator and its unit cases.)"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpforge import vm
from bpforge.isa import FORMS, Insn, slot_starts
from bpforge.isa.asm import assemble
from bpforge.opt.facts import known_bits
from bpforge.opt.rewrite import KnownBits

M64 = (1 << 64) - 1
UPPER = M64 ^ 0xFFFFFFFF


# ---- running with a trace of the registers before every executed slot -------------------------------------

def traced(program: vm.VmProgram) -> list[tuple[int, tuple[int, ...]]]:
    """Make the interpreter record (slot, r0..r10) before each instruction of `program` it executes; the
    list it fills."""
    from bpforge.vm.interp import decoded

    seen: list[tuple[int, tuple[int, ...]]] = []
    table = decoded(program)

    def recording(slot, execute):
        def run(machine, op):
            seen.append((slot, tuple(machine.regs)))
            execute(machine, op)
        return run

    program.decoded = [None if entry is None else (recording(slot, entry[0]), entry[1], entry[2])
                       for slot, entry in enumerate(table)]
    return seen


def violations(insns, trace) -> list[str]:
    facts = known_bits(insns)
    bad = []
    for slot, regs in trace:
        for reg, bits in facts.at(slot).items():
            if regs[reg] & bits.mask != bits.value:
                bad.append(f"slot {slot}: r{reg} = {regs[reg]:#x}, facts say & {bits.mask:#x} == {bits.value:#x}")
    return bad


def check_mem_program(insns, data: bytes) -> int:
    """Run `insns` as a `mem` program on `data`; assert every fact at every executed slot. Returns how many
    (slot, fact) pairs were checked, so a test can tell it checked something."""
    program = vm.from_insns(insns)
    trace = traced(program)
    vm.Machine(program).run(data, "mem")
    assert trace, "nothing ran"
    bad = violations(insns, trace)
    assert not bad, "\n".join(bad[:10])
    facts = known_bits(insns)
    return sum(len(facts.at(slot)) for slot, _ in trace)


# ---- unit cases ----------------------------------------------------------------------------------------------

def facts_of(text: str):
    return known_bits(assemble(text))


def test_constants_flow_through_alu_by_the_one_semantics():
    f = facts_of("r1 = 5\nr2 = r1\nr2 *= 3\nr2 -= 20\nw3 = w2\nr4 = 0x123456789 ll\nexit")
    assert f.at(1)[1] == KnownBits.constant(5)
    assert f.at(3)[2] == KnownBits.constant(15)
    assert f.at(4)[2] == KnownBits.constant((15 - 20) & M64)
    assert f.at(5)[3] == KnownBits.constant(0xFFFFFFFB)
    assert f.at(7)[4] == KnownBits.constant(0x123456789)


def test_32_bit_results_and_narrow_loads_know_their_upper_bits():
    f = facts_of("w1 += w2\nr3 = *(u8 *)(r2 + 0)\nr4 = *(u16 *)(r2 + 0)\nr5 = *(u32 *)(r2 + 0)\n"
                 "r6 = *(s8 *)(r2 + 0)\nexit")
    assert f.at(1)[1] == KnownBits(UPPER, 0)
    assert f.at(2)[3] == KnownBits(M64 ^ 0xFF, 0)
    assert f.at(3)[4] == KnownBits(M64 ^ 0xFFFF, 0)
    # a 4-byte load may be a context pointer field the kernel widens to 64 bits; a signed load sign-extends
    assert 5 not in f.at(4) and 6 not in f.at(5)


def test_legacy_packet_loads_give_zero_extended_bytes():
    f = facts_of("r6 = r1\nr0 = *(u16 *)skb[12]\nr2 = r0\nr0 = *(u8 *)skb[r2 + 1]\nexit")
    assert f.at(2)[0] == KnownBits(M64 ^ 0xFFFF, 0)
    assert f.at(4)[0] == KnownBits(M64 ^ 0xFF, 0)
    assert 2 not in f.at(4)  # LD_IND clobbers r1-r5 as a helper call does


def test_masks_and_shifts_move_known_bits():
    f = facts_of("r1 = *(u64 *)(r2 + 0)\nr1 &= 0xf0\nr3 = r1\nr3 <<= 4\nr4 = r1\nr4 >>= 4\nr5 = r1\nr5 |= 1\nexit")
    assert f.at(2)[1] == KnownBits(M64 ^ 0xF0, 0)
    assert f.at(4)[3] == KnownBits(M64 ^ 0xF00, 0)
    assert f.at(6)[4] == KnownBits(M64 ^ 0xF, 0)
    assert f.at(8)[5] == KnownBits(M64 ^ 0xF0, 1)


def test_a_join_keeps_only_bits_both_paths_agree_on():
    f = facts_of("r1 = 5\nif r2 > 3 goto +1\nr1 = 7\nr0 = r1\nexit")
    assert f.at(3)[1] == KnownBits(M64 ^ 0b010, 0b101)


def test_calls_clobber_r0_to_r5_and_keep_r6_to_r9():
    f = facts_of("r1 = 1\nr5 = 5\nr6 = 6\nr0 = 0\ncall 7\nexit")
    after = f.at(5)
    assert set(after) == {6} and after[6] == KnownBits.constant(6)


def test_the_frame_pointer_is_never_known():
    f = facts_of("r1 = r10\nr1 &= 0\nr2 = r10\nexit")
    assert 10 not in f.at(1) and 1 not in f.at(1)
    assert f.at(2)[1] == KnownBits.constant(0)  # r10 & 0 is 0 whatever r10 is
    assert 2 not in f.at(3)


def test_unreachable_code_has_no_facts():
    f = facts_of("r1 = 1\ngoto +1\nr1 = 2\nr0 = r1\nexit")
    assert f.at(2) == {}
    assert f.at(3)[1] == KnownBits.constant(1)


def test_loops_reach_a_fixpoint_and_stay_sound():
    insns = assemble("r1 = 0\nr2 = 0\nr1 += 1\nr2 = 8\nif r1 < 10 goto -3\nr0 = r1\nexit")
    f = known_bits(insns)
    assert 1 not in f.at(2) or not f.at(2)[1].is_constant  # r1 varies around the loop
    assert f.at(4)[2] == KnownBits.constant(8)
    assert check_mem_program(insns, bytes(8)) > 0


def test_subprograms_start_knowing_nothing():
    f = facts_of("r1 = 3\ncall pc+2\nr0 = r6\nexit\nr0 = r1\nexit")
    assert f.at(4) == {}  # the callee's entry: whatever any caller passes
    assert 1 not in f.at(2) and 0 not in f.at(2)


def test_an_lddw_second_slot_has_no_facts():
    insns = assemble("r1 = 0x100000000 ll\nr0 = r1\nexit")
    assert slot_starts(insns) == [0, 2, 3]
    f = known_bits(insns)
    assert f.at(1) == {} and f.at(2)[1] == KnownBits.constant(1 << 32)


# ---- soundness against the interpreter -----------------------------------------------------------------------

WRITABLE = (0, 2, 3, 4, 5, 6, 7, 8, 9)  # r1 holds the buffer for the whole program
READABLE = WRITABLE + (1, 10)
ALU_FORMS = [f for f in FORMS if f.kind in ("alu", "mov", "neg", "end")]
LOADS = [f for f in FORMS if f.kind == "ldx"]
JUMPS = [f for f in FORMS if f.kind == "jmp"]
IMMEDIATES = (0, 1, -1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 48, 56, 63, 64, 0xFF, 0xFFFF, 0x7FFFFFFF, -0x80000000,
              0x12345678, -2, 0xF0, 0xFF00)
BUFFER = 64
I32 = (-(1 << 31), (1 << 31) - 1)


def random_program(rng: random.Random) -> list[Insn]:
    """Straight-line code with forward branches over the registers the facts track: moves of constants,
    every ALU/byte-swap form, narrow and wide loads from the buffer in r1, lddw, helper calls."""
    count = rng.randint(1, 24)
    items: list = []  # Insn, or ("jump", form, dst, src_or_imm, target item)
    for k in range(count):
        kind = rng.choice(("const", "const", "alu", "alu", "alu", "load", "jump", "lddw", "call"))
        if kind == "const":
            name = rng.choice(("mov64_imm", "mov32_imm"))
            items.append(Insn.make(name, dst=rng.choice(WRITABLE), imm=rng.choice(IMMEDIATES)))
        elif kind == "alu":
            form = rng.choice(ALU_FORMS)
            fields = {"dst": rng.choice(WRITABLE)}
            if "src" in form.operands:
                fields["src"] = rng.choice(READABLE)
            if "imm" in form.operands and form.kind != "end":
                fields["imm"] = rng.choice(IMMEDIATES)
            items.append(Insn.make(form, **fields))
        elif kind == "load":
            form = rng.choice(LOADS)
            items.append(Insn.make(form, dst=rng.choice(WRITABLE), src=1, off=rng.randrange(0, BUFFER - 8 + 1)))
        elif kind == "lddw":
            items.append(Insn.make("lddw", dst=rng.choice(WRITABLE), imm=rng.randint(*I32), imm_hi=rng.randint(*I32)))
        elif kind == "call":
            items.append(Insn.make("call", imm=rng.choice((5, 7, 8))))  # ktime, prandom, cpu id
        else:
            form = rng.choice(JUMPS)
            operand = rng.choice(READABLE) if form.source == "reg" else rng.choice(IMMEDIATES)
            items.append(("jump", form, rng.choice(READABLE), operand, rng.randint(k + 1, count)))
    items.append(Insn.make("mov64_reg", dst=0, src=rng.choice(WRITABLE)))
    items.append(Insn.make("exit"))
    slots, slot = [], 0
    for item in items:
        slots.append(slot)
        slot += item.slots if isinstance(item, Insn) else 1
    insns = []
    for k, item in enumerate(items):
        if isinstance(item, Insn):
            insns.append(item)
            continue
        _, form, dst, operand, target = item  # jumps land on the first slot of an instruction
        off = slots[target] - slots[k] - 1
        insns.append(Insn.make(form, dst=dst, src=operand, off=off) if form.source == "reg" else
                     Insn.make(form, dst=dst, imm=operand, off=off))
    return insns


PROGRAMS = st.integers(0, 2**32).map(lambda seed: random_program(random.Random(seed)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PROGRAMS, st.binary(min_size=BUFFER, max_size=BUFFER))
def test_every_fact_holds_at_every_executed_slot(insns, data):
    check_mem_program(insns, data)


def test_the_property_checks_facts_not_nothing():
    """Generated programs have facts to check (else the property above would pass vacuously)."""
    rng = random.Random(1)
    checked = sum(check_mem_program(random_program(random.Random(seed)), rng.randbytes(BUFFER))
                  for seed in range(30))
    assert checked > 100


def test_the_checker_catches_a_fact_that_does_not_hold():
    insns = assemble("r3 = *(u64 *)(r1 + 0)\nr0 = r3\nexit")
    program = vm.from_insns(insns)
    trace = traced(program)
    vm.Machine(program).run(bytes(range(1, 65)), "mem")
    _, regs = trace[1]
    assert regs[3] & 0xFF != 0  # "r3's low byte is 0" would be reported on this run


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31), st.integers(0, 2**31))
def test_facts_hold_on_generated_xdp_programs(seed, packet_seed):
    from difftest.generator import generate, random_packet

    from bpforge.vm.maps import create_map

    program = generate(seed).program
    maps = [create_map(spec, num_cpus=1) for spec in program.maps]
    for index, key, value in program.setup:
        maps[index].update(key, value)
    vmprog = vm.from_insns(program.insns, maps, name=program.name)
    trace = traced(vmprog)
    try:
        vm.Machine(vmprog).run(random_packet(random.Random(packet_seed)), program.prog_type)
    except vm.VmFault:
        pass  # a fault ends the run; what ran before it still had to obey the facts
    bad = violations(program.insns, trace)
    assert not bad, program.text() + "\n" + "\n".join(bad[:10])
