"""The partitioner's cost model and cut: which paths of the handler go to BPF, and the predicted speedup.

A request on a path kept in user space costs what it costs the Python-only server — the socket round trip
(the kernel's UDP receive, the `recvfrom` and `sendto` system calls, the interpreter's loop around the
handler: `Costs.socket_ns`) plus the handler's own time on that path (`profile.PathProfile.user_ns`) — plus,
once a BPF half exists, that half's work before it passes the packet up (`Costs.xdp_pass_ns`, and the
path's BPF prefix). A request on an offloaded path costs the BPF half's instructions on it (`bpf_ns`: its
instructions by the optimizer's latency model, calibrated with BPF_PROG_TEST_RUN on this machine) and
the XDP_TX that sends the reply (`Costs.xdp_tx_ns`). Each path's cost adds up independently, so a path is
offloaded when it can run in BPF and costs less there; `force_offload` and `keep_user` override.

What the model leaves out, and says so in the report: the coordination between the halves (an offloaded
read of a map that a user-space path is writing falls back until the write is done: a write-heavy mix
offloads less than predicted), and the receive side's queueing under load.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

from .analyze import Analysis
from .profile import Profile

# Fallbacks when nothing can be measured (no loopback, no bpf()): orders of magnitude, not measurements;
# a report built on them says "default" (Costs.source).
DEFAULT_SOCKET_NS = 25_000.0
DEFAULT_XDP_PASS_NS = 150.0
DEFAULT_XDP_TX_NS = 300.0


@dataclass(frozen=True)
class Costs:
    socket_ns: float  # a request's round trip through the socket and the server's loop, handler excluded
    xdp_pass_ns: float  # running an XDP program that passes the packet up
    xdp_tx_ns: float  # an XDP_TX reply: the rewrite of the headers and the transmit
    source: str  # "measured" or "default"

    def as_json(self) -> dict:
        return vars(self).copy()


@dataclass
class PathDecision:
    index: int
    share: float
    where: str  # bpf | user
    user_ns: float  # the Python-only cost of a request on this path (socket included)
    cost_ns: float  # its cost where it goes
    why: str

    def as_json(self) -> dict:
        return vars(self).copy()


@dataclass
class Cut:
    offloaded: frozenset[int]
    decisions: list[PathDecision]
    python_ns: float  # the mean request cost of the Python-only server, by the model
    partitioned_ns: float  # ... of the partitioned one
    costs: Costs
    caveats: list[str] = field(default_factory=list)

    @property
    def predicted_speedup(self) -> float:
        return self.python_ns / self.partitioned_ns if self.partitioned_ns else 1.0

    def as_json(self) -> dict:
        return {"offloaded_paths": sorted(self.offloaded), "predicted_speedup": self.predicted_speedup,
                "python_ns_per_request": self.python_ns, "partitioned_ns_per_request": self.partitioned_ns,
                "paths": [d.as_json() for d in self.decisions], "costs": self.costs.as_json(),
                "caveats": self.caveats}


def choose_cut(analysis: Analysis, profile: Profile, bpf_ns: dict[int, float], costs: Costs, *,
               force_offload: frozenset[int] = frozenset(), keep_user: frozenset[int] = frozenset(),
               prefix_ns: dict[int, float] | None = None) -> Cut:
    """The paths to offload and why. `bpf_ns`: the BPF half's ns on each offloadable path; `prefix_ns`:
    its ns before it passes a user-space path's packet up (0 when not given)."""
    by_index = {p.index: p for p in profile.paths}
    prefix_ns = prefix_ns or {}
    decisions, offloaded = [], set()
    for path in analysis.paths:
        measured = by_index.get(path.index)
        share = measured.share if measured else 0.0
        python = costs.socket_ns + (measured.user_ns if measured else 0.0)
        kept = python + costs.xdp_pass_ns + prefix_ns.get(path.index, 0.0)
        if not path.offloadable:
            first = path.findings[0]
            why = f"cannot run in BPF: line {first.line}: {first.what} ({first.why})"
            decisions.append(PathDecision(path.index, share, "user", python, kept, why))
            continue
        if path.writes:
            why = (f"writes {', '.join(sorted(path.writes))}: kept in user space, where requests apply in arrival "
                   "order (the socket's queue); offloaded reads of those maps wait for it")
            decisions.append(PathDecision(path.index, share, "user", python, kept, why))
            continue
        in_bpf = bpf_ns.get(path.index)
        if in_bpf is None:
            decisions.append(PathDecision(path.index, share, "user", python, kept, "no BPF code for it"))
            continue
        offload_cost = in_bpf + costs.xdp_tx_ns
        if path.index in keep_user:
            decisions.append(PathDecision(path.index, share, "user", python, kept, "kept in user space (--keep-user)"))
        elif path.index in force_offload or offload_cost < kept:
            why = ("offloaded (--force-offload)" if path.index in force_offload and offload_cost >= kept else
                   f"offloaded: {offload_cost:.0f} ns in BPF against {kept:.0f} ns through the socket")
            decisions.append(PathDecision(path.index, share, "bpf", python, offload_cost, why))
            offloaded.add(path.index)
        else:
            decisions.append(PathDecision(path.index, share, "user", python, kept,
                                          f"cheaper in user space: {kept:.0f} ns against {offload_cost:.0f} ns in BPF"))
    if not offloaded:  # no BPF half at all: nothing runs before the socket
        for d in decisions:
            d.cost_ns = d.user_ns
    total = sum(d.share for d in decisions) or 1.0
    python_ns = sum(d.share * d.user_ns for d in decisions) / total
    partitioned_ns = sum(d.share * d.cost_ns for d in decisions) / total
    caveats = ["offloaded reads of a map a user-space path is writing fall back until the write is done",
               "queueing under load is not modelled"]
    return Cut(frozenset(offloaded), decisions, python_ns, partitioned_ns, costs, caveats)


def measure_socket_ns(requests: int = 2000) -> float:
    """The round trip of a UDP request to a Python server on loopback whose handler does nothing: what
    every request kept in user space pays besides the handler (median of batches)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.settimeout(2.0)
        client.settimeout(2.0)
        address = server.getsockname()

        def serve() -> None:
            try:
                for _ in range(requests):
                    data, peer = server.recvfrom(2048)
                    server.sendto(data, peer)
            except OSError:
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        times = []
        for _ in range(requests):
            started = time.perf_counter_ns()
            client.sendto(b"x" * 32, address)
            client.recvfrom(2048)
            times.append(time.perf_counter_ns() - started)
        thread.join(timeout=2.0)
        return float(statistics.median(times))
    finally:
        server.close()
        client.close()


def default_costs() -> Costs:
    return Costs(DEFAULT_SOCKET_NS, DEFAULT_XDP_PASS_NS, DEFAULT_XDP_TX_NS, "default")


__all__ = ["Costs", "Cut", "PathDecision", "choose_cut", "default_costs", "measure_socket_ns"]
