"""Offload benchmark: per example program and device profile, whether the device takes it (and the first
reason when not), the device cycles one packet costs by the profile (the emulated device counts each BPF
instruction it runs; the profile prices them) and that time at the device's clock against the host's ns
per packet (the kernel's JIT through BPF_PROG_TEST_RUN with repeat where bpf() works, else our x86-64
JIT), all in this one run on the same frame. A partly offloadable program runs staged: the device part's
cycles, and the host part's ns per packet (its program in the kernel, test_run with the device's metadata)
against the host-only program's — what the host still spends once the device has done its part.

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
          f"{'device/host':>12}{'host part ns':>13}{'part/host':>10}  why not / cut")
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
            row = measure(path.stem, program, device.name, host, engine == "kernel", args.repeat)
            rows.append(row)
            cycles = "" if row["cycles"] is None else f"{row['cycles']}"
            dev_ns = "" if row["device_ns"] is None else f"{row['device_ns']:.0f}"
            ratio = "" if row["device_ns"] is None else f"{row['device_ns'] / host:.2f}x"
            part = "" if row["host_part_ns"] is None else f"{row['host_part_ns']:.0f}"
            part_ratio = "" if row["host_part_ns"] is None else f"{row['host_part_ns'] / host:.2f}x"
            print(f"{path.stem:<22}{device.name:<18}{row['verdict']:<13}{cycles:>8}{dev_ns:>10}{host:>9.0f}"
                  f"{ratio:>12}{part:>13}{part_ratio:>10}  {row['why']}", flush=True)
    offloaded = [r for r in rows if r["device_ns"] is not None]
    for device in profiles:
        mine = sorted(r["device_ns"] / r["host_ns"] for r in offloaded if r["device"] == device.name)
        taken = sum(r["verdict"] == "offloadable" for r in rows if r["device"] == device.name)
        total = sum(r["device"] == device.name for r in rows)
        summary = (f"device/host ns median {mine[len(mine) // 2]:.2f}x, range {mine[0]:.2f}-{mine[-1]:.2f}x"
                   if mine else "nothing ran there")
        staged = sorted(r["host_part_ns"] / r["host_ns"] for r in rows if r["device"] == device.name
                        and r["host_part_ns"] is not None)
        split = (f"; staged: host part / host only median {staged[len(staged) // 2]:.2f}x over {len(staged)}"
                 if staged else "")
        print(f"{device.name}: {taken} of {total} programs offloadable; {summary}{split}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def measure(name: str, program, device: str, host_ns: float, kernel: bool, repeat: int) -> dict:
    report = program.offload_check(device)
    row = {"program": name, "device": device, "verdict": report.verdict, "host_ns": host_ns, "cycles": None,
           "device_ns": None, "host_part_ns": None, "why": ""}
    if report.verdict == "host only":
        first = report.reasons[0]
        row["why"] = ("" if first.insn is None else f"insn {first.insn}: ") + first.message
        return row
    run = program.offload_run(device, FRAME, report=report)
    if run.device_cycles is not None:
        row.update(cycles=run.device_cycles, device_ns=run.device_ns)
    if report.verdict == "partly":
        row["why"] = run.why
        if run.handed and kernel:
            row["host_part_ns"] = host_part_ns(run, repeat)
    elif run.ran_on != "device":
        row["why"] = run.why
    return row


def host_part_ns(run, repeat: int) -> float:
    """The staged host program in the kernel, on the frame the device handed over (metadata first)."""
    from bpforge.kernel import KernelMap, load_insns, xdp_md

    staged = run.staged
    maps = [KernelMap.create(spec) for spec in staged.maps]
    try:
        with load_insns(staged.host, "xdp", maps=maps) as prog:
            meta = len(run.handed) - len(FRAME)
            return prog.test_run(run.handed, ctx=xdp_md(len(run.handed), meta_len=meta), repeat=repeat).duration_ns
    finally:
        for m in maps:
            m.close()


if __name__ == "__main__":
    main()
