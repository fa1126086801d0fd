"""Interpreter benchmark: instructions per second of both tiers, the fixed cost of a run, and ns per run of every example in the
reference interpreter, the fast tier and the kernel, as ratios measured in this one run. Every engine is
timed the same way: `repeat` runs on one prepared input (BPF_PROG_TEST_RUN's repeat), plus, for the VM,
the cost of a run on a fresh input (preparing the packet and context, binding the translated code).

    .venv/bin/python bench/vm.py [--repeat N]
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

from bpforge.elf import read_object
from bpforge.formats import load_program
from bpforge.isa import assemble
from bpforge.kernel import kernel_available
from bpforge.vm import Machine, from_insns, from_object, run_fast

ROOT = Path(__file__).resolve().parent.parent
ARITHMETIC = """
    r0 = 0
    r1 = {n}
    r2 = 7
loop:
    r3 = r1
    r3 *= r2
    r3 ^= r0
    r0 += r3
    r0 &= 0xffffff
    r4 = r0
    r4 >>= 3
    r0 -= r4
    r1 -= 1
    if r1 != 0 goto loop
    exit
"""


def packet() -> bytes:
    """Ethernet + IPv4 + TCP to 10.0.0.1:80, 64 bytes."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 50, 1, 0, 64, 6, 0, bytes([192, 168, 1, 2]), bytes([10, 0, 0, 1]))
    tcp = struct.pack("!HHIIBBHHH", 12345, 80, 1, 0, 0x50, 0x02, 8192, 0, 0)
    return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00" + ip + tcp + bytes(10)


def throughput(n: int) -> None:
    program = from_insns(assemble(ARITHMETIC.format(n=n)))
    rates = {}
    for tier, execute in (("interp", lambda m: m.run(bytes(64))), ("fast", lambda m: run_fast(m, bytes(64)))):
        machine = Machine(program, budget=10**10)
        execute(machine)  # the fast tier translates once, outside the measurement
        start = time.perf_counter()
        result = execute(machine)
        rates[tier] = result.executed / (time.perf_counter() - start)
        print(f"{tier:>6}: {rates[tier] / 1e6:7.2f} M instructions/s  ({result.executed} instructions)")
    print(f"  fast / interp: {rates['fast'] / rates['interp']:.1f}x")


def fixed_cost(runs: int) -> None:
    """What a run costs beyond its instructions: a 3-instruction program repeated on one input, as
    `bpforge run --repeat` does (set-up happens once per program and input, not per run)."""
    program = from_insns(assemble("r0 = 1\nr0 += 1\nexit\n"))
    costs = {}
    for tier, execute in (("interp", lambda m, n: m.run(bytes(64), repeat=n)),
                          ("fast", lambda m, n: run_fast(m, bytes(64), repeat=n))):
        machine = Machine(program)
        execute(machine, 1)
        start = time.perf_counter_ns()
        execute(machine, runs)
        costs[tier] = (time.perf_counter_ns() - start) / runs
    print(f"\nfixed cost per run (3 instructions, repeat {runs}): interp {costs['interp']:.0f} ns, "
          f"fast {costs['fast']:.0f} ns")


def per_example(repeat: int) -> None:
    from bpforge.kernel.program import load_loaded

    reason = kernel_available()
    print(f"\n{'example':<24}{'interp ns':>11}{'fast ns':>10}{'kernel ns':>11}{'fast/kernel':>13}"
          f"{'interp/kernel':>15}{'fresh-input fast ns':>21}")
    data = packet()
    for path in sorted((ROOT / "examples" / "obj").glob("*.o")):
        if path.name.startswith(("legacy_maps", "asm_mem")):
            continue
        loaded = load_program(path)
        times = {}
        for tier in ("interp", "fast"):
            machine = Machine(from_object(read_object(path), loaded.name))
            execute = machine.run if tier == "interp" else (lambda *a, m=machine, **k: run_fast(m, *a, **k))
            execute(data, loaded.prog_type)  # the fast tier translates once, outside the measurement
            runs = max(1, repeat * (5 if tier == "interp" else 50))
            start = time.perf_counter_ns()
            execute(data, loaded.prog_type, repeat=runs)
            times[tier] = (time.perf_counter_ns() - start) / runs
            if tier == "fast":
                start = time.perf_counter_ns()
                for _ in range(repeat):
                    execute(data, loaded.prog_type)
                times["fresh"] = (time.perf_counter_ns() - start) / repeat
        kernel = float("nan")
        if reason is None:
            with load_loaded(loaded) as prog:
                kernel = prog.test_run(data, repeat=repeat * 100).duration_ns
        print(f"{path.name:<24}{times['interp']:>11.0f}{times['fast']:>10.0f}{kernel:>11.1f}"
              f"{times['fast'] / kernel:>13.0f}{times['interp'] / kernel:>15.0f}{times['fresh']:>21.0f}")
    if reason is not None:
        print(f"(kernel column empty: {reason})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--loop", type=int, default=100_000, help="iterations of the arithmetic loop")
    args = parser.parse_args()
    throughput(args.loop)
    fixed_cost(args.repeat * 500)
    per_example(args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
