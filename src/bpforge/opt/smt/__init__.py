"""The prover's foundation: `isa.semantics` instantiated with z3 bit-vectors (`Z3Ops`), and a `Machine` over
z3 terms (`Z3Machine`) on which `semantics.step` builds the formulas of straight-line code and branches."""

from .bitvec import Z3_OPS, Z3Ops
from .machine import Branch, NotModelled, Z3Machine

__all__ = ["Branch", "NotModelled", "Z3Machine", "Z3Ops", "Z3_OPS"]
