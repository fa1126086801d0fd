"""Optimizer benchmark: per program of the examples and of K2's 19 benchmark programs (../shared/bench/k2),
slots before and after, K2's published count beside ours, time to the best result, proof status, the
kernel's verdict on the output, and for programs BPF_PROG_TEST_RUN can run the in-kernel time per packet
after/before, measured interleaved in this one run on the same packets.

    .venv/bin/python bench/optimize.py [--budget 60] [--balancer-budget 1800] [--jobs 2] [--only NAME ...]
                                       [--no-examples] [--no-k2] [--json FILE]

Ends with the K2 figures the issue asks for: average reduction (ours vs K2's 14.07 %), programs more than
one slot behind K2, outputs the kernel accepted, changes proved.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

from bpforge.elf import read_object
from bpforge.formats import load_program
from bpforge.isa.progtypes import prog_type_of_section
from bpforge.kernel import kernel_available
from bpforge.opt.measure import compare_ns
from bpforge.opt.optimize import OptimizeOptions
from bpforge.opt.run import optimize_loaded

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test-suite's packet generator: real frames of every kind
from difftest.packets import random_frame  # noqa: E402
K2 = ROOT.parent / "shared" / "bench" / "k2"
TEST_RUNNABLE = {"xdp", "sched_cls", "socket_filter"}


def k2_table() -> dict[str, tuple[str, int, int]]:
    """K2's README table: program -> (kernel type, clang -O2 slots, K2's slots)."""
    rows = {}
    for line in (K2 / "README.md").read_text().splitlines():
        m = re.match(r"\| (\S+) \| [^|]+ \| (\w+) \| (\d+) \| (\d+) \|", line)
        if m:
            rows[m[1]] = (m[2], int(m[3]), int(m[4]))
    return rows


def programs(args):
    """(label, loaded, K2's count or None) for every program benchmarked."""
    if not args.no_examples:
        for path in sorted((ROOT / "examples" / "obj").glob("*.o")):
            for program in read_object(path).programs:
                if prog_type_of_section(program.section) is None:
                    continue
                label = f"{path.stem}:{program.name}"
                if not args.only or any(o in label for o in args.only):
                    yield label, load_program(path, section=program.name), None, None
    if args.no_k2:
        return
    if not K2.is_dir():
        print(f"(K2's programs are not here: {K2} is missing; skipping them)")
        return
    for name, (prog_type, clang, k2) in k2_table().items():
        if args.only and not any(o in name for o in args.only):
            continue
        loaded = load_program(K2 / f"{name}.insns", prog_type=prog_type)
        yield name, loaded, (clang, k2), None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per program")
    parser.add_argument("--balancer-budget", type=float, default=1800.0, help="seconds for xdp-balancer")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--no-examples", action="store_true")
    parser.add_argument("--no-k2", action="store_true")
    parser.add_argument("--no-search", action="store_true", help="rule passes only")
    parser.add_argument("--json", metavar="FILE", help="also write every row as JSON")
    args = parser.parse_args()
    kernel = kernel_available()
    if kernel is not None:
        print(f"(no kernel here: {kernel}; outputs are not kernel-checked, no ns/packet)")
    print(f"{'program':<34}{'before':>7}{'after':>7}{'saved':>8}{'K2':>6}{'vs K2':>7}{'best s':>8}{'proof':>8}"
          f"{'kernel':>8}{'ns after/before':>16}")
    rows = []
    for label, loaded, k2, attach in programs(args):
        budget = args.balancer_budget if label == "xdp-balancer" else args.budget
        options = OptimizeOptions(budget=budget, jobs=args.jobs, seed=args.seed, search=not args.no_search,
                                  kernel=kernel is None)
        began = time.monotonic()
        try:
            report = optimize_loaded(loaded, options)
        except Exception as err:  # one program's failure must not hide the others' figures
            print(f"{label:<34} failed: {type(err).__name__}: {err}")
            rows.append({"program": label, "error": str(err)})
            continue
        ratio = ""
        if kernel is None and loaded.prog_type in TEST_RUNNABLE and report.kernel_accepted:
            try:
                rng = random.Random(args.seed)
                packets = [random_frame(rng) for _ in range(16)]
                packets = [p for p in packets if len(p) >= 60] or [bytes(64)]
                before_ns, after_ns = compare_ns(report.outcome.original, report.outcome.insns, loaded.prog_type,
                                                 list(loaded.maps), packets)
                ratio = f"{after_ns / before_ns:.3f}"
            except Exception as err:
                ratio = f"({type(err).__name__})"
        saved = report.before - report.after
        k2_count = k2[1] if k2 else None
        versus = "" if k2_count is None else f"{report.after - k2_count:+d}"
        kernel_word = {True: "ok", False: "REJECT", None: "-"}[report.kernel_accepted]
        print(f"{label:<34}{report.before:>7}{report.after:>7}{100 * saved / report.before:>7.1f}%"
              f"{'' if k2_count is None else k2_count:>6}{versus:>7}{report.outcome.time_to_best:>8.1f}"
              f"{report.equivalent:>8}{kernel_word:>8}{ratio:>16}", flush=True)
        rows.append({"program": label, "k2": k2_count, "seconds": time.monotonic() - began, **report.as_json()})
    _summary(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def _summary(rows: list[dict]) -> None:
    k2_rows = [r for r in rows if r.get("k2") is not None and "error" not in r]
    if not k2_rows:
        return
    ours = sum((r["before"] - r["after"]) / r["before"] for r in k2_rows) / len(k2_rows)
    theirs = sum((r["before"] - r["k2"]) / r["before"] for r in k2_rows) / len(k2_rows)
    behind = [r["program"] for r in k2_rows if r["after"] > r["k2"] + 1]
    ahead = sum(r["after"] < r["k2"] for r in k2_rows)
    accepted = sum(r["kernel_accepted"] is True for r in k2_rows)
    proved = sum(r["equivalent"] == "proved" for r in k2_rows)
    print(f"\nK2 programs: {len(k2_rows)}; average reduction ours {100 * ours:.2f} % vs K2 {100 * theirs:.2f} % "
          f"(ours/K2 {ours / theirs if theirs else float('nan'):.2f}x); ahead of K2 on {ahead}, more than one slot "
          f"behind on {len(behind)}{': ' + ', '.join(behind) if behind else ''}; kernel accepted {accepted}/"
          f"{len(k2_rows)}; every change proved on {proved}/{len(k2_rows)}")


if __name__ == "__main__":
    sys.exit(main())
