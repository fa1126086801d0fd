"""What an optimizer run did, for people and for programs: text, JSON (DESIGN.md's `optimize --json` shape)
and a self-contained HTML page with every changed window side by side and the cost over time.

Built from an `optimize.Outcome`; never prints (the CLI does). The HTML plot needs matplotlib (the
`report` extra); without it `html()` raises BpforgeError naming the extra.
"""

from __future__ import annotations

import base64
import html as html_lib
import io
from dataclasses import dataclass, field

from ..errors import BpforgeError
from ..isa.disasm import format_insn
from .optimize import Change, Outcome


@dataclass
class Measured:
    """In-kernel time per run before and after, measured in one run on the same packets."""

    ns_before: float
    ns_after: float

    @property
    def ratio(self) -> float:
        return self.ns_after / self.ns_before if self.ns_before else float("nan")


@dataclass
class OptimizeReport:
    filename: str
    section: str | None
    name: str | None
    prog_type: str
    outcome: Outcome
    output: str | None = None  # where the result was written
    estimated_ns: tuple[float, float] | None = None  # latency model, before and after
    measured: Measured | None = None
    extra_notes: list[str] = field(default_factory=list)

    # ---- the figures --------------------------------------------------------------------------------

    @property
    def before(self) -> int:
        return self.outcome.before

    @property
    def after(self) -> int:
        return self.outcome.after

    @property
    def reduction(self) -> float:
        return (self.before - self.after) / self.before if self.before else 0.0

    @property
    def equivalent(self) -> str:
        return "proved" if all(c.proof == "proved" for c in self.outcome.changes) else "tested"

    @property
    def kernel_accepted(self) -> bool | None:
        verdicts = self.outcome.verdicts
        return None if verdicts is None else verdicts.kernel

    @property
    def notes(self) -> list[str]:
        return self.outcome.notes + self.extra_notes

    # ---- JSON -----------------------------------------------------------------------------------------

    def as_json(self) -> dict:
        verdicts = self.outcome.verdicts
        return {
            "file": self.filename, "section": self.section, "program": self.name, "type": self.prog_type,
            "before": self.before, "after": self.after, "reduction": round(self.reduction, 4),
            "equivalent": self.equivalent,
            "kernel_accepted": self.kernel_accepted,
            "kernel_message": verdicts.kernel_message if verdicts is not None and verdicts.kernel is not True else None,
            "our_verifier_accepted": None if verdicts is None else verdicts.ours,
            "windows": [_change_json(c) for c in self.outcome.changes],
            "time_to_best": round(self.outcome.time_to_best, 3),
            "seconds": round(self.outcome.seconds, 3),
            "proofs": self.outcome.proofs, "proof_cache_hits": self.outcome.proof_cache_hits,
            "interrupted": self.outcome.interrupted,
            "searched_on": self.outcome.searched_on, "search_units": self.outcome.units,
            "search_seconds": round(self.outcome.chain_seconds, 3),
            "lost_units": len(self.outcome.lost),
            "timeline": [[round(t, 3), slots] for t, slots in self.outcome.timeline],
            "estimated_ns": None if self.estimated_ns is None else {"before": self.estimated_ns[0],
                                                                    "after": self.estimated_ns[1]},
            "measured_ns": None if self.measured is None else {"before": self.measured.ns_before,
                                                               "after": self.measured.ns_after,
                                                               "ratio": self.measured.ratio},
            "output": self.output, "notes": self.notes,
        }

    # ---- text -----------------------------------------------------------------------------------------

    def text(self) -> str:
        where = self.filename + (f" [{self.section}]" if self.section else "")
        lines = [f"{where}: {self.before} -> {self.after} slots ({100 * self.reduction:.1f} % smaller), "
                 f"{len(self.outcome.changes)} change(s), equivalence {self.equivalent}, "
                 f"kernel {verdict_word(self.kernel_accepted)}"]
        for change in self.outcome.changes:
            lines.append("")
            lines.append(f"  insn {change.start}: {change.why} ({change.proof}, saves {change.saved})")
            lines.extend(_side_by_side(change, indent="    "))
        if self.estimated_ns is not None:
            b, a = self.estimated_ns
            lines.append(f"estimated {b:.1f} -> {a:.1f} ns per run (latency model)")
        if self.measured is not None:
            m = self.measured
            lines.append(f"measured in the kernel {m.ns_before:.1f} -> {m.ns_after:.1f} ns per run "
                         f"(after/before {m.ratio:.3f})")
        lines.extend(f"note: {note}" for note in self.notes)
        if self.output:
            lines.append(f"wrote {self.output}")
        return "\n".join(lines) + "\n"

    # ---- HTML -----------------------------------------------------------------------------------------

    def html(self) -> str:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise BpforgeError("--report needs matplotlib: pip install 'bpforge[report]'") from None
        figure, axes = plt.subplots(figsize=(7, 3))
        times = [t for t, _ in self.outcome.timeline] + [max(self.outcome.seconds, 1e-3)]
        slots = [s for _, s in self.outcome.timeline] + [self.after]
        axes.step(times, slots, where="post")
        axes.set_xlabel("seconds")
        axes.set_ylabel("slots")
        axes.set_title("best cost so far")
        buffer = io.BytesIO()
        figure.tight_layout()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        plot = base64.b64encode(buffer.getvalue()).decode()
        e = html_lib.escape
        rows = []
        for change in self.outcome.changes:
            before = "\n".join(format_insn(i) for i in change.before)
            after = "\n".join(format_insn(i) for i in change.after) or "(removed)"
            rows.append(f"<tr><td>{change.start}</td><td>{e(change.why)}</td><td>{change.proof}</td>"
                        f"<td>{change.saved}</td><td><pre>{e(before)}</pre></td><td><pre>{e(after)}</pre></td></tr>")
        notes = "".join(f"<li>{e(n)}</li>" for n in self.notes)
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>bpforge optimize</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
            "table{border-collapse:collapse}pre{margin:0}</style></head><body>"
            f"<h1>{e(self.filename)}{' [' + e(self.section) + ']' if self.section else ''}</h1>"
            f"<p>{self.before} &rarr; {self.after} slots ({100 * self.reduction:.1f} % smaller); equivalence "
            f"{self.equivalent}; kernel {verdict_word(self.kernel_accepted)}; {self.outcome.seconds:.1f} s, "
            f"best after {self.outcome.time_to_best:.1f} s.</p>"
            f"<img alt='cost over time' src='data:image/png;base64,{plot}'>"
            f"<ul>{notes}</ul>"
            "<table><tr><th>insn</th><th>why</th><th>proof</th><th>saved</th><th>before</th><th>after</th></tr>"
            + "".join(rows) + "</table></body></html>\n")


def verdict_word(accepted: bool | None) -> str:
    return {True: "accepted", False: "REJECTED", None: "not asked"}[accepted]


def _change_json(change: Change) -> dict:
    return {"round": change.round, "start": change.start, "saved": change.saved, "why": change.why,
            "proof": change.proof, "before": [format_insn(i) for i in change.before],
            "after": [format_insn(i) for i in change.after], "seconds": round(change.seconds, 3)}


def _side_by_side(change: Change, indent: str) -> list[str]:
    left = [format_insn(i) for i in change.before]
    right = [format_insn(i) for i in change.after] or ["(removed)"]
    width = max(len(s) for s in left) if left else 0
    out = []
    for k in range(max(len(left), len(right))):
        a = left[k] if k < len(left) else ""
        b = right[k] if k < len(right) else ""
        out.append(f"{indent}{a:<{width}}  |  {b}")
    return out


__all__ = ["Measured", "OptimizeReport", "verdict_word"]
