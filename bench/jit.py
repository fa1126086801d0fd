"""JIT benchmark: per example program, ns per run of our x86-64 JIT (the repeat loop in native code, as
BPF_PROG_TEST_RUN's loop runs in the kernel) against the kernel's JIT (BPF_PROG_TEST_RUN with repeat) and
our fast tier, all on the same frame in this one run; native instructions per BPF instruction; and the
JIT's compile time per 1,000 BPF instructions; per device arch (arm64, riscv64 on the emulated device),
native instructions per BPF instruction and the device instructions one run executes, beside x86-64's.

    .venv/bin/python bench/jit.py [--repeat 200000] [--only NAME ...] [--json FILE]

Helpers the JIT does not inline are served by the VM's Python code through a call-back (2-3 us each); lookups
of hash-like maps are cached, so the same frame on every run is their best case. The kernel's figure includes
test_run's own per-run work; ours is the native loop alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bpforge import load, vm
from bpforge.errors import BpforgeError
from bpforge.isa.ops import Call, decode_ops
from bpforge.jit import ARCHES, compile_program, plan
from bpforge.jit.device import DeviceSession, run_device, unicorn_available
from bpforge.jit.listing import listing
from bpforge.kernel import kernel_available

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "obj"
# Ethernet + IPv4 + TCP to port 80, as the demo sends.
FRAME = bytes.fromhex("000000000000020000000001080045000032000100004006000000000a0000020a000001303900500000000100"
                      "000000500220000000000000000000000000000000")
RUNNABLE = {"xdp", "sched_cls", "socket_filter"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=200_000, help="runs per measurement (the fast tier: /100)")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    kernel = kernel_available()
    if kernel is not None:
        print(f"(no kernel here: {kernel}; no kernel-JIT column)")
    print(f"{'program':<32}{'insns':>6}{'native/insn':>12}{'compile ms/1k':>14}{'jit ns':>9}{'kernel ns':>10}"
          f"{'fast ns':>10}{'jit/kernel':>11}{'fast/jit':>9}")
    rows = []
    for path in sorted(EXAMPLES.glob("*.o")):
        if args.only and path.stem not in args.only:
            continue
        try:
            program = load(path)
        except BpforgeError as err:
            print(f"{path.stem:<32} not loadable: {err}")
            continue
        if program.loaded.prog_type not in RUNNABLE:
            continue
        try:
            row = measure(path.stem, program, args.repeat, kernel is None)
        except BpforgeError as err:
            print(f"{path.stem:<32} not measured: {err}")
            continue
        rows.append(row)
        kernel_ns = row.get("kernel_ns")
        versus = "" if kernel_ns is None else f"{row['jit_ns'] / kernel_ns:.2f}x"
        kernel_text = "" if kernel_ns is None else f"{kernel_ns:.0f}"
        print(f"{row['program']:<32}{row['insns']:>6}{row['native_per_insn']:>12.2f}{row['compile_ms_per_1k']:>14.1f}"
              f"{row['jit_ns']:>9.0f}{kernel_text:>10}{row['fast_ns']:>10.0f}{versus:>11}"
              f"{row['fast_ns'] / row['jit_ns']:>8.0f}x", flush=True)
    if rows:
        timed = [r for r in rows if r.get("kernel_ns")]
        if timed:
            ratios = sorted(r["jit_ns"] / r["kernel_ns"] for r in timed)
            print(f"\njit/kernel ns per run: median {ratios[len(ratios) // 2]:.2f}x, best {ratios[0]:.2f}x, worst "
                  f"{ratios[-1]:.2f}x over {len(timed)} programs; fast tier / jit: median "
                  f"{sorted(r['fast_ns'] / r['jit_ns'] for r in rows)[len(rows) // 2]:.0f}x")
        devices(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def devices(rows: list[dict]) -> None:
    """The per-arch table: native instructions per BPF instruction (listing) and device instructions per
    run (the emulated core's count), each device's result checked against the fast tier's."""
    arches = [a for a in ARCHES if a != "x86_64"]
    if unicorn_available() is not None:
        print(f"\n(no device rows: {unicorn_available()})")
        return
    print(f"\n{'program':<32}" + "".join(f"{a + ' native/insn':>22}" for a in ARCHES)
          + "".join(f"{a + ' insns/run':>20}" for a in arches))
    for row in rows:
        per = [f"{row['native_per_insn']:>22.2f}"] + [f"{row[a]['native_per_insn']:>22.2f}" for a in arches]
        runs = [f"{row[a]['device_insns_per_run']:>20}" + ("" if row[a]["agree_with_fast"] else " DISAGREES")
                for a in arches]
        print(f"{row['program']:<32}" + "".join(per) + "".join(runs))
    for a in arches:
        ratios = sorted(row[a]["native_per_insn"] / row["native_per_insn"] for row in rows)
        print(f"{a} native instructions / x86-64's: median {ratios[len(ratios) // 2]:.2f}x, "
              f"range {ratios[0]:.2f}-{ratios[-1]:.2f}x")


def measure(name: str, program, repeat: int, with_kernel: bool) -> dict:
    loaded = program.loaded
    facts = plan(loaded)
    started = time.perf_counter()
    image = compile_program(vm.from_loaded(loaded), facts)
    compile_s = time.perf_counter() - started
    insns = vm.from_loaded(loaded).insns
    shown = listing(image, insns, "verified")
    helpers = sum(isinstance(op, Call) and op.kind == "helper" for op in decode_ops(insns))
    row = {"program": f"{name}:{loaded.name}", "insns": len(insns), "helper_calls_in_code": helpers,
           "native_per_insn": shown.native_per_bpf, "compile_ms_per_1k": 1e6 * compile_s / max(len(insns), 1),
           "code_bytes": len(image.code)}
    jit = program.run(FRAME, engine="jit", repeat=repeat, time_budget=None)
    fast = program.run(FRAME, engine="fast", repeat=max(repeat // 100, 10), time_budget=None)
    row.update(jit_ns=jit.ns_per_run, fast_ns=fast.ns_per_run, retval=jit.retval,
               agree_with_fast=(jit.retval, jit.data_out) == (fast.retval, fast.data_out))
    for arch in ARCHES:
        if arch != "x86_64" and unicorn_available() is None:
            row[arch] = measure_device(program, arch, facts, insns, (fast.retval, fast.data_out))
    if with_kernel:
        kern = program.run(FRAME, engine="kernel", repeat=repeat)
        row.update(kernel_ns=kern.ns_per_run, agree_with_kernel=(jit.retval, jit.data_out) == (kern.retval,
                                                                                                  kern.data_out))
    return row


def measure_device(program, arch: str, facts, insns, expected) -> dict:
    """One arch's code for the emulated device: its listing's density and one run's device instructions."""
    shown = listing(compile_program(vm.from_loaded(program.loaded), facts, arch=arch), insns, "verified")
    machine = vm.Machine(vm.from_loaded(program.loaded))
    session = DeviceSession.of(machine.program, facts, arch)
    result = run_device(machine, session, FRAME, program.loaded.prog_type)
    return {"native_per_insn": shown.native_per_bpf, "device_insns_per_run": session.last_executed,
            "agree_with_fast": (result.retval & 0xFFFFFFFF, result.data_out) == expected}


if __name__ == "__main__":
    main()
