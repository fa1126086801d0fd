"""Invariants of the instruction form table itself."""

from collections import Counter

from bpforge.isa import FORMS, FORMS_BY_OPCODE, Insn, decode, encode, form_of
from bpforge.isa import opcodes as op


def test_names_unique():
    assert not [n for n, c in Counter(f.name for f in FORMS).items() if c > 1]


def test_forms_sharing_an_opcode_are_told_apart_by_fixed_fields():
    for opcode, forms in FORMS_BY_OPCODE.items():
        for i, a in enumerate(forms):
            for b in forms[i + 1:]:  # some field both fix must differ, so no encoding matches both
                shared = a.fixed_fields.keys() & b.fixed_fields.keys()
                assert any(a.fixed_fields[k] != b.fixed_fields[k] for k in shared), (a.name, b.name)


def test_every_rfc9669_opcode_class_is_covered():
    classes = Counter(f.opcode & 7 for f in FORMS)
    assert set(classes) == set(range(8))
    # 12 binary ALU ops x 2 sources x 2 widths + sdiv/smod
    assert sum(1 for f in FORMS if f.kind in ("alu", "mov") and not f.signed) == 48
    assert {f.op for f in FORMS if f.kind == "jmp"} == {
        "jeq", "jgt", "jge", "jset", "jne", "jsgt", "jsge", "jlt", "jle", "jslt", "jsle"}
    assert {f.name for f in FORMS if f.kind == "lddw"} >= {"lddw", "lddw_map_fd", "lddw_map_value", "lddw_func"}


def test_cpu_versions():
    by_name = {f.name: f.cpu for f in FORMS}
    assert by_name["add64_imm"] == 1 and by_name["jlt_reg"] == 2 and by_name["jeq32_imm"] == 3
    assert by_name["sdiv64_reg"] == 4 and by_name["ldxs8"] == 4 and by_name["bswap16"] == 4
    assert by_name["gotol"] == 4 and by_name["movsx64_32"] == 4 and by_name["atomic_fetch_add64"] == 3


def test_operands_are_the_template_placeholders():
    assert form_of(0x07, 1, 0, 0, 5, 0).operands == {"dst", "imm"}
    assert form_of(0xDB, 1, 2, 0, op.CMPXCHG, 0).operands == {"dst", "src", "off"}
    lddw = Insn.make("lddw", dst=3, imm64=0x1122334455667788)
    assert lddw.form.operands == {"dst", "imm", "imm_hi"} and lddw.imm64 == 0x1122334455667788


def test_decode_accepts_exactly_one_form_per_valid_encoding():
    for form in FORMS:
        insn = Insn.make(form, **{k: 1 for k in form.operands if k in ("dst", "src")})
        assert decode(encode([insn])) == [insn]
        assert insn.form is form
