"""Calibrate the latency model on this machine and write it where bpforge ships it.

Times every instruction class and the helpers K2's benchmark programs call with BPF_PROG_TEST_RUN micro-
benchmarks (see `bpforge.opt.calibrate`), then writes src/bpforge/opt/data/latency.json with the kernel
release and CPU model it was measured on. Needs root (bpf()); takes a few minutes at the default repeat.
Do not run it beside other CPU-heavy work: it times the machine.

    .venv/bin/python bench/calibrate.py [--repeat N] [--trials N] [--out FILE] [--keys a,b,...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bpforge.kernel import kernel_available
from bpforge.opt.calibrate import calibrate

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "src" / "bpforge" / "opt" / "data" / "latency.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50_000, help="BPF_PROG_TEST_RUN repeat of each timing")
    parser.add_argument("--trials", type=int, default=7, help="alternate body/baseline timings per benchmark")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--keys", help="only these classes (comma-separated): a partial model, for a look")
    args = parser.parse_args()
    reason = kernel_available()
    if reason is not None:
        print(f"cannot calibrate: {reason}", file=sys.stderr)
        return 2

    def progress(key: str, mode: str, ns: float | None) -> None:
        shown = "skipped (the kernel refuses it)" if ns is None else f"{ns:8.3f} ns"
        print(f"{key:24} {mode:12} {shown}", flush=True)

    keys = args.keys.split(",") if args.keys else None
    model = calibrate(repeat=args.repeat, progress=progress, trials=args.trials, keys=keys)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(model.to_json(), indent=1) + "\n")
    print(f"helper default {model.helper_default:.3f} ns, instruction default {model.insn_default:.3f} ns; "
          f"{len(model.insn_ns)} classes, {len(model.helper_ns)} helper figures -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
