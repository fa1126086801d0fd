"""The JITs: one lowering layer (`mir`, `lower`, `emit`, `abi`) and per-architecture backends that only
encode and select (`x86_64/`; `arm64/` and `riscv64/` over the shared load/store selector `risc`).
`native` runs x86-64 images in this process, `device` arm64 and riscv64 images on an emulated device
(unicorn), both serving call-backs through `serve`; `listing` shows an image beside the BPF it came from."""

from __future__ import annotations

from ..errors import BpforgeError
from .backends import ARCHES, compile_lowered
from .facts import Facts, facts_of
from .image import Image
from .lower import lower


def plan(loaded, *, sandbox: bool = False) -> Facts | None:
    """How a loaded program is compiled: our verifier's facts (verified), or None (sandboxed: asked for,
    or the userspace `mem` convention, which no verifier checks). BpforgeError when our verifier does not
    accept the program and the sandbox was not asked for."""
    if sandbox or loaded.prog_type == "mem":
        return None
    facts = facts_of(loaded)
    if not facts.accepted:
        raise BpforgeError(f"our verifier does not accept this program ({facts.message}); the JIT compiles "
                           "unverified programs only with --sandbox, which checks every access", insn=facts.insn)
    return facts


def compile_program(program, facts: Facts | None, *, arch: str = "x86_64", blind: bool = False) -> Image:
    """The image of a `vm.VmProgram` (`facts` from `plan`); `blind`: the program's constants blinded."""
    if arch not in ARCHES:
        raise BpforgeError(f"--arch {arch}: the JIT compiles for {', '.join(ARCHES)} so far")
    lowered = lower(program, sandbox=facts is None, ctx_fields=facts.ctx_fields if facts else None,
                    checked=facts.checked if facts else frozenset())
    return compile_lowered(lowered, arch, blind=blind)


__all__ = ["ARCHES", "Facts", "Image", "compile_program", "facts_of", "plan"]
