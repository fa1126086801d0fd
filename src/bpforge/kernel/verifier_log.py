"""The kernel verifier's log, read into data: what it checked at each instruction, the register and stack
states it printed, the paths it followed and pruned, its liveness table and its statistics.

The log is the oracle our own verifier is compared with, state by state, and what `verify --kernel` shows.
The formats read here are those of kernel 6.x at log level 1 or 2 (level 2 prints the state after each
instruction; BPF_LOG_STATS, 4, adds the verification time):

    Live regs before insn:            then one line per slot: `  5: .123..6... (2d) if r1 > r6 goto pc+30`
    0: R1=ctx() R10=fp0               a whole state, at a function's start or where a path resumes
    1180: safe                        a straight-line walk reached a state already proven safe
    ; void *data = ...; @ file.c:104  the source line of the instructions that follow
    1: (61) r2 = *(u32 *)(r1 +0)   ; R2=pkt(r=0)      an instruction and what it changed
    from 5 to 36: R1=... R6=...       the verifier turns to a pending path (its state), or
    from 200 to 421: safe             that path joins one already proven safe (pruned)
    processed 14584 insns (limit 1000000) max_states_per_insn 9 total_states 795 peak_states 706 mark_read 0
    verification time 1234 usec
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_INSN = re.compile(r"^(\d+): \((?:[0-9a-f]{2})\) (.*?)(?:\s+; (.*))?$")
_STATE = re.compile(r"^(\d+): ((?:R\d+|fp-?\d+)\S*=.*)$")
_PATH = re.compile(r"^from (\d+) to (\d+): (.*)$")
_SAFE = re.compile(r"^(\d+): safe$")
_SOURCE = re.compile(r"^; (.*) @ (\S+:\d+)$")
_LIVE = re.compile(r"^\s*(\d+): ([.0-9]{10}) ")
_PROCESSED = re.compile(r"processed (\d+) insns \(limit \d+\) max_states_per_insn (\d+) total_states (\d+) "
                        r"peak_states (\d+)")
_TIME = re.compile(r"verification time (\d+) usec")
_STACK = re.compile(r"stack depth ([\d+]+)")


def parse_state(text: str) -> dict[str, str]:
    """`R1=pkt(off=14,r=14) R6=pkt_end() fp-8=mmmm????` -> {"r1": "pkt(off=14,r=14)", "r6": "pkt_end()",
    "fp-8": "mmmm????"}. Register names lose the `_w` (written) mark older kernels print."""
    state: dict[str, str] = {}
    for token in _tokens(text):
        name, sep, value = token.partition("=")
        if not sep:
            continue
        name = name.lower().removesuffix("_w")
        state[name] = value
    return state


def _tokens(text: str) -> list[str]:
    """Split at blanks outside parentheses (`var_off=(0x0; 0xff)` is one token)."""
    tokens, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == " " and depth == 0:
            if i > start:
                tokens.append(text[start:i])
            start = i + 1
    if start < len(text):
        tokens.append(text[start:])
    return tokens


@dataclass(frozen=True)
class LoggedInsn:
    """One instruction the verifier went through: its slot, its text, the registers and stack slots it
    changed (level 2), and the source line cited before it, if any."""

    slot: int
    text: str
    changed: dict[str, str]
    line: str | None = None


@dataclass(frozen=True)
class LoggedPath:
    """`from src to dst`: a pending branch taken up with `state`, or `pruned` (the "safe" of state pruning)."""

    src: int
    dst: int
    state: dict[str, str]
    pruned: bool


@dataclass
class VerifierLog:
    insns: list[LoggedInsn] = field(default_factory=list)
    states: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (slot, whole state)
    paths: list[LoggedPath] = field(default_factory=list)
    pruned_at: list[int] = field(default_factory=list)  # slots where a straight-line walk met a safe state
    live: dict[int, frozenset[int]] = field(default_factory=dict)  # slot -> registers live before it
    processed: int | None = None
    max_states_per_insn: int | None = None
    total_states: int | None = None
    peak_states: int | None = None
    verification_usec: int | None = None
    stack_depth: tuple[int, ...] = ()  # per function, when the log says
    other: list[str] = field(default_factory=list)  # lines none of the above (complaints among them)

    def visits(self, slot: int) -> list[LoggedInsn]:
        """Every time the verifier went through `slot`, in order."""
        return [insn for insn in self.insns if insn.slot == slot]


def parse_log(text: str) -> VerifierLog:
    log = VerifierLog()
    line_cited: str | None = None
    in_live_table = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line:
            continue
        if line == "Live regs before insn:":
            in_live_table = True
            continue
        if in_live_table:
            match = _LIVE.match(line)
            if match:
                log.live[int(match.group(1))] = frozenset(i for i, c in enumerate(match.group(2)) if c != ".")
                continue
            in_live_table = False
        if (match := _SAFE.match(line)) is not None:
            log.pruned_at.append(int(match.group(1)))
        elif (match := _SOURCE.match(line)) is not None:
            line_cited = match.group(2)
        elif (match := _INSN.match(line)) is not None:
            changed = parse_state(match.group(3)) if match.group(3) else {}
            log.insns.append(LoggedInsn(int(match.group(1)), match.group(2).strip(), changed, line_cited))
            line_cited = None
        elif (match := _STATE.match(line)) is not None:
            log.states.append((int(match.group(1)), parse_state(match.group(2))))
        elif (match := _PATH.match(line)) is not None:
            rest = match.group(3).strip()
            pruned = rest == "safe"
            log.paths.append(LoggedPath(int(match.group(1)), int(match.group(2)), {} if pruned else parse_state(rest),
                                        pruned))
        elif (match := _PROCESSED.search(line)) is not None:
            log.processed, log.max_states_per_insn, log.total_states, log.peak_states = map(int, match.groups())
        elif (match := _TIME.search(line)) is not None:
            log.verification_usec = int(match.group(1))
        elif (match := _STACK.search(line)) is not None:
            log.stack_depth = tuple(int(d) for d in match.group(1).split("+"))
        else:
            log.other.append(line)
    return log


__all__ = ["LoggedInsn", "LoggedPath", "VerifierLog", "parse_log", "parse_state"]
