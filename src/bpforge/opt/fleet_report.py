"""What `bpforge optimize-many` did, for people and for programs: one row per program of the fleet (slots
before and after, the changes and whether every one was proved, the kernel's verdict, time, and whether this
run or an earlier one did it), a total, and the same as JSON. Pure data; never prints (the CLI does)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .report import OptimizeReport, verdict_word
from .rules import made_by_rule

DONE, FAILED, INTERRUPTED = "done", "failed", "interrupted"
HEADERS = ("object", "program", "type", "slots", "saved", "changes", "rules", "proof", "kernel", "seconds", "run")


@dataclass(frozen=True)
class FleetRow:
    """One program of the fleet. `before`/`after` are None when it could not even be loaded; `earlier`: its
    result comes from the state of an earlier run, which finished it."""

    object: str  # the input's path relative to the fleet's directory (or manifest): its output's under OUTDIR
    program: str | None  # None: the object could not be read, so it has no programs to name
    status: str  # DONE, FAILED or INTERRUPTED (the best so far is in the output; the next run goes on)
    type: str | None = None
    before: int | None = None
    after: int | None = None
    changes: int = 0
    rule_hits: int = 0  # changes made by rules of the store (the hits the run adds to it)
    equivalent: str | None = None  # "proved": every change proved by z3; "tested"; None: no changes
    kernel_accepted: bool | None = None  # None: not asked (--no-kernel, no bpf()) or never got that far
    seconds: float = 0.0
    reason: str | None = None  # why it failed
    earlier: bool = False
    time_to_best: float = 0.0  # seconds into the run when it reached `after`

    @staticmethod
    def of(obj: str, program: str, report: OptimizeReport, *, status: str, reason: str | None = None,
           seconds: float | None = None) -> "FleetRow":
        changes = report.outcome.changes
        return FleetRow(obj, program, status, report.prog_type, report.before, report.after, len(changes),
                        sum(made_by_rule(c.why) for c in changes), report.equivalent if changes else None,
                        report.kernel_accepted, round(report.outcome.seconds if seconds is None else seconds, 3),
                        reason, time_to_best=round(report.outcome.time_to_best, 3))

    @staticmethod
    def failed(obj: str, program: str | None, reason: str, prog_type: str | None = None) -> "FleetRow":
        return FleetRow(obj, program, FAILED, prog_type, reason=reason)

    def continuing(self, previous: "FleetRow") -> "FleetRow":
        """This row of a program resumed after `previous` (interrupted, its best kept in the output) as one
        row of the whole work: the original size, every change, all the time."""
        proofs = {p for p in (previous.equivalent, self.equivalent) if p is not None}
        return FleetRow(self.object, self.program, self.status, self.type,
                        previous.before if previous.before is not None else self.before, self.after,
                        previous.changes + self.changes, previous.rule_hits + self.rule_hits,
                        None if not proofs else "proved" if proofs == {"proved"} else "tested",
                        self.kernel_accepted, round(previous.seconds + self.seconds, 3), self.reason,
                        time_to_best=round(previous.seconds + self.time_to_best, 3))

    @property
    def saved(self) -> int | None:
        return None if self.before is None or self.after is None else self.before - self.after

    @property
    def reduction(self) -> float | None:
        return None if not self.before or self.after is None else (self.before - self.after) / self.before

    def as_json(self) -> dict[str, Any]:
        reduction = self.reduction
        return {**asdict(self), "saved": self.saved, "reduction": None if reduction is None else round(reduction, 4)}

    @staticmethod
    def from_json(data: dict[str, Any]) -> "FleetRow":
        """A row as `as_json` wrote it (ValueError when it is not one)."""
        try:
            row = FleetRow(**{f.name: data[f.name] for f in fields(FleetRow)})
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a fleet row ({err})") from None
        if row.status not in (DONE, FAILED, INTERRUPTED):
            raise ValueError(f"unknown status {row.status!r}")
        return row

    def cells(self) -> list[str]:
        """The row of the summary table (HEADERS)."""
        numbers = self.before is not None and self.after is not None
        reduction = self.reduction
        run = {DONE: "earlier" if self.earlier else "now", FAILED: "FAILED", INTERRUPTED: "interrupted"}[self.status]
        return [self.object, self.program or "-", self.type or "-", f"{self.before} -> {self.after}" if numbers else "-",
                "-" if reduction is None else f"{100 * reduction:.1f} %", str(self.changes), str(self.rule_hits),
                self.equivalent or "-", verdict_word(self.kernel_accepted) if numbers else "-",
                f"{self.seconds:.1f}", run]


@dataclass
class FleetSummary:
    """Every program of the fleet, in the order of the fleet: `rows` (those run now and those done earlier),
    `pending` (object, program) not started because the run was stopped."""

    source: str
    outdir: str
    state: str  # the state file
    rules_store: str
    rows: list[FleetRow] = field(default_factory=list)
    pending: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> list[FleetRow]:
        return [row for row in self.rows if row.status == FAILED]

    @property
    def interrupted(self) -> bool:
        """Stopped before the end (Ctrl-C): rerunning the same command goes on where this one stopped."""
        return bool(self.pending) or any(row.status == INTERRUPTED for row in self.rows)

    def totals(self) -> dict[str, Any]:
        measured = [row for row in self.rows if row.saved is not None]
        before = sum(row.before for row in measured)
        after = sum(row.after for row in measured)
        return {"programs": len(self.rows) + len(self.pending),
                "done": sum(row.status == DONE for row in self.rows),
                "done_earlier": sum(row.status == DONE and row.earlier for row in self.rows),
                "failed": len(self.failed), "interrupted": sum(row.status == INTERRUPTED for row in self.rows),
                "pending": len(self.pending), "before": before, "after": after,
                "reduction": round((before - after) / before, 4) if before else 0.0,
                "changes": sum(row.changes for row in self.rows), "rule_hits": sum(row.rule_hits for row in self.rows),
                "seconds": round(sum(row.seconds for row in self.rows), 3)}

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "outdir": self.outdir, "state": self.state, "rules_store": self.rules_store,
                "programs": [row.as_json() for row in self.rows],
                "pending": [{"object": obj, "program": program} for obj, program in self.pending],
                "total": self.totals(), "interrupted": self.interrupted}

    # ---- text --------------------------------------------------------------------------------------------

    def table(self) -> tuple[tuple[str, ...], list[list[str]], list[str]]:
        """(headers, a row of cells per program, the total row): what the CLI draws and `text` aligns."""
        t = self.totals()
        done = f"{t['done']} done" + (f" ({t['done_earlier']} earlier)" if t["done_earlier"] else "")
        total = ["total", f"{t['programs']} programs", "", f"{t['before']} -> {t['after']}",
                 f"{100 * t['reduction']:.1f} %", str(t["changes"]), str(t["rule_hits"]), "", "",
                 f"{t['seconds']:.1f}", done]
        return HEADERS, [row.cells() for row in self.rows], total

    def notes(self) -> list[str]:
        """The lines under the table: why programs failed, what is left, where everything went."""
        lines = [f"failed: {row.object}{':' + row.program if row.program else ''}: {row.reason}" for row in self.failed]
        if self.interrupted:
            left = len(self.pending) + sum(row.status == INTERRUPTED for row in self.rows)
            lines.append(f"stopped early: {left} program(s) not finished; the same command again goes on from here")
        lines.append(f"wrote {self.outdir} (state {self.state}, rules {self.rules_store})")
        return lines

    def text(self) -> str:
        headers, rows, total = self.table()
        cells = [list(headers), *rows, total]
        widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        return "\n".join(lines + self.notes()) + "\n"


__all__ = ["DONE", "FAILED", "HEADERS", "INTERRUPTED", "FleetRow", "FleetSummary"]
