"""Hypothesis strategies for instructions of every form in the table."""

from __future__ import annotations

from hypothesis import strategies as st

from bpforge.isa import FORMS, Form, Insn

REGS = st.integers(0, 10)
S16 = st.integers(-(1 << 15), (1 << 15) - 1)
S32 = st.integers(-(1 << 31), (1 << 31) - 1)
_EDGE32 = st.sampled_from([0, 1, -1, 7, 0x7FFFFFFF, -(1 << 31), 0xFFFF, -0x8000])
IMM = st.one_of(S32, _EDGE32)


def insn_of(form: Form, *, llvm_only: bool = False) -> st.SearchStrategy[Insn]:
    fields = {}
    for name in form.operands:
        if name in ("dst", "src"):
            fields[name] = REGS
        elif name == "off":
            fields[name] = S16
        elif name in ("imm", "imm_hi"):
            fields[name] = IMM
    if llvm_only and form.kind == "ld_ind":
        fields["imm"] = st.just(0)  # llvm has no spelling for an indirect load's constant offset
    if llvm_only and form.name == "gotol":
        fields["imm"] = S16  # llvm-mc-19 parses numeric jump offsets as 16-bit, even for gotol
    return st.fixed_dictionaries(fields).map(lambda f: Insn.make(form, **f))


def any_insn(*, llvm_only: bool = False, kernel_only: bool = False) -> st.SearchStrategy[Insn]:
    forms = [f for f in FORMS if (f.llvm or not llvm_only) and (f.kernel or not kernel_only)]
    return st.sampled_from(forms).flatmap(lambda f: insn_of(f, llvm_only=llvm_only))
