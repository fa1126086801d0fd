"""isa/ops.py: every form decodes into one node of the closed IR, with the encoding's variants folded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from bpforge.isa import FORMS, Insn, assemble, branch_target
from bpforge.isa.ops import (
    OP_TYPES, AddrSpaceCast, Alu, Atomic, Call, Exit, Imm, Jump, LegacyLoad, Load, LoadImm64, MayGoto, Reg,
    Store, Unary, decode_op, decode_ops, ends_block, falls_through, jump_target,
)
from bpforge.isa.semantics import handled_op_types

from isa_strategies import any_insn


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.name)
def test_every_form_decodes_into_a_node_of_the_ir(form):
    op = decode_op(Insn.make(form), 0)
    assert type(op) in OP_TYPES


@given(any_insn())
@settings(max_examples=400, deadline=None)
def test_targets_are_absolute_slots_where_the_encoding_has_a_relative_one(insn):
    slot = 40
    target = branch_target(insn, slot)
    assert jump_target(decode_op(insn, slot)) == target


def test_step_handles_every_node_type():
    assert handled_op_types() == frozenset(OP_TYPES)


def test_ja_and_gotol_are_one_unconditional_jump():
    ja, gotol = Insn.make("ja", off=5), Insn.make("gotol", imm=5)
    assert decode_op(ja, 10) == decode_op(gotol, 10) == Jump(None, 64, 0, Imm(0), 16)
    assert not falls_through(decode_op(ja, 10)) and ends_block(decode_op(ja, 10))


def test_conditional_jumps_name_their_comparison_width_and_operands():
    insns = assemble("if r1 s> r2 goto +1\nif w3 & 0x10 goto -2\nif r4 <= -1 goto +0\nexit\n")
    assert decode_op(insns[0], 0) == Jump("sgt", 64, 1, Reg(2), 2)
    assert decode_op(insns[1], 1) == Jump("set", 32, 3, Imm(0x10), 0)
    assert decode_op(insns[2], 2) == Jump("ule", 64, 4, Imm((1 << 64) - 1), 3)  # imm sign-extended to 64 bits
    assert falls_through(decode_op(insns[0], 0))


def test_lddw_kinds_fold_fd_and_index_references():
    fd_value, idx_value = Insn.make("lddw_map_value", dst=1, imm=3, imm_hi=8), Insn.make("lddw_map_idx_value", dst=1,
                                                                                           imm=3, imm_hi=8)
    assert decode_op(fd_value) == decode_op(idx_value) == LoadImm64("map_value", 1, 3, 8)
    assert decode_op(Insn.make("lddw_map_fd", dst=2, imm=4)) == decode_op(Insn.make("lddw_map_idx", dst=2, imm=4)) \
        == LoadImm64("map", 2, 4)
    assert decode_op(Insn.make("lddw", dst=0, imm64=-2)) == LoadImm64("imm", 0, (1 << 64) - 2)
    assert decode_op(Insn.make("lddw_func", dst=3, imm=5), 7) == LoadImm64("func", 3, 13)
    ops = decode_ops(assemble("r1 = 0x100000000 ll\nexit\n"))
    assert isinstance(ops[0], LoadImm64) and ops[1] is None and ops[2] == Exit()


def test_call_kinds():
    assert decode_op(Insn.make("call", imm=12)) == Call("helper", 12)
    assert decode_op(Insn.make("call_local", imm=3), 5) == Call("local", 9)
    assert decode_op(Insn.make("call_kfunc", imm=77, off=2)) == Call("kfunc", 77, 2)
    assert decode_op(Insn.make("callx", dst=4)) == Call("indirect", 4)


def test_memory_forms():
    insns = assemble("r2 = *(s16 *)(r1 - 4)\n*(u32 *)(r10 - 8) = 7\n*(u64 *)(r10 - 16) = r3\n"
                     "lock *(u64 *)(r1 + 0) += r2\nr0 = cmpxchg_64(r1 + 8, r0, r5)\n")
    ops = [decode_op(i) for i in insns]
    assert ops[0] == Load(2, True, 2, 1, -4)
    assert ops[1] == Store(4, 10, -8, Imm(7))
    assert ops[2] == Store(8, 10, -16, Reg(3))
    assert ops[3] == Atomic("add", 8, False, 1, 0, 2)
    assert ops[4] == Atomic("cmpxchg", 8, True, 1, 8, 5)
    acquire = decode_op(Insn.make("load_acquire32", dst=1, src=2, off=4))
    release = decode_op(Insn.make("store_release64", dst=1, src=2, off=4))
    assert acquire == Load(4, False, 1, 2, 4, acquire=True)
    assert release == Store(8, 1, 4, Reg(2), release=True)


def test_alu_unary_and_casts():
    insns = assemble("w1 += -1\nr2 = (s8)r3\nr4 = -r4\nr5 = be16 r5\nr6 = bswap64 r6\n")
    assert decode_op(insns[0]) == Alu("add", 32, 1, Imm((1 << 64) - 1))
    assert decode_op(insns[1]) == Alu("movsx", 64, 2, Reg(3), 8)
    assert decode_op(insns[2]) == Unary("neg", 64, 4)
    assert decode_op(insns[3]) == Unary("be", 16, 5)
    assert decode_op(insns[4]) == Unary("bswap", 64, 6)
    cast = Insn.make("addr_space_cast_10", dst=1, src=2)
    assert decode_op(cast) == AddrSpaceCast(1, 2, 1, 0)


def test_legacy_loads_and_may_goto():
    ld_abs, ld_ind = assemble("r0 = *(u16 *)skb[12]\nr0 = *(u8 *)skb[r3 + 2]\n")
    assert decode_op(ld_abs) == LegacyLoad(2, 12)
    assert decode_op(ld_ind) == LegacyLoad(1, 2, 3)
    assert decode_op(Insn.make("may_goto", off=-3), 9) == MayGoto(7)
