"""`bpforge verify`: our verifier's verdict on a loaded program, explained, and optionally the running
kernel's beside it, as one `VerifyReport` the CLI prints as text or JSON and the API returns.

The verdict is "accept", "reject" or "unknown" (our verifier raised `Unsupported`: something it does not
model yet, or the time budget ran out; never a guess). With the kernel asked for, its verdict, first
complaint and processed count come along; a different verdict (or a rejection at another instruction) is
a disagreement the report names, since it is a bug of ours.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..elf.lines import source_lines, where
from ..errors import BpforgeError, Location
from ..formats.loader import LoadedProgram
from ..isa import Insn, slot_starts
from ..isa.maptypes import MapSpec
from ..isa.progtypes import section_def
from ..kernel import KernelUnavailable, VerifierRejected, kernel_available, load_loaded, verify_linked
from .check import Limits, Unsupported, Verdict, linked_inputs, verify_linked_program, verify_program
from .explain import Explanation, explain, explain_message

ACCEPT, REJECT, UNKNOWN, UNAVAILABLE = "accept", "reject", "unknown", "unavailable"


@dataclass
class KernelSide:
    """What BPF_PROG_LOAD said: `verdict` "accept", "reject" or "unavailable" (`message` says why then)."""

    verdict: str
    message: str = ""
    insn: int | None = None  # the slot of its complaint
    line: str | None = None
    processed: int | None = None  # its "processed N insns"
    reason: str | None = None  # its complaint in plain words (read from the message alone)
    hint: str | None = None

    @property
    def decided(self) -> bool:
        return self.verdict in (ACCEPT, REJECT)

    def as_json(self) -> dict:
        return {"verdict": self.verdict, "insn": self.insn, "line": self.line, "message": self.message,
                "reason": self.reason, "hint": self.hint, "processed": self.processed}


@dataclass
class VerifyReport:
    """Our verdict (`verdict`, `message`, `insn`; for a rejection `explanation`), the work it took, and
    with --kernel the kernel's (`kernel`)."""

    file: str
    section: str | None
    name: str | None
    prog_type: str
    verdict: str
    message: str = ""  # the kernel-worded message of a rejection, or why ours cannot decide
    insn: int | None = None
    explanation: Explanation | None = None
    processed: int = 0
    states: int = 0
    kernel: KernelSide | None = None

    @property
    def accepted(self) -> bool:
        return self.verdict == ACCEPT

    @property
    def where(self) -> str:
        """"FILE: section S", as every line about the program starts."""
        return str(Location(file=self.file, section=self.section))

    @property
    def outcome(self) -> str:
        """The verdict that counts: the kernel's when it was asked and answered, else ours."""
        if self.kernel is not None and self.kernel.decided:
            return self.kernel.verdict
        return self.verdict

    @property
    def disagreement(self) -> str | None:
        """A sentence when ours and the kernel's differ (a bug of ours to report), else None."""
        k = self.kernel
        if k is None or not k.decided or self.verdict == UNKNOWN:
            return None
        if k.verdict != self.verdict:
            ours = "accepts" if self.accepted else f"rejects at insn {self.insn}"
            theirs = "accepts" if k.verdict == ACCEPT else f"rejects at insn {k.insn}"
            return (f"DISAGREEMENT: our verifier {ours}, the kernel {theirs}: a bug in bpforge's verifier, "
                    "please report it")
        if k.verdict == REJECT and k.insn is not None and self.insn is not None and k.insn != self.insn:
            return (f"DISAGREEMENT: both reject, ours at insn {self.insn}, the kernel at insn {k.insn}: a bug in "
                    "bpforge's verifier, please report it")
        return None

    def undecided_line(self) -> str:
        """`FILE: section S: insn N: cannot decide: REASON` (the line on stderr when ours cannot decide)."""
        return f"{Location(file=self.file, section=self.section, insn=self.insn)}: cannot decide: {self.message}"

    # ---- output ----------------------------------------------------------------------------------------

    def as_json(self, *, log: bool = False) -> dict:
        e = self.explanation
        out = {
            "file": self.file, "section": self.section, "name": self.name, "prog_type": self.prog_type,
            "verdict": self.verdict, "insn": self.insn, "line": e.line if e else None, "message": self.message,
            "reason": e.reason if e else None, "hint": e.hint if e else None,
            "state": e.state_json() if e else None,
            "path": [s.as_json() for s in e.path] if e else [],
            "slice": [s.as_json() for s in e.slice] if e else [],
            "processed": self.processed, "states": self.states,
        }
        if self.kernel is not None:
            out["kernel"] = self.kernel.as_json()
            out["disagreement"] = self.disagreement
        if log:
            out["log"] = [dict(step.as_json(), state=state) for step, state in self.log()] if self.log() else []
        return out

    def log(self) -> list:
        """(Step, our state before it) for every instruction of the failing path ([] for an acceptance)."""
        e = self.explanation
        return e.log if e is not None and e.log is not None else []

    def text(self, *, log: bool = False) -> str:
        lines = self._headline()
        e = self.explanation
        if e is not None:
            lines.append(f"  message: {e.message}")
            if e.registers:
                lines.append("  registers: " + ", ".join(f"{r}={v}" for r, v in e.registers.items()))
            if e.stack:
                lines.append("  stack: " + ", ".join(f"{s}={v}" for s, v in e.stack.items()))
            if e.state:
                lines.append(f"  state: {e.state}")
            if e.path:
                lines.append("  path:")
                lines += [f"    {s.label()}: {s.text}  ({'taken' if s.taken else 'not taken'})" for s in e.path]
            if e.slice:
                lines.append("  slice:")
                lines += [f"    {s.label()}: {s.text}" for s in e.slice]
            if e.hint:
                lines.append(f"  hint: {e.hint}")
        if self.verdict == REJECT:
            lines.append(f"  ours: {_work(self.processed, self.states)}")
        if self.kernel is not None:
            lines += self._kernel_lines()
        if log:
            lines += self._log_lines()
        return "".join(line + "\n" for line in lines)

    def _headline(self) -> list[str]:
        if self.verdict == ACCEPT:
            return [f"{self.where}: accepted ({_work(self.processed, self.states)})"]
        if self.verdict == UNKNOWN:
            return [self.undecided_line()]
        e = self.explanation
        at = f"insn {self.insn}" if self.insn is not None else "the program"
        if e is not None and e.line:
            at += f" ({e.line})"
        return [f"{self.where}: {at}: {e.reason if e else self.message}"]

    def _kernel_lines(self) -> list[str]:
        k = self.kernel
        if k.verdict == UNAVAILABLE:
            return [f"  kernel: not asked: {k.message}"]
        processed = f" ({_count(k.processed, 'insn')} processed)" if k.processed is not None else ""
        if k.verdict == ACCEPT:
            lines = [f"  kernel: accepts{processed}"]
        else:
            at = f" at insn {k.insn}" + (f" ({k.line})" if k.line else "") if k.insn is not None else ""
            lines = [f"  kernel: rejects{at}{processed}: {k.message}"]
            if self.verdict == UNKNOWN and k.reason:
                lines.append(f"  kernel's reason: {k.reason}")
                if k.hint:
                    lines.append(f"  kernel's hint: {k.hint}")
        if self.disagreement:
            lines.append(f"  {self.disagreement}")
        elif self.verdict != UNKNOWN:
            lines.append("  the kernel agrees")
        return lines

    def _log_lines(self) -> list[str]:
        if self.verdict == ACCEPT:
            return ["log: no failing path (the program is accepted)"]
        if self.verdict == UNKNOWN:
            return ["log: no failing path (our verifier did not decide)"]
        rows = self.log()
        if not rows:
            return ["log: the failing path could not be replayed"]
        out = ["log (our state before each instruction of the failing path):"]
        width = max(len(step.text) for step, _ in rows)
        for step, state in rows:
            line = f" {step.line}" if step.line else ""
            out.append(f"  {step.insn:>5}: {step.text:<{width}}  ; {state}{line and ' @' + line}")
        return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _work(processed: int, states: int) -> str:
    return f"{_count(processed, 'insn')} processed, {_count(states, 'state')}"


# ---- building it -----------------------------------------------------------------------------------------

def verify_loaded(loaded: LoadedProgram, *, kernel: bool = False, budget: float | None = None,
                  progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Our verdict on the program `formats.load_program` read, explained; with `kernel`, the running
    kernel's beside it. `budget`: seconds our verifier may take (then "unknown"); `progress(processed)`
    is told the instructions processed along the way. BpforgeError for input no verifier can take."""
    prog_type = loaded.prog_type
    if prog_type == "mem":
        raise BpforgeError("the verifier checks kernel program types; 'mem' is the userspace convention, which no "
                           "verifier checks (give --type a kernel program type such as xdp)", file=loaded.filename)
    limits = Limits(deadline=None if budget is None else time.monotonic() + budget, progress=progress)
    attach, prog_flags = _load_options(loaded)
    insns, maps, lines = program_inputs(loaded)
    slot_lines = {slot: where(lines[i]) if lines is not None else None
                  for i, slot in enumerate(slot_starts(insns))}
    report = VerifyReport(loaded.filename, loaded.section, loaded.name, prog_type, UNKNOWN)
    try:
        verdict = _our_verdict(loaded, insns, maps, prog_type, attach, prog_flags, limits)
    except Unsupported as why:
        report.message, report.insn = why.message, why.where.insn
    else:
        report.processed, report.states = verdict.processed, verdict.states
        if verdict.accepted:
            report.verdict = ACCEPT
        else:
            report.verdict, report.message, report.insn = REJECT, verdict.message, verdict.insn
            report.explanation = explain(verdict, insns, lines=lines, prog_type=prog_type, maps=maps, attach=attach,
                                         prog_flags=prog_flags)
    if kernel:
        report.kernel = _kernel_side(loaded, prog_type, slot_lines, attach)
    return report


def verdict_of(loaded: LoadedProgram, *, collect=(), limits: Limits | None = None) -> Verdict:
    """Our verifier's raw verdict on a loaded program, with the states reaching each slot of `collect`
    (what the JITs read their facts from). Raises Unsupported where it cannot decide."""
    attach, prog_flags = _load_options(loaded)
    obj = loaded.object
    try:
        if obj is not None:
            return verify_linked_program(obj, obj.linked(loaded.name), loaded.prog_type, attach=attach,
                                         limits=limits, collect=collect)
        insns, maps, _ = program_inputs(loaded)
        return verify_program(insns, loaded.prog_type, maps, attach=attach, prog_flags=prog_flags, limits=limits,
                              collect=collect)
    except BpforgeError as err:
        raise err.at(file=loaded.filename, section=loaded.section) from None


def _load_options(loaded: LoadedProgram) -> tuple[int, int]:
    """The expected attach type and load flags libbpf gives a program of this section and type."""
    sec = section_def(loaded.section) if loaded.object is not None else None
    if sec is not None and sec.prog_type == loaded.prog_type:
        return sec.expected_attach_type, sec.prog_flags
    return 0, 0


def program_inputs(loaded: LoadedProgram) -> tuple[list[Insn], dict[int, MapSpec] | list[MapSpec], list | None]:
    """The instructions our verifier walks (map references as the maps' numbers), the maps by those
    numbers, and the source line of each instruction (None without line info)."""
    obj = loaded.object
    if obj is None:
        maps = loaded.maps
        if maps and all(spec.ref is not None for spec in maps):  # K2: lddw names a map by its fd
            return loaded.insns, {spec.ref: spec for spec in maps}, None
        return loaded.insns, list(maps), None
    linked = obj.linked(loaded.name)
    insns, specs = linked_inputs(obj, linked)
    lines = source_lines(obj, linked) if obj.btf_ext is not None else None
    return insns, specs, lines


def _our_verdict(loaded, insns, maps, prog_type, attach, prog_flags, limits) -> Verdict:
    obj = loaded.object
    try:
        if obj is not None:
            return verify_linked_program(obj, obj.linked(loaded.name), prog_type, attach=attach, limits=limits)
        return verify_program(insns, prog_type, maps, attach=attach, prog_flags=prog_flags, limits=limits)
    except BpforgeError as err:
        raise err.at(file=loaded.filename, section=loaded.section) from None


def _kernel_side(loaded: LoadedProgram, prog_type: str, lines: dict[int, str | None], attach: int) -> KernelSide:
    reason = kernel_available()
    if reason is not None:
        return KernelSide(UNAVAILABLE, reason)
    try:
        if loaded.object is not None:
            obj = loaded.object
            verdict = verify_linked(obj.linked(loaded.name), obj, prog_type=prog_type)
        else:
            try:
                with load_loaded(loaded, prog_type=prog_type) as program:
                    verdict = program.verdict
            except VerifierRejected as err:
                verdict = err.verdict
    except KernelUnavailable as err:
        return KernelSide(UNAVAILABLE, err.message)
    except BpforgeError as err:  # e.g. a map the kernel cannot create: it gave no verdict on the code
        return KernelSide(UNAVAILABLE, f"the kernel could not be asked: {err.message}")
    if verdict.accepted:
        return KernelSide(ACCEPT, processed=verdict.processed_insns)
    why, hint = explain_message(verdict.message, prog_type, attach=attach, slot=verdict.slot)
    return KernelSide(REJECT, verdict.message, verdict.slot, lines.get(verdict.slot), verdict.processed_insns, why,
                      hint)


__all__ = ["ACCEPT", "KernelSide", "REJECT", "UNAVAILABLE", "UNKNOWN", "VerifyReport", "verdict_of", "verify_loaded"]
