"""In-kernel ns per packet: what the optimizer's result really gains, measured by BPF_PROG_TEST_RUN.

A program is loaded with fresh kernel maps made from its MapSpecs (the lddw imm naming a map is its `ref`,
K2's fd, as `formats.load_program` gives them; its position in the list without one), run `repeat` times
on each sample packet, and the kernel's own average duration per run is averaged over the packets.
`compare_ns` times two versions interleaved — packet by packet, alternating which goes first, for several
rounds — and takes the median round of each, so a slow moment of a shared machine hits both alike and
the ratio is fair. Each version gets its own maps, made from the same specs: neither sees what the other
wrote.

Keep in mind what `kernel.testrun` says of `repeat`: every run sees the packet (and map state) the previous
left, so a program that rewrites its packet is timed on what it made of it. The kernel reports whole
nanoseconds per run: a program of a few instructions is timed to about 1 ns.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..errors import BpforgeError
from ..isa import Insn
from ..isa.contexts import ONE_SHOT_KINDS, TEST_RUN_KINDS
from ..isa.maptypes import MapSpec
from ..kernel import KernelMap, KernelProgram, load_insns, test_run

DEFAULT_REPEAT = 10_000
DEFAULT_ROUNDS = 5


def _check(prog_type: str, packets: Sequence[bytes]) -> None:
    kind = TEST_RUN_KINDS.get(prog_type)
    if kind is None:
        raise BpforgeError(f"{prog_type} programs cannot be run by BPF_PROG_TEST_RUN: no ns/packet to measure")
    if kind in ONE_SHOT_KINDS:
        raise BpforgeError(f"{prog_type} test runs cannot repeat, so the kernel cannot time them")
    if not packets:
        raise BpforgeError("timing needs at least one sample packet")


@contextmanager
def loaded(insns: Sequence[Insn], prog_type: str, maps: Sequence[MapSpec] = ()) -> Iterator[KernelProgram]:
    """`insns` loaded into the kernel with new maps made from `maps` (keyed by `ref`); all closed after."""
    owned: list[KernelMap] = []
    prog = None
    try:
        table: dict[int, KernelMap] = {}
        for i, spec in enumerate(maps):
            kmap = KernelMap.create(spec)
            owned.append(kmap)
            table[spec.ref if spec.ref is not None else i] = kmap
        prog = load_insns(insns, prog_type, maps=table, log_level=0, name="bpforge_time")
        yield prog
    finally:
        if prog is not None:
            prog.close()
        for kmap in owned:
            kmap.close()


def _mean_ns(prog: KernelProgram, packets: Sequence[bytes], repeat: int, ctx: bytes | None) -> float:
    return statistics.fmean(test_run(prog, bytes(p), ctx=ctx, repeat=repeat).duration_ns for p in packets)


def ns_per_packet(insns: Sequence[Insn], prog_type: str, maps: Sequence[MapSpec] = (),
                  packets: Sequence[bytes] = (bytes(64),), repeat: int = DEFAULT_REPEAT, *,
                  ctx: bytes | None = None) -> float:
    """The kernel's average ns per run of `insns` (as `prog_type`), averaged over `packets` (each run
    `repeat` times by BPF_PROG_TEST_RUN, with context `ctx` if given). VerifierRejected if the kernel
    refuses the program, TestRunError if it refuses the run, KernelUnavailable without bpf()."""
    _check(prog_type, packets)
    with loaded(insns, prog_type, maps) as prog:
        return _mean_ns(prog, packets, repeat, ctx)


def compare_ns(before: Sequence[Insn], after: Sequence[Insn], prog_type: str, maps: Sequence[MapSpec] = (),
               packets: Sequence[bytes] = (bytes(64),), repeat: int = DEFAULT_REPEAT, *,
               rounds: int = DEFAULT_ROUNDS, ctx: bytes | None = None) -> tuple[float, float]:
    """(ns_before, ns_after): both versions timed interleaved in this one call (per packet, alternating
    which runs first; `rounds` rounds), each the median over rounds of its mean over the packets."""
    _check(prog_type, packets)
    if rounds < 1:
        raise BpforgeError(f"rounds must be at least 1, not {rounds}")
    times: tuple[list[float], list[float]] = ([], [])
    with loaded(before, prog_type, maps) as first, loaded(after, prog_type, maps) as second:
        progs = (first, second)
        for r in range(rounds):
            sums = [0.0, 0.0]
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for packet in packets:
                for which in order:
                    sums[which] += test_run(progs[which], bytes(packet), ctx=ctx, repeat=repeat).duration_ns
            for which in (0, 1):
                times[which].append(sums[which] / len(packets))
    return statistics.median(times[0]), statistics.median(times[1])


def ratio(before_ns: float, after_ns: float) -> float:
    """after / before (below 1: faster), NaN when the before time rounds to 0 ns."""
    return after_ns / before_ns if before_ns > 0 else math.nan


__all__ = ["DEFAULT_REPEAT", "DEFAULT_ROUNDS", "compare_ns", "loaded", "ns_per_packet", "ratio"]
