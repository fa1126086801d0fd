"""Differential testing of bpforge's engines against each other and against the kernel.

    program    DiffProgram: instructions + map definitions/setup + program type (from the generator or an
               example object)
    generator  random verifier-acceptable XDP programs (seeded; replayable decisions for shrinking)
    engines    interp / fast / KernelEngine: (program, packet) -> Outcome; compare() -> Mismatch
    minimize   shrink a failing generated program by editing its decisions
    packets    realistic Ethernet/IPv4/IPv6/TCP/UDP/ICMP frames with correct checksums
    examples   the example objects as scenarios (map setup, frames, masks for time/randomness)

Used by tests/test_differential.py; DIFF_SEED=n reproduces one generated program there.
"""
