"""Bad bytecode and bad assembly give errors that say where and what, never a wrong answer."""

import struct

import pytest

from bpforge.errors import AsmError, DecodeError, EncodeError
from bpforge.isa import Insn, assemble, check_targets, decode, encode, parse, slot_starts
from bpforge.isa.asm import parse_statement

SLOT = struct.Struct("<BBhi")
EXIT = SLOT.pack(0x95, 0, 0, 0)
MOV_R0 = SLOT.pack(0xB7, 0, 0, 0)


@pytest.mark.parametrize("data, slot, words", [
    (MOV_R0 + b"\x95\x00\x00", 1, "truncated"),
    (MOV_R0 + SLOT.pack(0xFF, 0, 0, 0), 1, "unknown opcode 0xff"),
    (SLOT.pack(0x07, 0x21, 0, 1), 0, "reserved field src=2"),  # r1 += 1 with src set
    (SLOT.pack(0x0F, 0x21, 0, 7), 0, "reserved field imm=7"),  # r1 += r2 with imm set
    (SLOT.pack(0x07, 0x01, 3, 1), 0, "reserved field off=3"),
    (SLOT.pack(0x95, 0, 0, 1), 0, "reserved field imm=1"),  # exit
    (SLOT.pack(0x0F, 0xB1, 0, 0), 0, "invalid register r11"),
    (SLOT.pack(0x0F, 0x1C, 0, 0), 0, "invalid register r12"),
    (MOV_R0 + SLOT.pack(0x18, 1, 0, 5), 1, "lddw is missing its second slot"),
    (SLOT.pack(0x18, 1, 0, 5) + SLOT.pack(0x07, 0, 0, 0), 1, "second slot of lddw"),
    (SLOT.pack(0x18, 0x71, 0, 5) + SLOT.pack(0, 0, 0, 0), 0, "src=7"),  # no BPF_PSEUDO_* 7
    (SLOT.pack(0xD4, 1, 0, 24), 0, "imm=24"),  # le24
    (SLOT.pack(0xDB, 0x21, 0, 0x02), 0, "imm=2"),  # no atomic op 2
    (SLOT.pack(0xBF, 0x21, 3, 0), 0, "off=3"),  # movsx of 3 bits
    (SLOT.pack(0x38, 0, 0, 0), 0, "unknown opcode 0x38"),  # LD_ABS DW
])
def test_decode_errors_name_slot_and_field(data, slot, words):
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert info.value.where.insn == slot
    assert words in str(info.value)


def test_decode_error_location_is_completed_by_callers():
    with pytest.raises(DecodeError) as info:
        try:
            decode(MOV_R0 + SLOT.pack(0xFF, 0, 0, 0))
        except DecodeError as err:
            raise err.at(file="prog.o", section="xdp")
    assert str(info.value) == "prog.o: section xdp: insn 1: unknown opcode 0xff"


@pytest.mark.parametrize("text, slot", [
    ("goto +5\nexit", 0),
    ("goto -2\nexit", 0),
    ("r0 = 0\nif r0 == 0 goto +1\nexit", 1),  # lands one past the end
    ("r1 = 5 ll\ngoto -4\nexit", 2),  # one before the start
    ("call pc+7\nexit", 0),
])
def test_jumps_out_of_range(text, slot):
    insns = [Insn.make(form, **values) for form, values in map(parse_statement, text.splitlines())]
    with pytest.raises(DecodeError) as info:
        check_targets(insns)
    assert info.value.where.insn == slot
    with pytest.raises(AsmError, match="jump out of range") as info:  # the assembler names the line
        assemble(text)
    line = next(i for i, s in enumerate(slot_starts(insns)) if s == slot) + 1
    assert info.value.where.line == line


def test_jump_into_the_middle_of_lddw():
    with pytest.raises(AsmError, match="middle of lddw") as info:
        assemble("r0 = 0\ngoto +1\nr1 = 5 ll\nexit")
    assert (info.value.where.line, info.value.where.col) == (2, 1)


def test_encode_refuses_fields_that_do_not_fit():
    with pytest.raises(EncodeError):
        encode([Insn(0x07, dst=1, imm=1 << 31)])
    with pytest.raises(EncodeError):
        encode([Insn(0x07, dst=1, src=3, imm=1)])


@pytest.mark.parametrize("text, line, col, words", [
    ("r0 = 0\nr1 +== 3\nexit", 2, 1, "unknown instruction"),
    ("  r0 = 0\n  r11 = 1\n", 2, 3, "invalid register r11"),
    ("w0 = 0x100000000", 1, 6, "does not fit in 32 bits"),  # llvm-mc silently truncates this one
    ("r1 = *(u32 *)(r2 + 40000)", 1, 18, "out of range"),
    ("goto nowhere\nexit", 1, 1, "undefined label 'nowhere'"),
    ("l: exit\nl: exit", 2, 1, "label 'l' defined twice"),
    ("r1 = -r2", 1, 1, "same register"),
    ("\tif r1 > r2 goto\n", 1, 9, "unknown instruction"),
])
def test_asm_errors_have_line_and_column(text, line, col, words):
    with pytest.raises(AsmError) as info:
        assemble(text)
    assert (info.value.where.line, info.value.where.col) == (line, col)
    assert words in info.value.message


def test_far_label_needs_gotol():
    text = "goto far\n" + "r0 = 0\n" * 40000 + "far: exit\n"
    with pytest.raises(AsmError, match="use gotol"):
        assemble(text)
    assert assemble(text.replace("goto far", "gotol far"))[0].imm == 40000


def test_labels_calls_and_symbols():
    program = parse("""
        .section xdp
        .globl prog
    prog:
        r1 = counters ll        # a map: becomes a relocation
        call bpf_map_lookup_elem
        call helper_fn          ; bpf-to-bpf call to a label
        if r0 == 0 goto out
        r0 = 1
    out:
        exit
    helper_fn:
        r0 = 2
        exit
    """)
    (sec,) = program.sections
    assert sec.name == "xdp" and sec.functions == {"prog": 0, "helper_fn": 6}
    assert [(r.insn, r.symbol) for r in sec.relocations] == [(0, "counters")]
    assert sec.insns[1].imm == 1 and sec.insns[1].src == 0
    assert sec.insns[2].form.name == "call_local" and sec.insns[2].imm == 3  # slot 3 -> slot 7
    assert sec.insns[3].off == 1


def test_kernel_log_spelling():
    log = """
    0: (b7) r1 = 0
    1: (63) *(u32 *)(r10 -4) = r1
    2: (bf) r2 = r10
    3: (07) r2 += -4
    4: (85) call bpf_map_lookup_elem#1
    5: (15) if r0 == 0x0 goto pc+1
    6: (db) r1 = atomic64_fetch_add((u64 *)(r0 +0), r1)
    7: (95) exit
    """
    insns = assemble(log)
    assert [str(i) for i in insns] == [
        "r1 = 0", "*(u32 *)(r10 - 4) = r1", "r2 = r10", "r2 += -4", "call 1", "if r0 == 0 goto +1",
        "r1 = atomic_fetch_add((u64 *)(r0 + 0), r1)", "exit"]


def test_wide_constant_without_ll_is_a_64_bit_load():
    # the verifier log prints lddw without "ll"; a value wider than 32 bits can only mean that
    (insn,) = assemble("r0 = 0x100000000")
    assert insn.form.name == "lddw" and insn.imm64 == 1 << 32
