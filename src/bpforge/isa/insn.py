"""The instruction value and the lookup from its fields to its form in the table."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

from ..errors import DecodeError
from . import opcodes as op
from .forms import FIELDS, FORMS_BY_NAME, FORMS_BY_OPCODE, Form
from .numbers import M32, M64, s32, s64

LDDW_OPCODE = op.LD | op.IMM | op.SIZES[8]


@dataclass(frozen=True, slots=True)
class Insn:
    """One instruction: the raw fields of its slot, plus the second slot's imm for 64-bit immediate loads.

    Offsets in `off` (and in `imm` for gotol / local calls) count 8-byte slots relative to the next slot,
    exactly as encoded; a 64-bit immediate load occupies two slots."""

    opcode: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    imm_hi: int = 0
    _form: Form | None = field(default=None, init=False, repr=False, compare=False)  # looked up once

    @property
    def form(self) -> Form:
        form = self._form
        if form is None:
            form = form_of(self.opcode, self.dst, self.src, self.off, self.imm, self.imm_hi)
            object.__setattr__(self, "_form", form)
        return form

    @property
    def slots(self) -> int:
        return 2 if self.opcode == LDDW_OPCODE else 1

    @property
    def imm64(self) -> int:
        """The 64-bit immediate of an lddw as a signed value (imm_hi:imm)."""
        return s64((self.imm_hi & M32) << 32 | (self.imm & M32))

    def field(self, name: str) -> int:
        return self.imm64 if name == "imm64" else getattr(self, name)

    def replace(self, **changes) -> "Insn":
        return replace(self, **changes)

    @classmethod
    def make(cls, form: str | Form, **operands: int) -> "Insn":
        """Build an instruction of a named form: `Insn.make("add64_imm", dst=1, imm=5)`.

        `imm64=` sets imm and imm_hi of a 64-bit load. Unnamed fields take the form's fixed value or 0."""
        form = FORMS_BY_NAME[form] if isinstance(form, str) else form
        fields = dict.fromkeys(FIELDS, 0) | form.fixed_fields
        if "imm64" in operands:
            value = operands.pop("imm64") & M64
            fields["imm"], fields["imm_hi"] = s32(value & M32), s32(value >> 32)
        fields |= operands
        insn = cls(form.opcode, **fields)
        if insn.form is not form:  # form_of raised already if the fields encode nothing at all
            raise DecodeError(f"fields {operands} make a {insn.form.name}, not a {form.name} instruction")
        return insn

    def __str__(self) -> str:
        """The instruction in llvm-objdump spelling: its form's template filled with its fields."""
        values = {"dst": self.dst, "src": self.src, "off": self.off, "imm": self.imm, "imm_hi": self.imm_hi,
                  "imm64": self.imm64}
        return self.form.templates[0].render(values)


@lru_cache(maxsize=1 << 16)
def form_of(opcode: int, dst: int, src: int, off: int, imm: int, imm_hi: int) -> Form:
    """The form these fields encode; DecodeError naming the offending field if they encode none."""
    for name, value, lo, hi in (("dst", dst, 0, 15), ("src", src, 0, 15), ("off", off, -(1 << 15), (1 << 15) - 1),
                                ("imm", imm, -(1 << 31), (1 << 31) - 1), ("imm_hi", imm_hi, -(1 << 31), (1 << 31) - 1)):
        if not lo <= value <= hi:
            raise DecodeError(f"field {name}={value} does not fit its encoding [{lo}, {hi}]")
    candidates = FORMS_BY_OPCODE.get(opcode)
    if not candidates:
        raise DecodeError(f"unknown opcode {opcode:#04x}")
    values = {"dst": dst, "src": src, "off": off, "imm": imm, "imm_hi": imm_hi}
    matching = [f for f in candidates if all(values[k] == v for k, v in f.fixed)]
    if not matching:
        raise DecodeError(_no_form_message(opcode, candidates, values))
    form = matching[0]
    for name in ("dst", "src"):
        if name in form.operands and values[name] >= op.NUM_REGS:
            raise DecodeError(f"invalid register r{values[name]} in {name} of {form.name}")
    for name, value in values.items():
        if value and name not in form.operands and name not in form.fixed_fields:
            raise DecodeError(f"reserved field {name}={value} must be 0 in {form.name} (opcode {opcode:#04x})")
    return form


def _no_form_message(opcode: int, candidates: tuple[Form, ...], values: dict[str, int]) -> str:
    """Name the discriminating field at fault, with the values the forms of this opcode allow for it."""
    def agreed(form: Form) -> int:  # how many leading fixed fields of `form` the instruction matches
        return next((i for i, (k, v) in enumerate(form.fixed) if values[k] != v), len(form.fixed))

    best = max(candidates, key=agreed)
    key = best.fixed[agreed(best)][0]
    prefix = best.fixed[:agreed(best)]
    allowed = sorted({f.fixed_fields[key] for f in candidates if f.fixed[:len(prefix)] == prefix and key in f.fixed_fields})
    given = ", ".join(f"{k}={v}" for k, v in prefix)
    return (f"opcode {opcode:#04x}{' with ' + given if given else ''} has no form with {key}={values[key]} "
            f"(valid: {', '.join(map(str, allowed))})")
