"""`bpforge partition`: analyze, profile, cut and compile an application into its two halves.

    analysis  the handler's paths and what each may do (partition/analyze.py)
    profile   how often each path runs on the trace and what it costs in Python (partition/profile.py)
    measure   the BPF half with every offloadable path offloaded, loaded into the kernel and timed with
              BPF_PROG_TEST_RUN on the trace's requests of each path (what `bpf_ns` of the cost model is)
    cut       the paths to offload (partition/cost.py); the BPF half generated again for that cut
    check     the object through our verifier and the kernel's, then the optimizer (within its budget)

The output directory holds xdp.c (the generated source), xdp.o (what is deployed: the optimizer's result
when it is proved and the kernel accepts it, else clang's), user.py (the user half's resume functions),
partition.json (everything `partition run` needs, and the report) and, when asked, an HTML report.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import BpforgeError
from .analyze import Analysis, PartitionError, analyze_file
from .codegen import CodegenError, Program, generate
from .cost import Cut, choose_cut, default_costs, measure_socket_ns
from .profile import Profile, load_module, profile_handler, read_trace
from .resume import resume_source

CLANG = "clang-19"
MEASURE_REPEAT = 200  # test runs per sample request
VERSION = 1  # of partition.json


@dataclass
class Partition:
    """The result of `partition()`: what was decided and where it was written."""

    analysis: Analysis
    profile: Profile | None
    cut: Cut
    program: Program
    bpf_ns: dict[int, float]
    out_dir: Path | None
    insns: int = 0  # of the deployed object's program
    checks: dict[str, Any] = field(default_factory=dict)  # verifier verdicts, the optimizer's figures

    @property
    def predicted_speedup(self) -> float:
        return self.cut.predicted_speedup

    def as_json(self) -> dict:
        return {"source": self.analysis.source, "handler": self.analysis.handler, "port": self.analysis.port,
                "cut": self.cut.as_json(), "predicted_speedup": self.predicted_speedup,
                "bpf_ns": {str(k): v for k, v in sorted(self.bpf_ns.items())},
                "points": [{"point": p.number, "line": p.line, "paths": p.paths,
                            "live": [[n, live_spec(k, d)] for n, k, d in p.live]} for p in self.program.points],
                "coordinated_maps": self.program.coordinated, "insns": self.insns, "checks": self.checks,
                "analysis": self.analysis.as_json(), "profile": self.profile.as_json() if self.profile else None}

    def text(self) -> str:
        lines = [f"{self.analysis.source}: handler {self.analysis.handler} (xdp, UDP port {self.analysis.port})"]
        by_path = {p.index: p for p in self.analysis.paths}
        for d in self.cut.decisions:
            path = by_path[d.index]
            lines.append(f"  path {d.index} ({d.share:.0%}) -> {d.where}: {path.describe()}")
            lines.append(f"      {d.why}")
        for p in self.program.points:
            live = ", ".join(n for n, _, _ in p.live) or "nothing"
            lines.append(f"  user point {p.number} at line {p.line} (paths {p.paths}): carries {live}")
        if self.program.coordinated:
            lines.append(f"  pending counters for {', '.join(self.program.coordinated)}: offloaded reads wait "
                         "for the user half's writes")
        for name, value in self.checks.items():
            lines.append(f"  {name}: {value}")
        lines.append(f"  predicted speedup {self.predicted_speedup:.2f}x "
                     f"({self.cut.python_ns:.0f} -> {self.cut.partitioned_ns:.0f} ns per request)")
        if self.out_dir is not None:
            lines.append(f"  written to {self.out_dir}/ (run it: bpforge partition run {self.out_dir} --dev IFACE)")
        return "\n".join(lines)


def live_spec(kind: str, desc: Any) -> Any:
    """A live variable's kind as partition.json records it: "int", "bytes", ["struct", NAME], ["opt", SPEC]."""
    if kind == "struct":
        return ["struct", desc.name]
    if kind == "opt":
        return ["opt", live_spec(*desc)]
    return kind


def udp_frame(payload: bytes, port: int, *, source_port: int = 40000) -> bytes:
    """An Ethernet/IPv4/UDP frame carrying `payload` to `port` (10.0.0.2 -> 10.0.0.1), for test runs."""
    udp = struct.pack("!HHHH", source_port, port, 8 + len(payload), 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0x4000, 64, 17, 0, bytes([10, 0, 0, 2]),
                     bytes([10, 0, 0, 1]))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp + payload


def compile_c(source: str, output: Path) -> None:
    """clang-19 -O2 -g for BPF; a PartitionError with clang's first error when it fails."""
    c_file = output.with_suffix(".c")
    c_file.write_text(source)
    arch = os.uname().machine  # the multiarch include directory of linux/bpf.h's asm/types.h
    argv = [CLANG, "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-w", f"-I/usr/include/{arch}-linux-gnu",
            "-c", str(c_file), "-o", str(output)]
    if shutil.which(CLANG) is None:
        raise PartitionError(f"{CLANG} is needed to compile the BPF half (apt install clang-19)")
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        first = next((ln for ln in result.stderr.splitlines() if "error" in ln), result.stderr.strip()[:200])
        raise PartitionError(f"{c_file}: clang-19 failed: {first}")


def partition(app: str | Path, *, handler: str | None = None, trace: str | Path | None = None,
              out_dir: str | Path | None = None, force_offload: frozenset[int] = frozenset(),
              keep_user: frozenset[int] = frozenset(), optimize_budget: float = 20.0, verify: bool = True,
              progress: Callable[[str], None] | None = None) -> Partition:
    """Partition the application at `app` (see the module docstring). `trace`: a pcap or requests file
    for the profile (without one every path weighs the same and costs only its socket round trip in
    Python). `force_offload` / `keep_user`: path numbers whose placement the cost model does not decide."""
    from .. import kernel

    say = progress or (lambda _: None)
    analysis = analyze_file(app, handler)
    namespace = vars(load_module(analysis.text, analysis.source, None))
    say("profiling")
    requests = read_trace(trace, analysis.port) if trace is not None else []
    profile = profile_handler(analysis, requests) if requests else None
    _check_overrides(analysis, force_offload, keep_user)
    possible = frozenset(p.index for p in analysis.paths if p.offloadable and not p.writes) - keep_user
    work = Path(tempfile.mkdtemp(prefix="bpforge-partition-"))
    try:
        say("compiling the BPF half")
        program, possible, uncompiled = _generate(analysis, namespace, possible)
        compile_c(program.c, work / "xdp.o")
        reason = kernel.kernel_available()
        bpf_ns: dict[int, float] = {}
        prefix_ns: dict[int, float] = {}
        if reason is None and profile is not None:
            say("timing the BPF half (BPF_PROG_TEST_RUN)")
            bpf_ns, prefix_ns = _measure(work / "xdp.o", analysis, profile, possible)
        try:
            socket_ns = measure_socket_ns()
            costs = replace(default_costs(), socket_ns=socket_ns, source="measured")
        except OSError:
            costs = default_costs()
        if profile is None:
            profile = Profile(0, [], 0)
        for index in possible - set(bpf_ns):
            bpf_ns[index] = costs.xdp_tx_ns  # never timed (no kernel or no request of it): the model's default
        blocked = frozenset(uncompiled) & force_offload
        if blocked:
            index = min(blocked)
            raise PartitionError(f"path {index} cannot be offloaded: {uncompiled[index]}")
        cut = choose_cut(analysis, profile, bpf_ns, costs, force_offload=force_offload,
                         keep_user=keep_user | frozenset(uncompiled), prefix_ns=prefix_ns)
        for decision in cut.decisions:
            if decision.index in uncompiled:
                decision.why = f"cannot be compiled to BPF: {uncompiled[decision.index]}"
        if cut.offloaded != possible:
            program = generate(analysis, namespace, cut.offloaded)
            compile_c(program.c, work / "xdp.o")
        result = Partition(analysis, profile, cut, program, bpf_ns, None)
        deployed = work / "xdp.o"
        if verify:
            deployed = _check(result, work, optimize_budget, say, reason is None)
        from ..elf import read_object

        result.insns = len(read_object(deployed).linked().insns)
        if out_dir is not None:
            result.out_dir = _write(result, Path(out_dir), work, deployed)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _generate(analysis: Analysis, namespace: dict, offloaded: frozenset[int]):
    """The BPF half for as many of `offloaded` as compile: a path that reaches a construct the compiler
    cannot lower goes to user space with the reason (program, the paths offloaded, {path: why})."""
    uncompiled: dict[int, str] = {}
    while True:
        try:
            return generate(analysis, namespace, offloaded), offloaded, uncompiled
        except CodegenError as err:
            blocked = err.paths & offloaded
            if not blocked:
                raise
            for index in blocked:
                uncompiled[index] = str(err).split(": ", 1)[-1] if ": " in str(err) else str(err)
            offloaded = offloaded - blocked


def _check_overrides(analysis: Analysis, force_offload: frozenset[int], keep_user: frozenset[int]) -> None:
    known = {p.index for p in analysis.paths}
    for index in sorted(force_offload | keep_user):
        if index not in known:
            raise PartitionError(f"{analysis.source}: no path {index} (paths: {', '.join(map(str, sorted(known)))})")
    for index in sorted(force_offload):
        path = next(p for p in analysis.paths if p.index == index)
        if not path.offloadable:
            raise PartitionError(f"{analysis.source}: path {index} cannot be offloaded: {path.findings[0].text()}")
        if path.writes:
            raise PartitionError(f"{analysis.source}: path {index} writes {', '.join(sorted(path.writes))}: writes "
                                 "stay in user space, where requests apply in arrival order")


def _measure(obj_path: Path, analysis: Analysis, profile: Profile, offloaded: frozenset[int]):
    """ns per request of each path in the BPF half (median over its sample requests), from the kernel's own
    test-run timing: offloaded paths to their reply, the others to their pass-up."""
    from .. import kernel
    from ..elf import read_object

    obj = read_object(obj_path)
    bpf_ns, prefix_ns = {}, {}
    with kernel.load_linked(obj.linked(), obj, log_level=0) as prog:
        for index, samples in profile.samples.items():
            if not samples:
                continue
            times = sorted(prog.test_run(udp_frame(s, analysis.port), repeat=MEASURE_REPEAT).duration_ns
                           for s in samples)
            (bpf_ns if index in offloaded else prefix_ns)[index] = times[len(times) // 2]
    return bpf_ns, prefix_ns


def _check(result: Partition, work: Path, budget: float, say, kernel_ok: bool) -> Path:
    """Our verifier (and the kernel's) on the object, then the optimizer; the object to deploy."""
    from ..formats import load_program
    from ..opt.optimize import OptimizeOptions
    from ..opt.run import optimize_loaded
    from ..verifier.report import verify_loaded

    obj = work / "xdp.o"
    say("verifying the BPF half")
    loaded = load_program(obj, link=False)
    report = verify_loaded(loaded, kernel=kernel_ok)
    result.checks["verifier"] = report.verdict
    if kernel_ok and report.kernel is not None:
        result.checks["kernel verifier"] = getattr(report.kernel, "verdict", str(report.kernel))
    if report.verdict == "reject":
        raise PartitionError(f"{obj}: our verifier rejects the generated BPF half: {report.text().splitlines()[0]}")
    if budget <= 0:
        return obj
    say(f"optimizing the BPF half ({budget:g} s)")
    optimized = work / "xdp.opt.o"
    try:
        outcome = optimize_loaded(loaded, OptimizeOptions(budget=budget, kernel=kernel_ok), output=optimized)
    except BpforgeError as err:
        result.checks["optimizer"] = f"not applied: {err}"
        return obj
    before, after = outcome.before, outcome.after
    result.checks["optimizer"] = f"{before} -> {after} instructions"
    return optimized if optimized.exists() and after < before else obj


def _write(result: Partition, out: Path, work: Path, deployed: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(deployed, out / "xdp.o")
    (out / "xdp.c").write_text(result.program.c)
    (out / "user.py").write_text(resume_source(result.program.points, result.program.param,
                                               result.analysis.source, result.analysis.handler))
    meta = {"version": VERSION, "app": str(Path(result.analysis.source).resolve()), "handler": result.analysis.handler,
            "nonce": result.program.nonce.hex(), "param": result.program.param,
            "function": result.program.function, "coordinated": result.program.coordinated,
            "map_names": result.program.map_names, "report": result.as_json()}
    (out / "partition.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def report_html(result: Partition) -> str:
    """The report as one HTML page: the cut with a reason per path, the user points, the prediction."""
    by_path = {p.index: p for p in result.analysis.paths}
    rows = "".join(
        f"<tr><td>{d.index}</td><td>{html.escape(by_path[d.index].describe())}</td><td>{d.share:.1%}</td>"
        f"<td>{d.where}</td><td>{d.user_ns:.0f}</td><td>{d.cost_ns:.0f}</td><td>{html.escape(d.why)}</td></tr>"
        for d in result.cut.decisions)
    points = "".join(
        f"<li>point {p.number}, line {p.line}, paths {p.paths}: carries "
        f"{html.escape(', '.join(f'{n} ({k})' for n, k, _ in p.live) or 'nothing')}</li>" for p in result.program.points)
    checks = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in result.checks.items())
    caveats = "".join(f"<li>{html.escape(c)}</li>" for c in result.cut.caveats)
    return (f"<!doctype html><meta charset=utf-8><title>bpforge partition: {html.escape(result.analysis.handler)}</title>"
            f"<h1>{html.escape(result.analysis.source)}: {html.escape(result.analysis.handler)}</h1>"
            f"<p>Predicted speedup <b>{result.predicted_speedup:.2f}x</b> ({result.cut.python_ns:.0f} ns to "
            f"{result.cut.partitioned_ns:.0f} ns per request; costs {result.cut.costs.source}).</p>"
            "<table border=1 cellpadding=4><tr><th>path</th><th>decisions</th><th>share</th><th>where</th>"
            f"<th>Python ns</th><th>ns where it goes</th><th>why</th></tr>{rows}</table>"
            f"<h2>User points</h2><ul>{points}</ul><h2>Checks</h2><ul>{checks}</ul>"
            f"<h2>Not modelled</h2><ul>{caveats}</ul>")


__all__ = ["Partition", "compile_c", "partition", "report_html", "udp_frame"]
