"""Optimizing at scale, measured in one run on this machine:

1. workers: one program (K2's xdp_fwd by default) optimized for the same budget in this process, on 2 local
   worker processes and on a local Ray instance of 2 workers: seconds of window search per second of wall
   time (throughput, ratio to 1 worker), windows searched, slots reached, time to the best result, proof and
   kernel verdict;
2. fleet: K2's programs (all but xdp-balancer) as one `optimize-many` fleet, first with a fresh rule store
   (cold), then again with the store that run filled, rule passes only (warm, no search) and with the
   search (warm): rule hits (rate: changes made by stored rules / changes), slots, and the time to the best
   result summed over the fleet (time saved by the reuse);
3. xdp-balancer (Katran, 1,811 slots) end to end on 2 local workers with a checkpoint, beside K2's 1,603.

    .venv/bin/python bench/scale.py [--budget 60] [--program xdp_fwd] [--fleet-budget 20]
                                    [--balancer-budget 1800] [--skip workers|fleet|balancer ...] [--json FILE]

K2's programs are read from ../shared/bench/k2 (the fleet is a manifest of links to them in a temporary
directory; nothing is copied); the parts that need them skip with a reason when it is absent, the workers
part falls back to examples/obj/xdp_lb.o. The Ray part skips with a reason when Ray is not installed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from bpforge.formats import load_program
from bpforge.kernel import kernel_available
from bpforge.opt.backends import make_backend
from bpforge.opt.fleet import optimize_fleet
from bpforge.opt.optimize import OptimizeOptions
from bpforge.opt.run import optimize_loaded

from optimize import K2, k2_table  # bench/optimize.py, beside this script: where K2's programs are, its table

ROOT = Path(__file__).resolve().parent.parent
K2_BALANCER = 1603  # K2's published count for xdp-balancer (Table 1), in days of search


def k2_types() -> dict[str, str]:
    """K2's README table: program -> the kernel type it loads as."""
    return {name: prog_type for name, (prog_type, _, _) in k2_table().items()}


def load_subject(name: str):
    if K2.is_dir() and (K2 / f"{name}.insns").exists():
        return load_program(K2 / f"{name}.insns", prog_type=k2_types().get(name))
    print(f"(K2's {name} is not at {K2}; the workers part uses examples/obj/xdp_lb.o)")
    return load_program(ROOT / "examples" / "obj" / "xdp_lb.o")


# ---- 1. workers ----------------------------------------------------------------------------------------------

def workers_part(args) -> list[dict]:
    loaded = load_subject(args.program)
    configs = [("1 process", dict(jobs=1)), ("2 processes", dict(jobs=2))]
    try:
        import ray
    except ImportError:
        ray = None
        print("(Ray is not installed: pip install 'bpforge[ray]'; the Ray cluster column is skipped)")
    rows = []
    for label, extra in configs + ([("Ray cluster of 2", dict(ray="auto"))] if ray else []):
        if "ray" in extra:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        backend = make_backend(extra.get("jobs", 1), extra.get("ray"))
        try:
            began = time.monotonic()
            report = optimize_loaded(loaded, OptimizeOptions(budget=args.budget, seed=args.seed, **extra),
                                     backend=backend)
            wall = time.monotonic() - began
        finally:
            backend.close()
            if "ray" in extra:
                ray.shutdown()
        outcome = report.outcome
        rows.append({"config": label, "workers": backend.workers, "wall": round(wall, 1), "units": outcome.units,
                     "chain_seconds": round(outcome.chain_seconds, 1), "search_rate": outcome.chain_seconds / wall,
                     "before": report.before, "after": report.after,
                     "time_to_best": round(outcome.time_to_best, 1), "proof": report.equivalent,
                     "kernel": report.kernel_accepted, "lost": len(outcome.lost)})
    base = rows[0]["search_rate"] or 1.0
    print(f"\n1. workers: {loaded.name} ({rows[0]['before']} slots), {args.budget:g} s each; chain s: the time the "
          "window searches' chains ran, summed")
    print(f"{'config':18} {'workers':>7} {'wall s':>7} {'windows':>8} {'chain s':>8} {'per wall s':>10} {'vs 1':>6} "
          f"{'slots':>11} {'to best s':>9} {'proof':>7} {'kernel':>8} {'lost':>5}")
    for r in rows:
        print(f"{r['config']:18} {r['workers']:>7} {r['wall']:>7.1f} {r['units']:>8} {r['chain_seconds']:>8.1f} "
              f"{r['search_rate']:>10.2f} {r['search_rate'] / base:>5.2f}x {r['before']:>5} -> {r['after']:<4} "
              f"{r['time_to_best']:>9.1f} {r['proof']:>7} {_verdict(r['kernel']):>8} {r['lost']:>5}")
    return rows


# ---- 2. fleet --------------------------------------------------------------------------------------------------

def fleet_part(args) -> dict:
    types = k2_types()
    with tempfile.TemporaryDirectory(prefix="bpforge-scale-") as tmp:
        fleet = Path(tmp) / "k2"
        fleet.mkdir()
        lines = []
        for name, prog_type in types.items():
            if name == "xdp-balancer":
                continue
            for suffix in (".insns", ".maps", ".desc"):
                if (K2 / f"{name}{suffix}").exists():
                    (fleet / f"{name}{suffix}").symlink_to(K2 / f"{name}{suffix}")  # read in place
            lines.append(f"{name}.insns type={prog_type}")
        manifest = fleet / "fleet.txt"
        manifest.write_text("\n".join(lines) + "\n")
        runs = {}
        # (label, store, search): the shipped rules alone are the baseline the learned ones must beat
        plan = (("shipped, rules only", "shipped.sqlite", False), ("cold, search", "rules.sqlite", True),
                ("warm, rules only", "rules.sqlite", False), ("warm, search", "rules.sqlite", True))
        for label, store, search in plan:
            options = OptimizeOptions(budget=args.fleet_budget, jobs=2, seed=args.seed, search=search,
                                      rules_store=str(Path(tmp) / store))
            began = time.monotonic()
            summary = optimize_fleet(manifest, Path(tmp) / re.sub(r"\W+", "-", label), options)
            wall = time.monotonic() - began
            done = [r for r in summary.rows if r.after is not None]
            runs[label] = {"wall": round(wall, 1), "programs": len(done),
                           "failed": sum(r.status == "failed" for r in summary.rows),
                           "before": sum(r.before for r in done), "after": sum(r.after for r in done),
                           "changes": sum(r.changes for r in done), "rule_hits": sum(r.rule_hits for r in done),
                           "time_to_best": round(sum(r.time_to_best for r in done), 1),
                           "proved": all(r.equivalent in (None, "proved") for r in done),
                           "kernel_refused": sum(r.kernel_accepted is False for r in done)}
    base, cold, warm = runs["shipped, rules only"], runs["cold, search"], runs["warm, rules only"]
    print(f"\n2. fleet: K2's {cold['programs']} programs (xdp-balancer apart), {args.fleet_budget:g} s each, "
          "2 workers; one store, filled by the cold run")
    print(f"{'run':20} {'wall s':>7} {'slots':>13} {'saved':>6} {'changes':>8} {'rule hits':>9} {'hit rate':>8} "
          f"{'to best s':>9} {'proved':>6} {'refused':>7}")
    for label, r in runs.items():
        rate = r["rule_hits"] / r["changes"] if r["changes"] else 0.0
        print(f"{label:20} {r['wall']:>7.1f} {r['before']:>5} -> {r['after']:<5} {r['before'] - r['after']:>6} "
              f"{r['changes']:>8} {r['rule_hits']:>9} {rate:>8.2f} {r['time_to_best']:>9.1f} {str(r['proved']):>6} "
              f"{r['kernel_refused']:>7}")
    found = base["after"] - cold["after"]  # what the search added to the shipped rules
    if found > 0:
        kept = base["after"] - warm["after"]
        print(f"the search found {found} slots beyond the shipped rules in {cold['wall']:.0f} s; the store it filled "
              f"gives back {kept} of them ({100 * kept / found:.0f} %) with no search, in {warm['wall']:.1f} s "
              f"({warm['wall'] / cold['wall']:.3f}x the time)")
    return runs


# ---- 3. xdp-balancer ----------------------------------------------------------------------------------------

def balancer_part(args) -> dict:
    loaded = load_program(K2 / "xdp-balancer.insns", prog_type="xdp")
    with tempfile.TemporaryDirectory(prefix="bpforge-scale-") as tmp:
        options = OptimizeOptions(budget=args.balancer_budget, jobs=2, seed=args.seed,
                                  checkpoint=str(Path(tmp) / "balancer.ckpt"))
        began = time.monotonic()
        report = optimize_loaded(loaded, options,
                                 progress=lambda phase, best, seconds: print(f"  {seconds:7.1f} s  {best:5} slots  {phase}",
                                                                             end="\r", flush=True))
        wall = time.monotonic() - began
    outcome = report.outcome
    reached = next((t for t, slots in outcome.timeline if slots <= K2_BALANCER), None)
    row = {"before": report.before, "after": report.after, "k2": K2_BALANCER, "wall": round(wall, 1),
           "time_to_k2": None if reached is None else round(reached, 1), "time_to_best": round(outcome.time_to_best, 1),
           "changes": len(outcome.changes), "proof": report.equivalent, "kernel": report.kernel_accepted,
           "units": outcome.units}
    print(" " * 60, end="\r")
    print(f"\n3. xdp-balancer on 2 local workers, budget {args.balancer_budget:g} s")
    print(f"{row['before']} -> {row['after']} slots ({100 * (1 - row['after'] / row['before']):.1f} % smaller; K2: "
          f"{K2_BALANCER}, ours/K2 {row['after'] / K2_BALANCER:.3f}), K2's count reached after "
          f"{'-' if reached is None else f'{reached:.0f} s'}, best after {row['time_to_best']:.0f} s of {row['wall']:.0f} s, "
          f"{row['changes']} changes ({row['proof']}), kernel {_verdict(row['kernel'])}, {row['units']} windows searched")
    return row


def _verdict(accepted) -> str:
    return {True: "accepted", False: "REFUSED", None: "-"}[accepted]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per run of the workers part")
    parser.add_argument("--program", default="xdp_fwd", help="K2 program of the workers part")
    parser.add_argument("--fleet-budget", type=float, default=20.0, help="seconds per program of the fleet")
    parser.add_argument("--balancer-budget", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=("workers", "fleet", "balancer"))
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    if kernel_available() is not None:
        print(f"(no kernel verdicts: {kernel_available()})")
    figures = {}
    if "workers" not in args.skip:
        figures["workers"] = workers_part(args)
    for part, run in (("fleet", fleet_part), ("balancer", balancer_part)):
        if part in args.skip:
            continue
        if not K2.is_dir():
            print(f"\n({part}: K2's programs are not at {K2}; skipped)")
            continue
        figures[part] = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
