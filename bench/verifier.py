"""Verifier benchmark: per example program, our verification time against the kernel's own (the "verification
time N usec" of its log), the instructions our walk processed against the kernel's "processed N insns", the
states each kept, and our peak memory, as ratios measured in this one run.

    .venv/bin/python bench/verifier.py [--budget N]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

from bpforge.elf import read_object
from bpforge.isa.progtypes import prog_type_of_section
from bpforge.kernel import kernel_available
from bpforge.kernel.program import verify_linked
from bpforge.kernel.verifier_log import parse_log
from bpforge.verifier.check import Unsupported, verify_linked_program

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=int, default=30_000, help="instructions our walk may process")
    args = parser.parse_args()
    reason = kernel_available()
    if reason is not None:
        print(f"the kernel is the baseline and it is not available: {reason}")
        return 0
    print(f"{'program':<34}{'verdict':>9}{'ours ms':>9}{'kernel ms':>10}{'time x':>8}{'insns':>8}{'kernel':>8}"
          f"{'insns x':>8}{'states':>8}{'kernel':>8}{'peak MiB':>9}")
    for path in sorted((ROOT / "examples" / "obj").glob("*.o")):
        obj = read_object(path)
        for program in obj.programs:
            prog_type = prog_type_of_section(program.section)
            if prog_type is None:
                continue
            linked = obj.linked(program.name)
            kernel = parse_log(verify_linked(linked, obj, prog_type=prog_type, log_level=4).log)
            start = time.perf_counter()
            try:
                ours = verify_linked_program(obj, linked, prog_type, budget=args.budget)
                verdict = "accept" if ours.accepted else "reject"
            except Unsupported as why:
                ours, verdict = None, "unknown"
                print(f"  ({program.name}: {why.message})")
            elapsed = (time.perf_counter() - start) * 1e3
            peak = float("nan")
            if ours is not None:  # memory in a second run: tracing slows the walk several times over
                tracemalloc.start()
                verify_linked_program(obj, linked, prog_type, budget=args.budget)
                peak = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
            kernel_ms = (kernel.verification_usec or 0) / 1e3
            processed = ours.processed if ours else 0
            states = ours.states if ours else 0
            print(f"{path.name + ':' + program.name:<34}{verdict:>9}{elapsed:>9.1f}{kernel_ms:>10.2f}"
                  f"{elapsed / kernel_ms if kernel_ms else float('nan'):>8.0f}{processed:>8}{kernel.processed or 0:>8}"
                  f"{processed / kernel.processed if kernel.processed else float('nan'):>8.2f}{states:>8}"
                  f"{kernel.total_states or 0:>8}{peak:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
