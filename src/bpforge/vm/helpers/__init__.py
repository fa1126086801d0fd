"""Kernel helper functions for the interpreter, by helper id. Each takes the run state (`vm`: .machine,
.input, .tail_calls, .call_function) and r1..r5, and returns r0 (an int, negative errnos as in the kernel)
-- or, for a successful tail call, the program to continue in. An id without an implementation is an
error naming the helper, never a silent zero.

One module per family: maps (element operations, queues, iteration, local storage, redirect maps, perf
events, ring buffers), xdp, skb (packet bytes, checksums, room and protocol changes, tunnel metadata,
LD_ABS/LD_IND), sockets, misc (time, CPU, current task, strings, bpf_loop, spin locks, trace_printk),
tracing (bpf_probe_read_*), routing (bpf_fib_lookup). Importing the package registers them all.
"""

from . import maps, misc, routing, skb, sockets, tracing, xdp  # noqa: F401  (they register their helpers)
from .registry import TailCall, call_helper, implemented
from .skb import legacy_load

__all__ = ["TailCall", "call_helper", "implemented", "legacy_load"]
