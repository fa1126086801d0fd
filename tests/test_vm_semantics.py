"""Edge cases of the arithmetic the interpreter and the fast tier share, from RFC 9669 and the kernel."""

import pytest

from bpforge.isa import FORMS_BY_NAME, assemble
from bpforge.vm import Machine, VmFault, from_insns, run
from bpforge.vm.fast import run_fast

M64 = (1 << 64) - 1


def both(text: str, data: bytes = bytes(64), prog_type: str = "xdp", **options) -> int:
    """r0 of `text` in both tiers, which must agree."""
    program = from_insns(assemble(text))
    slow = Machine(program, **options).run(data, prog_type)
    fast = run_fast(Machine(program, **options), data, prog_type)
    assert (slow.retval, slow.data_out) == (fast.retval, fast.data_out)
    return slow.retval


@pytest.mark.parametrize("text, expected", [
    ("r0 = 7\nr1 = 0\nr0 /= r1\nexit", 0),  # division by zero gives 0
    ("r0 = 7\nr1 = 0\nr0 %= r1\nexit", 7),  # modulo by zero keeps the dividend
    ("r0 = -1\nw1 = 0\nw0 %= w1\nexit", 0xFFFFFFFF),  # ... zero-extended for 32 bits
    ("r0 = 1\nr0 <<= 63\nr1 = -1\nr0 s/= r1\nexit", 1 << 63),  # INT_MIN / -1 = INT_MIN
    ("r0 = 1\nr0 <<= 63\nr1 = -1\nr0 s%= r1\nexit", 0),  # INT_MIN % -1 = 0
    ("r0 = -7\nr0 s/= 2\nexit", -3 & M64),  # truncation toward zero
    ("r0 = -7\nr0 s%= 2\nexit", -1 & M64),  # remainder takes the dividend's sign
    ("r0 = 7\nr0 s%= -2\nexit", 1),
    ("w0 = -7\nw0 s/= 2\nexit", (-3) & 0xFFFFFFFF),
    ("r0 = 1\nr1 = 65\nr0 <<= r1\nexit", 2),  # shift amounts masked to 63
    ("w0 = 1\nw1 = 33\nw0 <<= w1\nexit", 2),  # ... and to 31
    ("r0 = -8\nr0 s>>= 1\nexit", -4 & M64),
    ("w0 = -8\nw0 s>>= 1\nexit", (-4) & 0xFFFFFFFF),
    ("r0 = -1\nw0 += 1\nexit", 0),  # 32-bit results zero-extend
    ("r0 = -1\nw0 = w0\nexit", 0xFFFFFFFF),
    ("r0 = 0x80\nr0 = (s8)r0\nexit", -128 & M64),
    ("r0 = 0x8000\nw0 = (s16)w0\nexit", 0xFFFF8000),
    ("r0 = 0x80000000\nr0 = (s32)r0\nexit", 0xFFFFFFFF80000000),
    ("r0 = 0x1122334455667788 ll\nr0 = be16 r0\nexit", 0x8877),
    ("r0 = 0x1122334455667788 ll\nr0 = be32 r0\nexit", 0x88776655),
    ("r0 = 0x1122334455667788 ll\nr0 = be64 r0\nexit", 0x8877665544332211),
    ("r0 = 0x1122334455667788 ll\nr0 = le16 r0\nexit", 0x7788),
    ("r0 = 0x1122334455667788 ll\nr0 = bswap32 r0\nexit", 0x88776655),
    ("r0 = 5\nr0 = -r0\nexit", -5 & M64),
    ("r0 = 0\nr0 += -1\nexit", M64),  # immediates sign-extend to 64 bits
    ("w0 = -1\nexit", 0xFFFFFFFF),
    ("r0 = 1\nr1 = -1\nif r1 > 1 goto +1\nr0 = 0\nexit", 1),  # unsigned compare
    ("r0 = 1\nr1 = -1\nif r1 s> 1 goto +1\nr0 = 0\nexit", 0),
    ("r0 = 1\nr1 = 0x100000000 ll\nif w1 == 0 goto +1\nr0 = 0\nexit", 1),  # JMP32 looks at the low half
    ("r0 = 1\nr1 = 6\nif r1 & 4 goto +1\nr0 = 0\nexit", 1),
])
def test_arithmetic(text, expected):
    assert both(text) == expected


def test_atomics():
    text = """
    r1 = 10
    *(u64 *)(r10 - 8) = r1
    r2 = 3
    r2 = atomic_fetch_add((u64 *)(r10 - 8), r2)   # r2 = 10, mem = 13
    r3 = 0xff
    w3 = atomic_fetch_and((u32 *)(r10 - 8), w3)  # r3 = 13, mem = 13
    r0 = 13
    r4 = 99
    r0 = cmpxchg_64(r10 - 8, r0, r4)            # equal: mem = 99, r0 = 13
    r5 = 1
    r5 = xchg_64(r10 - 8, r5)                    # r5 = 99, mem = 1
    r0 += r2
    r0 += r3
    r0 += r5
    r6 = *(u64 *)(r10 - 8)
    r0 += r6
    exit
    """
    assert both(text) == 13 + 10 + 13 + 99 + 1


def test_packet_access_and_bounds():
    text = """
    r2 = *(u32 *)(r1 + 0)
    r3 = *(u32 *)(r1 + 4)
    r0 = *(u8 *)(r2 + 13)
    r4 = 0x55
    *(u8 *)(r2 + 0) = r4
    exit
    """
    data = bytes(range(64))
    program = from_insns(assemble(text))
    result = run(program, data)
    assert result.retval == 13 and result.data_out == b"\x55" + data[1:]
    with pytest.raises(VmFault) as info:
        run(from_insns(assemble("r2 = *(u32 *)(r1 + 0)\nr0 = *(u8 *)(r2 + 64)\nexit")), data)
    assert info.value.where.insn == 1 and "packet" in info.value.message


@pytest.mark.parametrize("tier", ["interp", "fast"])
def test_faults_name_instruction_region_offset_size(tier):
    program = from_insns(assemble("r0 = 0\nr1 = r10\n*(u64 *)(r1 - 520) = r0\nexit"))
    machine = Machine(program)
    with pytest.raises(VmFault) as info:
        machine.run(bytes(64)) if tier == "interp" else run_fast(machine, bytes(64))
    assert info.value.where.insn == 2
    assert "write of 8 bytes" in info.value.message


@pytest.mark.parametrize("tier", ["interp", "fast"])
def test_budget_stops_endless_loops(tier):
    program = from_insns(assemble("r0 = 0\nloop:\nr0 += 1\ngoto loop"))
    machine = Machine(program, budget=10_000)
    with pytest.raises(VmFault, match="budget"):
        machine.run(bytes(64)) if tier == "interp" else run_fast(machine, bytes(64))


@pytest.mark.parametrize("tier", ["interp", "fast"])
def test_call_depth_limit(tier):
    program = from_insns(assemble("f:\nr1 += 1\ncall f\nexit"))
    machine = Machine(program)
    with pytest.raises(VmFault, match="call depth"):
        machine.run(bytes(64)) if tier == "interp" else run_fast(machine, bytes(64))


def test_local_calls_have_their_own_frames():
    text = """
    r6 = 40
    r1 = 2
    *(u64 *)(r10 - 8) = r6
    call double
    r7 = *(u64 *)(r10 - 8)    # our stack slot survived the callee's store
    r0 += r6                  # callee-saved r6 survived
    r0 += r7
    exit
    double:
    r6 = 1000
    *(u64 *)(r10 - 8) = r6
    r0 = r1
    r0 *= 2
    exit
    """
    assert both(text) == 4 + 40 + 40


def test_callx_through_a_function_pointer():
    text = """
    r1 = 20
    r2 = add_one ll
    callx r2
    exit
    add_one:
    r0 = r1
    r0 += 1
    exit
    """
    assert both(text) == 21


def test_unknown_helper_is_an_error_naming_it():
    with pytest.raises(VmFault, match="bpf_get_stackid#27 is not implemented"):
        run(from_insns(assemble("call 27\nexit")), bytes(64))
    with pytest.raises(VmFault, match="unknown helper id 9999"):
        run(from_insns(assemble("call 9999\nexit")), bytes(64))


def test_mem_type_passes_buffer_and_length():
    text = "r0 = r2\nr3 = *(u8 *)(r1 + 2)\nr0 += r3\nexit"
    assert both(text, bytes([1, 2, 3, 4]), "mem") == 4 + 3


def test_forms_without_interpreter_support_are_named():
    assert FORMS_BY_NAME["call_kfunc"].kind == "call"
    with pytest.raises(VmFault, match="kfunc"):
        run(from_insns(assemble("call kfunc(5, 0)\nexit")), bytes(64))


def test_every_implemented_helper_has_a_signature_in_the_one_table():
    from bpforge.isa.helpers import HELPER_SIGNATURES
    from bpforge.vm.helpers import implemented

    assert set(implemented()) == set(HELPER_SIGNATURES)


def _map(name: str, type_name: str, key_size: int, value_size: int, max_entries: int):
    from bpforge.isa.maptypes import MapSpec
    from bpforge.isa.maptypes import MAP_TYPE_IDS
    from bpforge.vm.maps import create_map

    return create_map(MapSpec(name, MAP_TYPE_IDS[type_name], key_size, value_size, max_entries))


@pytest.mark.parametrize("tier", ["interp", "fast"])
def test_tail_calls_replace_the_program_and_stop_after_33(tier):
    jumps = _map("jumps", "prog_array", 4, 4, 2)
    counter = _map("counter", "array", 4, 8, 1)
    # the program counts its own runs in `counter`, then tail-calls itself through slot 0
    text = """
    r6 = r1
    r1 = 0
    *(u32 *)(r10 - 4) = r1
    r2 = r10
    r2 += -4
    r1 = map_fd(1) ll
    call bpf_map_lookup_elem
    if r0 == 0 goto +3
    r1 = 1
    lock *(u64 *)(r0 + 0) += r1
    r1 = r6
    r2 = map_fd(0) ll
    r3 = 0
    call bpf_tail_call
    r0 = 7
    exit
    """
    program = from_insns(assemble(text), [jumps, counter])
    jumps.set(0, program)
    machine = Machine(program)
    result = machine.run(bytes(64)) if tier == "interp" else run_fast(machine, bytes(64))
    assert result.retval == 7
    assert counter.lookup(bytes(4)) == (1 + 33).to_bytes(8, "little")  # the first run and 33 tail calls


@pytest.mark.parametrize("tier", ["interp", "fast"])
def test_ringbuf_reserve_submit_discard(tier):
    ring = _map("events", "ringbuf", 0, 0, 4096)
    text = """
    r1 = map_fd(0) ll
    r2 = 8
    r3 = 0
    call bpf_ringbuf_reserve
    if r0 == 0 goto +6
    r1 = 0x1122334455667788 ll
    *(u64 *)(r0 + 0) = r1
    r1 = r0
    r2 = 0
    call bpf_ringbuf_submit
    r1 = map_fd(0) ll
    r2 = 16
    r3 = 0
    call bpf_ringbuf_reserve
    if r0 == 0 goto +3
    r1 = r0
    r2 = 0
    call bpf_ringbuf_discard
    r0 = 0
    exit
    """
    program = from_insns(assemble(text), [ring])
    machine = Machine(program)
    machine.run(bytes(64)) if tier == "interp" else run_fast(machine, bytes(64))
    assert ring.records() == [(0x1122334455667788).to_bytes(8, "little")]
