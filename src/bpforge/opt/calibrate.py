"""Calibrate the latency model on this machine: micro-benchmarks timed by BPF_PROG_TEST_RUN.

Each benchmark is an XDP program: a fixed prologue, its own setup, a loop-free body of N copies of a
*group* of instructions (N x group about 256 instructions; 32 calls for helpers) and a fixed epilogue. The
same program with no group (its baseline, same setup) is timed alternately with it, `trials` times, each
run of BPF_PROG_TEST_RUN repeating `repeat` times; the cost of the class is
(median(body) - median(baseline)) / (N x instructions of the class per group), minus the calibrated cost of
any other instruction the group needs (a helper's argument setup, the instruction a not-taken jump falls
into). What the kernel does to the code — the JIT, the verifier's inlining of array lookups, its
div-by-zero guards — is part of what is measured, which is the point.

Modes of ALU benchmarks (all are measured and kept in `LatencyModel.measured`):
- `chain`: one dependency chain (each instruction reads the previous one's result): latency;
- `pair`: two chains interleaved;
- `independent`: six chains interleaved: throughput.
The model takes `pair`: clang's BPF code seldom has one long chain or six independent streams; a packet
parser carries about two live values at once (a pointer and what it computes from it), and short windows
the optimizer rewrites are the same. Loads, stores and atomics take `independent`: their addresses come
from the context, the packet, the stack or a map value, not from the previous load (the `chain` figure of
ldx64, a pointer chase, is the L1 latency, kept for reference). Instructions without an input (mov of an
immediate, lddw) have only the independent mode.
"""

from __future__ import annotations

import datetime
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import BpforgeError
from ..isa import Insn
from ..isa.forms import FORMS, Form
from ..isa.maptypes import MapSpec
from ..kernel import KernelMap, load_insns, test_run
from .cost import LatencyModel

BODY_INSNS = 256  # instructions of the measured class in one benchmark body
HELPER_CALLS = 32  # helper calls in one body (each costs 10-100x an ALU op)
COST_FLOOR = 0.01  # ns: nothing is free (decode, i-cache), even an add the renamer folds away
INLINED_NS = 1.0  # ns: a helper call cheaper than this was inlined, not called
MODEL_MODE = {"alu": "pair", "memory": "independent", "atomic": "independent"}
_PACKET = bytes(64)
_LANES = {"chain": 1, "pair": 2, "independent": 6}
_DSTS = (0, 2, 3, 4, 5, 7)  # lane registers: r1 is the source, r6 the context, r8 scratch, r9 "unknown 0"
_PARTNERS = (8, 1)  # of the chain and pair lanes of a register move
_BIG = 0x0123456789ABCDEF
_XDP_RX_QUEUE = 16  # offsetof(struct xdp_md, rx_queue_index): 0 in a test run, unknown to the verifier

Progress = Callable[[str, str, float | None], None]  # (class, mode, ns or None when skipped)


@dataclass(frozen=True)
class MicroBench:
    """One benchmark: `groups` copies of `group` between the prologue (+ `setup`) and the epilogue;
    `per_group` instructions of class `key` per group; `extra` the other classes one group executes,
    subtracted at their calibrated cost. `maps` are created for the run (lddw map_fd imm = the index) with
    `fill` (map index, key, value) put in first; `tail` follows the epilogue (a subprogram: every
    call_local of the group is pointed at it)."""

    key: str
    mode: str
    group: tuple[Insn, ...]
    per_group: int = 1
    groups: int = 0  # 0: BODY_INSNS / len(group)
    extra: Mapping[str, int] = field(default_factory=dict)
    setup: tuple[Insn, ...] = ()
    maps: tuple[MapSpec, ...] = ()
    fill: tuple[tuple[int, bytes, bytes | None], ...] = ()  # value None: zeros of the map's syscall size
    tail: tuple[Insn, ...] = ()

    @property
    def copies(self) -> int:
        return self.groups or max(1, BODY_INSNS // len(self.group))

    def program(self, copies: int) -> list[Insn]:
        head = [*_prologue(), *self.setup]
        body = [insn for _ in range(copies) for insn in self.group]
        code = head + body + _epilogue()
        if not self.tail or not copies:  # the verifier refuses a subprogram nothing calls
            return code
        return _point_calls_at(code, len(head), sum(i.slots for i in code)) + list(self.tail)


def _i(form: str, **fields) -> Insn:
    return Insn.make(form, **fields)


def _set(reg: int, value: int) -> Insn:
    return _i("lddw", dst=reg, imm64=value) if not -(1 << 31) <= value < 1 << 31 else _i("mov64_imm", dst=reg, imm=value)


def _prologue() -> list[Insn]:
    return [_i("mov64_reg", dst=6, src=1), _i("ldx32", dst=9, src=6, off=_XDP_RX_QUEUE)]


def _epilogue() -> list[Insn]:
    return [_i("mov64_imm", dst=0, imm=2), _i("exit")]  # XDP_PASS


def _point_calls_at(code: list[Insn], first: int, target: int) -> list[Insn]:
    out, slot = [], 0
    for n, insn in enumerate(code):
        if n >= first and insn.form.name == "call_local":
            insn = insn.replace(imm=target - slot - 1)
        out.append(insn)
        slot += insn.slots
    return out


# ---- the benchmarks -------------------------------------------------------------------------------------

def _alu_values(form: Form) -> tuple[int, int]:
    """(r1, imm) that keep a chain of `form` going with nontrivial values: a divisor of 1 leaves the dividend
    as it is, a modulus above it likewise."""
    if form.op in ("div", "sdiv"):
        return 1, 1
    if form.op in ("mod", "smod"):
        return (0x7FFFFFFFFFFFFFFF if form.width == 64 else 0x7FFFFFFF), 0x7FFFFFFF
    return 3, 3


def _alu_benches(form: Form) -> list[MicroBench]:
    r1, imm = _alu_values(form)
    setup = (_set(1, r1), *(_set(d, _BIG) for d in _DSTS), _set(8, _BIG))
    if form.source == "imm" and form.kind == "mov":
        group = tuple(_i(form.name, dst=d, imm=imm) for d in _DSTS)
        return [MicroBench(form.name, "independent", group, per_group=len(group), setup=setup)]
    benches = []
    for mode, lanes in _LANES.items():
        dsts = _DSTS[:lanes]
        if form.kind == "mov" and form.op == "mov":  # r = r has no input to chain on: bounce via a partner
            if mode == "independent":
                group = tuple(_i(form.name, dst=d, src=1) for d in dsts)
            else:
                partners = _PARTNERS[:lanes]
                group = (*(_i(form.name, dst=p, src=d) for d, p in zip(dsts, partners)),
                         *(_i(form.name, dst=d, src=p) for d, p in zip(dsts, partners)))
        elif form.kind == "mov":  # movsx: in place is a chain
            group = tuple(_i(form.name, dst=d, src=d if mode != "independent" else 1) for d in dsts)
        elif form.kind in ("neg", "end"):
            group = tuple(_i(form.name, dst=d) for d in dsts)
        elif form.source == "imm":
            group = tuple(_i(form.name, dst=d, imm=imm) for d in dsts)
        else:
            group = tuple(_i(form.name, dst=d, src=1) for d in dsts)
        benches.append(MicroBench(form.name, mode, group, per_group=len(group), setup=setup))
    return benches


def _stack_setup() -> tuple[Insn, ...]:
    """Stack slots -16..-64 hold scalars, -8 the frame pointer itself (for a pointer chase)."""
    return (_set(1, 3), _i("stx64", dst=10, src=10, off=-8),
            *(_i("stx64", dst=10, src=1, off=-8 * k) for k in range(2, 9)), _set(0, 0))


def _memory_benches(form: Form) -> list[MicroBench]:
    offs = [-16 - 8 * k for k in range(6)]
    setup = _stack_setup()
    name = form.name
    loads = form.kind == "ldx" or form.op == "load_acquire"
    stores = form.kind in ("st", "stx") or form.op == "store_release"
    if loads:
        group = tuple(_i(name, dst=d, src=10, off=o) for d, o in zip(_DSTS, offs))
        benches = [MicroBench(name, "independent", group, per_group=6, setup=setup)]
        if name == "ldx64":  # each load's address is the previous load's result: r = *(r - 8) = r
            chase = (*setup, _i("ldx64", dst=1, src=10, off=-8), _i("ldx64", dst=2, src=10, off=-8))
            benches.append(MicroBench(name, "chain", (_i(name, dst=1, src=1, off=-8),), setup=chase))
            benches.append(MicroBench(name, "pair", (_i(name, dst=1, src=1, off=-8), _i(name, dst=2, src=2, off=-8)),
                                      per_group=2, setup=chase))
        return benches
    if stores:
        if form.kind == "st":
            group = tuple(_i(name, dst=10, off=o, imm=7) for o in offs)
        else:
            group = tuple(_i(name, dst=10, src=1, off=o) for o in offs)
        return [MicroBench(name, "independent", group, per_group=6, setup=setup)]
    return []


def _atomic_benches(form: Form) -> list[MicroBench]:
    setup = _stack_setup()
    name = form.name
    srcs = (1, 2, 3, 4, 5, 7)
    setup = (*setup, *(_set(r, 1) for r in srcs[1:]))
    same = tuple(_i(name, dst=10, src=1, off=-16) for _ in range(2))
    spread = tuple(_i(name, dst=10, src=s, off=-16 - 8 * k) for k, s in enumerate(srcs))
    return [MicroBench(name, "chain", same, per_group=2, setup=setup),
            MicroBench(name, "independent", spread, per_group=6, setup=setup)]


def _lddw_bench() -> MicroBench:
    group = tuple(_i("lddw", dst=d, imm64=_BIG + d) for d in _DSTS)
    return MicroBench("lddw", "independent", group, per_group=len(group))


def _control_benches() -> list[MicroBench]:
    skipped = _i("mov64_imm", dst=3, imm=7)  # reachable for the verifier, which cannot know r9
    return [
        MicroBench("jump.taken", "single", (_i("jeq_imm", dst=9, imm=0, off=1), skipped)),
        MicroBench("jump.not_taken", "single", (_i("jne_imm", dst=9, imm=0, off=1), skipped),
                   extra={"mov64_imm": 1}),
        MicroBench("ja", "single", (_i("jne_imm", dst=9, imm=0, off=1), _i("ja", off=1), skipped),
                   extra={"jump.not_taken": 1}),
        MicroBench("call.local", "single", (_i("call_local", imm=0),), extra={"mov64_imm": 1},
                   tail=(_i("mov64_imm", dst=0, imm=0), _i("exit"))),
    ]


def _map(type_name: str, key: int = 4, value: int = 8, entries: int = 16) -> MapSpec:
    return MapSpec.of(type_name, key, value, entries, name=f"cal_{type_name}"[:15])


def _helper_setup() -> tuple[Insn, ...]:
    # key 0 at fp-4, a missing key (7) at fp-8, a zero value at fp-24..-16
    return (_i("st32", dst=10, off=-4, imm=0), _i("st32", dst=10, off=-8, imm=7),
            _i("st64", dst=10, off=-16, imm=0), _i("st64", dst=10, off=-24, imm=0))


def _helper_benches() -> list[MicroBench]:
    setup = _helper_setup()
    lookup_args = (_i("lddw_map_fd", dst=1, imm=0), _i("mov64_reg", dst=2, src=10), _i("add64_imm", dst=2, imm=-4))
    lookup_extra = {"lddw": 1, "mov64_reg": 1, "add64_imm": 1}
    update_args = (*lookup_args, _i("mov64_reg", dst=3, src=10), _i("add64_imm", dst=3, imm=-16),
                   _i("mov64_imm", dst=4, imm=0))
    update_extra = {"lddw": 1, "mov64_reg": 2, "add64_imm": 2, "mov64_imm": 1}
    present = ((0, bytes(4), None),)
    benches = []
    for type_name in ("array", "percpu_array", "hash", "percpu_hash", "lru_hash"):
        fill = present if "hash" in type_name else ()
        maps = (_map(type_name),)
        benches.append(MicroBench(f"1.{type_name}", "single", (*lookup_args, _i("call", imm=1)), groups=HELPER_CALLS,
                                  extra=lookup_extra, setup=setup, maps=maps, fill=fill))
        benches.append(MicroBench(f"2.{type_name}", "single", (*update_args, _i("call", imm=2)), groups=HELPER_CALLS,
                                  extra=update_extra, setup=setup, maps=maps, fill=fill))
    missing = (_i("lddw_map_fd", dst=1, imm=0), _i("mov64_reg", dst=2, src=10), _i("add64_imm", dst=2, imm=-8))
    benches.append(MicroBench("3.hash", "single", (*missing, _i("call", imm=3)), groups=HELPER_CALLS,
                              extra=lookup_extra, setup=setup, maps=(_map("hash"),), fill=present))
    for helper in (5, 7, 8):  # ktime_get_ns, get_prandom_u32, get_smp_processor_id: no arguments
        benches.append(MicroBench(str(helper), "single", (_i("call", imm=helper),), groups=HELPER_CALLS))
    benches.append(MicroBench("23", "single", (_i("mov64_imm", dst=1, imm=1), _i("mov64_imm", dst=2, imm=0),
                                               _i("call", imm=23)), groups=HELPER_CALLS, extra={"mov64_imm": 2}))
    benches.append(MicroBench("44", "single", (_i("mov64_reg", dst=1, src=6), _i("mov64_imm", dst=2, imm=0),
                                               _i("call", imm=44)), groups=HELPER_CALLS,
                              extra={"mov64_reg": 1, "mov64_imm": 1}))
    benches.append(MicroBench("51.devmap", "single", (_i("lddw_map_fd", dst=1, imm=0), _i("mov64_imm", dst=2, imm=0),
                                                      _i("mov64_imm", dst=3, imm=0), _i("call", imm=51)),
                              groups=HELPER_CALLS, extra={"lddw": 1, "mov64_imm": 2},
                              maps=(_map("devmap", 4, 4, 4),)))
    benches.append(MicroBench("28", "single", (_i("mov64_reg", dst=1, src=10), _i("add64_imm", dst=1, imm=-24),
                                               _i("mov64_imm", dst=2, imm=16), _i("mov64_imm", dst=3, imm=0),
                                               _i("mov64_imm", dst=4, imm=0), _i("mov64_imm", dst=5, imm=0),
                                               _i("call", imm=28)), groups=HELPER_CALLS, setup=setup,
                              extra={"mov64_reg": 1, "add64_imm": 1, "mov64_imm": 4}))
    return benches


def insn_benches() -> list[MicroBench]:
    """Every instruction benchmark, in an order where a group's `extra` classes come before it."""
    benches: list[MicroBench] = []
    for form in FORMS:
        if not form.kernel:
            continue
        if form.kind in ("alu", "mov", "neg", "end"):
            benches += _alu_benches(form)
        elif form.kind in ("ldx", "st", "stx") or form.op in ("load_acquire", "store_release"):
            benches += _memory_benches(form)
        elif form.kind == "atomic":
            benches += _atomic_benches(form)
    return [*benches, _lddw_bench(), *_control_benches()]


def helper_benches() -> list[MicroBench]:
    """Helper benchmarks (keys: helper id, or id.map_type): their argument setup is in `extra`."""
    return _helper_benches()


# ---- running them ---------------------------------------------------------------------------------------

def time_bench(bench: MicroBench, *, repeat: int, trials: int) -> float:
    """ns per instruction of `bench.key` in `bench`, before `extra` is subtracted."""
    maps: list[KernelMap] = []
    progs = []
    try:
        for spec in bench.maps:
            maps.append(KernelMap.create(spec))
        for index, key, value in bench.fill:
            kmap = maps[index]
            kmap.update(key, value if value is not None else bytes(kmap.syscall_value_size))
        base = load_insns(bench.program(0), "xdp", maps=maps, log_level=0, name="cal_base")
        progs.append(base)
        body = load_insns(bench.program(bench.copies), "xdp", maps=maps, log_level=0, name="cal_body")
        progs.append(body)
        base_ns, body_ns = [], []
        for _ in range(trials):  # alternate, so a slow moment of the machine hits both alike
            base_ns.append(test_run(base, _PACKET, repeat=repeat).duration_ns)
            body_ns.append(test_run(body, _PACKET, repeat=repeat).duration_ns)
        return (statistics.median(body_ns) - statistics.median(base_ns)) / (bench.copies * bench.per_group)
    finally:
        for prog in progs:
            prog.close()
        for kmap in maps:
            kmap.close()


def calibrate(repeat: int = 50_000, progress: Progress | None = None, *, trials: int = 5,
              keys: Sequence[str] | None = None) -> LatencyModel:
    """Measure every class on this machine's kernel and return the model (see the module docstring).
    `keys` limits the run to those instruction classes and helper keys (tests; a partial model). A
    benchmark the kernel refuses (an instruction this kernel or JIT lacks) is skipped: progress(key, mode,
    None), and its class falls back to `insn_default`. KernelUnavailable where bpf() cannot be used."""
    wanted = _with_extras(keys) if keys is not None else None
    measured: dict[str, dict[str, float]] = {}
    insn_ns: dict[str, float] = {"exit": 0.0}  # the main exit is in every program's fixed per-run cost

    def extra_cost(bench: MicroBench) -> float:
        return sum(insn_ns.get(k, COST_FLOOR) * n for k, n in bench.extra.items()) / bench.per_group

    def run(bench: MicroBench) -> float | None:
        try:
            raw = time_bench(bench, repeat=repeat, trials=trials)
        except BpforgeError:
            if progress is not None:
                progress(bench.key, bench.mode, None)
            return None
        ns = raw - extra_cost(bench)
        measured.setdefault(bench.key, {})[bench.mode] = round(ns, 4)
        if progress is not None:
            progress(bench.key, bench.mode, ns)
        return ns

    for bench in insn_benches():
        if wanted is not None and bench.key not in wanted:
            continue
        if run(bench) is not None:
            insn_ns[bench.key] = _model_figure(bench.key, measured[bench.key])
    helper_ns: dict[str, float] = {}
    for bench in helper_benches():
        if wanted is not None and bench.key not in wanted:
            continue
        ns = run(bench)
        if ns is not None:
            helper_ns[bench.key] = round(max(ns, COST_FLOOR), 4)
    for key in list(helper_ns):  # a map helper's generic figure: its hash map (a real call, not inlined)
        helper_id, _, map_type = key.partition(".")
        if map_type == "hash":
            helper_ns.setdefault(helper_id, helper_ns[key])
    # An unknown helper is a real call: figures below INLINED_NS are helpers the verifier or JIT inlines
    # (get_smp_processor_id), which say nothing of one.
    generic = [v for k, v in helper_ns.items() if "." not in k and v >= INLINED_NS]
    forms = [v for k, v in insn_ns.items() if k != "exit"]
    return LatencyModel(insn_ns, helper_ns,
                        round(statistics.median(generic), 4) if generic else 20.0,
                        round(statistics.median(forms), 4) if forms else 0.3,
                        machine_info(repeat=repeat, trials=trials), measured)


def _with_extras(keys: Sequence[str]) -> set[str]:
    """`keys` and every class their benchmarks subtract, transitively."""
    extras = {b.key: set(b.extra) for b in (*insn_benches(), *helper_benches())}
    wanted, pending = set(), list(keys)
    while pending:
        key = pending.pop()
        if key not in wanted:
            wanted.add(key)
            pending += extras.get(key, ())
    return wanted


def _model_figure(key: str, modes: Mapping[str, float]) -> float:
    """The mode the model uses for this class (module docstring), floored at COST_FLOOR."""
    for mode in ("single", "pair" if key in _ALU_FORMS else "independent", "independent", "pair", "chain"):
        if mode in modes:
            return round(max(modes[mode], COST_FLOOR), 4)
    raise BpforgeError(f"no measurement of {key}")


_ALU_FORMS = frozenset(f.name for f in FORMS if f.kind in ("alu", "mov", "neg", "end"))


def machine_info(**how) -> dict[str, object]:
    """Where and how a calibration ran: kernel release, CPU model, JIT setting, date."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/sys/net/core/bpf_jit_enable") as f:
            jit = int(f.read().strip())
    except (OSError, ValueError):
        jit = None
    return {"kernel": os.uname().release, "machine": os.uname().machine, "cpu": cpu, "cpus": os.cpu_count(),
            "bpf_jit_enable": jit, "date": datetime.date.today().isoformat(), "body_insns": BODY_INSNS,
            "helper_calls": HELPER_CALLS, "model_modes": dict(MODEL_MODE), **how}


__all__ = ["MicroBench", "calibrate", "helper_benches", "insn_benches", "machine_info", "time_bench"]
