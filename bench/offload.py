"""Offload benchmark: per example program and device profile, whether the device takes it (and the first
reason when not), the device cycles one packet costs by the profile (the emulated device counts each BPF
instruction it runs; the profile prices them) and that time at the device's clock against the host's ns
per packet (the kernel's JIT through BPF_PROG_TEST_RUN with repeat where bpf() works, else our x86-64
JIT), all in this one run on the same frame.

    .venv/bin/python bench/offload.py [--repeat 100000] [--only NAME ...] [--devices D ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bpforge import devices, load
from bpforge.errors import BpforgeError
from bpforge.jit.device import unicorn_available
from bpforge.kernel import kernel_available

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "obj"
# Ethernet + IPv4 + TCP to port 80, as the demo sends.
FRAME = bytes.fromhex("000000000000020000000001080045000032000100004006000000000a0000020a000001303900500000000100"
                      "000000500220000000000000000000000000000000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=100_000, help="host runs per measurement")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--devices", nargs="*")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if unicorn_available() is not None:
        print(f"(no emulated devices: {unicorn_available()})")
        return
    engine = "kernel" if kernel_available() is None else "jit"
    profiles = [d for d in devices() if d.kind != "host" and (not args.devices or d.name in args.devices)]
    print(f"host ns per packet: {'the kernel JIT (test_run)' if engine == 'kernel' else 'our x86-64 JIT'}")
    print(f"{'program':<22}{'device':<18}{'verdict':<13}{'cycles':>8}{'device ns':>10}{'host ns':>9}"
          f"{'device/host':>12}  why not")
    rows = []
    for path in sorted(EXAMPLES.glob("*.o")):
        if args.only and path.stem not in args.only:
            continue
        program = load(path)
        try:
            host = program.run(FRAME, engine=engine, repeat=args.repeat, time_budget=None).ns_per_run
        except BpforgeError as err:
            print(f"{path.stem:<22}not run on the host: {err}")
            continue
        for device in profiles:
            row = measure(path.stem, program, device.name, host)
            rows.append(row)
            cycles = "" if row["cycles"] is None else f"{row['cycles']}"
            dev_ns = "" if row["device_ns"] is None else f"{row['device_ns']:.0f}"
            ratio = "" if row["device_ns"] is None else f"{row['device_ns'] / host:.2f}x"
            print(f"{path.stem:<22}{device.name:<18}{row['verdict']:<13}{cycles:>8}{dev_ns:>10}{host:>9.0f}"
                  f"{ratio:>12}  {row['why']}", flush=True)
    offloaded = [r for r in rows if r["device_ns"] is not None]
    for device in profiles:
        mine = sorted(r["device_ns"] / r["host_ns"] for r in offloaded if r["device"] == device.name)
        taken = sum(r["verdict"] == "offloadable" for r in rows if r["device"] == device.name)
        total = sum(r["device"] == device.name for r in rows)
        summary = (f"device/host ns median {mine[len(mine) // 2]:.2f}x, range {mine[0]:.2f}-{mine[-1]:.2f}x"
                   if mine else "nothing ran there")
        print(f"{device.name}: {taken} of {total} programs offloadable; {summary}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def measure(name: str, program, device: str, host_ns: float) -> dict:
    report = program.offload_check(device)
    row = {"program": name, "device": device, "verdict": report.verdict, "host_ns": host_ns, "cycles": None,
           "device_ns": None, "why": ""}
    if report.verdict != "offloadable":
        first = report.reasons[0]
        row["why"] = ("" if first.insn is None else f"insn {first.insn}: ") + first.message
        return row
    run = program.offload_run(device, FRAME)
    if run.ran_on == "device":
        row.update(cycles=run.device_cycles, device_ns=run.device_ns)
    else:
        row["why"] = run.why
    return row


if __name__ == "__main__":
    main()
