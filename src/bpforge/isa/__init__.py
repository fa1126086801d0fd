"""The eBPF instruction set: the form table, instructions, encoding, assembly and disassembly."""

from .asm import AsmProgram, AsmSection, Relocation, assemble, parse
from .codec import branch_target, check_targets, decode, encode, retarget, slot_count, slot_starts
from .disasm import format_insn, listing
from .forms import FORMS, FORMS_BY_NAME, FORMS_BY_OPCODE, Form
from .helpers import helper_id, helper_name
from .insn import Insn, form_of

__all__ = [
    "AsmProgram", "AsmSection", "FORMS", "FORMS_BY_NAME", "FORMS_BY_OPCODE", "Form", "Insn", "Relocation",
    "assemble", "branch_target", "check_targets", "decode", "encode", "form_of", "format_insn", "helper_id",
    "helper_name", "listing", "parse", "retarget", "slot_count", "slot_starts",
]
