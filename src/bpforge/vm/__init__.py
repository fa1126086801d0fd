"""The reference interpreter: exact RFC 9669 / kernel semantics, memory regions, maps, helpers, contexts."""

from .interp import Machine, RunResult, run
from .memory import Memory, VmFault
from .fast import run_fast
from .program import VmProgram, from_insns, from_loaded, from_object

__all__ = ["Machine", "Memory", "RunResult", "VmFault", "VmProgram", "from_insns", "from_loaded", "from_object", "run",
           "run_fast"]
