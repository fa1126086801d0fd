"""Compile the offloaded slice of a handler to C for clang-19, and describe where the user half resumes.

Why C and not bytecode: clang allocates registers, lowers bounded loops into forms the kernel's verifier is
known to accept, and folds the constants that inlining the handler's callees exposes; the object it writes
then goes through our loader, verifier and optimizer like any other (partition/build.py).

The generated program copies the frame into a per-CPU scratch area (the "heap"), parses Ethernet, IPv4
and UDP there and, for a datagram to the handler's port, runs the handler on the UDP payload as Python
would: every byte string is a (offset, length) region of the heap, every integer a 64-bit signed C value
with its Python range checked, every call inlined. Where Python would do something this code cannot (an
exception: an index out of range, an integer overflowing 64 bits, a key too long for the map...) or where
a map the user half writes still has a write on its way (the pending counters below), the program gives the
datagram to the socket with a trailer saying "restart" (point 0): the user half runs the original handler
on it. Nothing the BPF half did has a side effect before that moment (offloaded paths only read maps), so
the restart sees what the original would.

Where an `if` of the handler leads only to paths the cut keeps in user space, the branch becomes a user
point: the trailer carries the point's number and the values of the handler's live local variables, and
the user half runs the handler's rest from that statement (partition/resume.py), so the work before it is
not done twice.

Trailer (appended to the UDP payload; the IPv4 and UDP lengths are fixed, the UDP checksum set to 0):
    fields...  u16 fields_len  u16 point  u16 pending_mask  u16 0  u64 nonce
A field is an int (s64, little-endian), a byte string (u16 length, then its bytes), a struct (its raw
bytes) or an optional (u8 present, then the value). The nonce is chosen at build time: a client cannot
forge a trailer (it would be followed by the program's own), and a datagram without the nonce at its end
(one that did not come through the program) runs the original handler.

Coordination: for each map a user-space path writes, `pt_sync[2m]` counts the datagrams of such paths the
program has passed up (it adds to it before passing one) and `pt_sync[2m + 1]` those the user half has
finished (it writes it after the handler returns). An offloaded read of map m happens only while the two
are equal, i.e. no write to m that arrived before this datagram is still on its way; else the datagram
restarts in user space, behind those writes in the socket's queue.
"""

from __future__ import annotations

import ast
import secrets
from dataclasses import dataclass, field, replace

from .analyze import Analysis, PartitionError, map_access
from .runtime import Bytes as BytesDesc
from .runtime import Scalar, Struct, _TypedMap

FRAME_MAX = 2048  # the frame copy at the heap's start (a power of two: lengths are masked with it - 1)
HEAP = 8192  # the heap's addressable part (a power of two: offsets are masked with HEAP - 1)
SLACK = 2048  # bytes after HEAP, so a masked offset plus any access up to SLACK stays in the value
LOOP_MAX = 256  # iterations of a loop whose bound is not a constant, before the datagram restarts
REPLY_MAX = 1472  # the longest reply sent from XDP (one 1500-byte IPv4 frame); longer ones restart
TRAILER_TAIL = 16  # fields_len, point, mask, bucket_mask, nonce
BUCKETS = 256  # pending counters per coordinated map, by key hash (a power of two)
SYNC_STRIDE = 2 + 2 * BUCKETS  # pt_sync entries per coordinated map: the map's own pair, then each bucket's
INT64 = (-(1 << 63), (1 << 63) - 1)


class CodegenError(PartitionError):
    """A construct of an offloaded path the compiler cannot lower; `paths`: the handler's paths that reach
    it (kept in user space, the rest compiles)."""

    def __init__(self, message: str, paths: frozenset[int] = frozenset()) -> None:
        super().__init__(message)
        self.paths = paths


# ---- values: what a Python expression is in C ---------------------------------------------------------------

@dataclass(frozen=True)
class IntV:
    c: str  # a C expression of type i64
    const: int | None = None  # its value, when known at compile time


@dataclass(frozen=True)
class BytesV:
    off: str  # C expression: the region's heap offset
    len: str  # C expression: its length
    cap: int  # the longest it can be
    lit: bytes | None = None  # a literal not yet in the heap (off and len then mean nothing)


@dataclass(frozen=True)
class StructV:
    off: str  # heap offset of a copy of the value
    desc: Struct


@dataclass(frozen=True)
class OptV:
    present: str  # C expression, true when not None
    inner: object  # IntV | BytesV | StructV


@dataclass(frozen=True)
class NoneV:
    pass


def _literal(data: bytes) -> BytesV:
    return BytesV("0", str(len(data)), len(data), data)


@dataclass
class UserPoint:
    """Where the user half resumes: the statements to run (the rest of the handler from there), the local
    variables the trailer carries (in order, with their kinds) and the maps whose pending counters the
    program raised for it."""

    number: int
    line: int
    statements: list[ast.stmt]
    live: list[tuple[str, str, object]]  # (name, kind: int|bytes|struct|opt, descriptor or None)
    mask: int
    paths: list[int]


@dataclass
class Program:
    """The generated C and what the user half needs to read its trailers."""

    c: str
    section: str
    function: str
    nonce: bytes
    points: list[UserPoint]
    coordinated: list[str]  # maps (Python names) with pending counters, in counter order
    map_names: dict[str, str]  # Python name -> kernel map name
    port: int
    param: str  # the handler's payload parameter


# ---- the emitter ----------------------------------------------------------------------------------------------

@dataclass
class _Frame:
    """One inlined call: its C names, its return slot and label, its loops."""

    name: str
    prefix: str
    ret: str
    label: str
    returns: list[object] = field(default_factory=list)
    loops: list[tuple[str, str, list]] = field(default_factory=list)  # (break label, continue label, envs)
    top: bool = False  # the handler itself


class _Emitter:
    def __init__(self, analysis: Analysis, namespace: dict, offloaded: frozenset[int]) -> None:
        self.analysis, self.ns = analysis, namespace
        module = ast.parse(analysis.text, analysis.source)
        self.functions = {n.name: n for n in module.body if isinstance(n, ast.FunctionDef)}
        self.maps = {name: namespace[name] for name in analysis.maps if isinstance(namespace.get(name), _TypedMap)}
        self.constants = analysis.constants
        self.offloaded = offloaded
        self.paths = {p.index: p for p in analysis.paths}
        written = set().union(*(p.writes for p in analysis.paths if p.index not in offloaded)) if analysis.paths else set()
        self.coordinated = sorted(written & set(self.maps))
        self.lines: list[str] = []
        self.decls: list[str] = []
        self.counter = 0
        self.fresh: str | None = None  # the offset of the byte string that ends at the heap's top, if known
        self.points: list[UserPoint] = []
        self.reaching: frozenset[int] = frozenset(self.paths)
        self.tails: list[list[ast.stmt]] = []
        self.probing: str | None = None  # in a probe: the label that ends it
        self.depth = 0
        self.stack: list[str] = []

    # -- output
    def emit(self, line: str) -> None:
        self.lines.append("\t" * (1 + self.depth) + line)

    def tmp(self, hint: str = "t") -> str:
        self.counter += 1
        name = f"{hint}{self.counter}"
        self.decls.append(f"i64 {name} = 0;")
        return name

    def label(self, hint: str) -> str:
        self.fresh = None  # control flow: what ends at the top on one path may not on another
        self.counter += 1
        return f"{hint}{self.counter}"

    def fail(self, node: ast.AST, why: str):
        raise CodegenError(f"{self.analysis.source}:{getattr(node, 'lineno', 0)}: {why}", self.reaching)

    def mask_of(self, paths) -> int:
        """The coordinated maps (bit m: self.coordinated[m]) some of `paths` write."""
        mask = 0
        for index in paths:
            for name in self.paths[index].writes:
                if name in self.coordinated:
                    mask |= 1 << self.coordinated.index(name)
        return mask

    def restart(self) -> str:
        """The C statement that sends the datagram to the user half's original handler."""
        return f"{{ mask = {self.mask_of(self.reaching)}; goto restart; }}"

    def guard(self, condition: str) -> None:
        """Python would raise (or leave what BPF can express) when `condition` holds: restart in user space."""
        self.emit(f"if ({condition}) {self.restart()}")

    # -- heap
    def alloc(self, cap: int) -> str:
        """A fresh region of at most `cap` bytes at the heap's top: its offset (the caller bumps `top`)."""
        self.fresh = None
        if cap > SLACK:
            raise CodegenError(f"{self.analysis.source}: a byte string of up to {cap} bytes is too long for BPF",
                               self.reaching)
        self.guard(f"top > {HEAP - cap}")
        off = self.tmp("a")
        self.emit(f"{off} = top;")
        return off

    def copy(self, dst: str, src: BytesV) -> None:
        """Copy src's bytes to heap offset dst (a fresh region: words may run up to 7 bytes past its end)."""
        if src.lit is not None:
            for i, byte in enumerate(src.lit):
                self.emit(f"h[({dst} + {i}) & M] = {byte};")
            return
        words = (src.cap + 7) // 8
        k = self.label("k")
        if words > 4:
            self.emit("#pragma clang loop unroll(disable)")
        self.emit(f"for (i64 {k} = 0; {k} < {words}; {k}++) {{")
        self.emit(f"\tif ({k} * 8 >= {src.len}) break;")
        self.emit(f"\t*(u64u *)&h[({dst} + {k} * 8) & M] = *(u64u *)&h[({src.off} + {k} * 8) & M];")
        self.emit("}")

    def materialize(self, value: BytesV) -> BytesV:
        if value.lit is None:
            return value
        off = self.alloc(len(value.lit))
        self.copy(off, value)
        self.emit(f"top += {len(value.lit)};")
        return BytesV(off, str(len(value.lit)), len(value.lit))

    def concat(self, left: BytesV, right: BytesV) -> BytesV:
        if left.lit is not None and right.lit is not None:
            return _literal(left.lit + right.lit)
        cap = left.cap + right.cap
        off, length = self.tmp("c"), self.tmp("n")
        if left.lit is None and left.off == self.fresh:
            # `left` ends at the top (nothing was allocated since it was made, on this straight line of code):
            # it grows in place, with no copy and no test the verifier would have to take both ways.
            self.guard(f"top > {HEAP - right.cap}")
            self.emit(f"{off} = {left.off};")
        else:
            self.guard(f"top > {HEAP - cap}")
            self.emit(f"{off} = top;")
            self.copy(off, left)
            self.emit(f"top += {left.len if left.lit is None else len(left.lit)};")
        self.copy("top", right)
        self.emit(f"top += {right.len if right.lit is None else len(right.lit)};")
        self.emit(f"{length} = top - {off};")
        self.fresh = off
        return BytesV(off, length, cap)

    def byte_at(self, value: BytesV, index: str) -> str:
        if value.lit is not None:
            value = self.materialize(value)
        return f"(i64)h[({value.off} + {index}) & M]"

    # -- variables
    def var(self, frame: _Frame, name: str, part: str) -> str:
        return self.slot(f"{frame.prefix}_{name}_{part}")

    def slot(self, cname: str) -> str:
        """A variable's home: a slot of the heap's variable area, read and written as volatile memory. The
        verifier does not track what map memory holds, so a value read back is just a scalar of its range:
        the paths that differ only in a variable's value meet again, and loops with many exits verify in
        time (C locals would make each exit's constants a state of its own)."""
        if cname not in self.declared:
            self.declared[cname] = len(self.declared) + 1  # slot 0 is the heap's top
        return f"V({self.declared[cname]})"

    def store(self, frame: _Frame, name: str, value: object, node: ast.AST) -> object:
        """Assign `value` to local `name`: its C slot, and the value the environment keeps for it."""
        if isinstance(value, IntV):
            slot = self.var(frame, name, "i")
            self.emit(f"{slot} = {value.c};")
            return IntV(slot, value.const)
        if isinstance(value, BytesV):
            value = self.materialize(value)
            off, length = self.var(frame, name, "o"), self.var(frame, name, "n")
            self.emit(f"{off} = {value.off}; {length} = {value.len};")
            return BytesV(off, length, value.cap)
        if isinstance(value, StructV):
            off = self.var(frame, name, "o")
            self.emit(f"{off} = {value.off};")
            return StructV(off, value.desc)
        if isinstance(value, OptV):
            present = self.var(frame, name, "p")
            self.emit(f"{present} = {value.present};")
            inner = self.store(frame, name + "_v", value.inner, node)
            return OptV(present, inner)
        if isinstance(value, NoneV):
            return value
        self.fail(node, f"cannot keep {type(value).__name__} in a variable")

    # -- the handler
    def handler(self) -> list[str]:
        fn = self.functions[self.analysis.handler]
        if len(fn.args.args) != 1 or fn.args.vararg or fn.args.kwonlyargs:
            self.fail(fn, f"the handler {fn.name} must take one argument, the datagram's payload")
        self.declared: dict[str, int] = {}
        self.param = fn.args.args[0].arg
        frame = _Frame(fn.name, "h0", "ret", "done", top=True)
        self.assigned: set[str] = set()
        # In its slot like any variable: a branch that reassigns it meets the others in the same place.
        env = self.bind(frame, {}, self.param, BytesV("pay_off", "pay_len", FRAME_MAX - 42), fn)
        self.assigned.clear()
        if not any(i in self.offloaded for i in self.reaching):
            self.user_point(fn.body, env, fn, frame)
        else:
            out = self.block(fn.body, env, frame)
            if out is not None:
                frame.returns.append(NoneV())
                self.emit("goto done_none;")
        return self.lines

    def user_point(self, statements: list[ast.stmt], env: dict, node: ast.AST, frame: _Frame) -> None:
        """The user half takes over here: write the trailer (the live locals), count the datagram in the
        pending counters of the maps its paths write, pass it up.

        When the branch writes each map at one place and reads none, the BPF half first runs the branch as
        a probe, up to that write, to learn the key: the datagram is then counted in the key's bucket only
        (a GET of another key need not wait), or not at all when the branch returns without writing. The
        probe's path depends on the datagram alone, so the user half takes the same one."""
        rest = []
        for stmt in [*statements, *(s for tail in reversed(self.tails) for s in tail)]:
            rest.append(stmt)
            if isinstance(stmt, ast.Return):
                break  # what follows cannot run
        loaded = {n.id for s in rest for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        live, fields = [], []
        for name, value in env.items():
            if name not in loaded or (name == self.param and name not in self.assigned):
                continue
            kind, desc = _kind(value)
            live.append((name, kind, desc))
            fields.append(value)
        number = len(self.points) + 1
        paths = sorted(self.reaching)
        probe = self.probe_ok(rest) and not self.probing
        mask = 0 if probe else self.mask_of(self.reaching)
        self.points.append(UserPoint(number, getattr(node, "lineno", 0), rest, live, mask, paths))
        self.emit(f"/* user point {number}: line {getattr(node, 'lineno', 0)}, paths {paths} */")
        nbuckets = len(self.coordinated)
        start = self.alloc(sum(_field_cap(v) for v in fields) + 2 * nbuckets + TRAILER_TAIL)
        self.emit(f"top = {start};")
        for value in fields:
            self.write_field(value)
        reserved = self.tmp("bk")
        self.emit(f"{reserved} = top; top += {2 * nbuckets};")
        if probe:
            end = self.label("probe")
            for m in range(nbuckets):
                self.emit(f"{self.slot(f'probe_flag_{m}')} = 0;")
            saved = (self.probing, self.reaching)
            self.probing = end
            self.emit("/* probe: the branch run up to its map write, for the key */")
            self.block(rest, dict(env), frame)
            self.probing, self.reaching = saved
            self.emit(f"{end}:;")
            for m in range(nbuckets):
                flag, bucket = self.slot(f"probe_flag_{m}"), self.slot(f"probe_bucket_{m}")
                self.emit(f"if ({flag}) {{ *(u16u *)&h[{reserved} & M] = (__u16){bucket}; {reserved} += 2; "
                          f"bmask |= {1 << m}; }}")
        self.emit(f"top = {reserved};")
        self.emit(f"tr_off = {start}; tr_fields = top - {start}; point = {number}; mask = {mask};")
        self.emit("goto pass_up;")

    def probe_ok(self, statements: list[ast.stmt]) -> bool:
        """The statements (and the module functions they call, at each call) write each coordinated map at
        one place, not in a loop (a loop may write several keys: the probe would see the first), and read
        no map."""
        counts: dict[str, int] = {}

        def walk(node: ast.AST, in_loop: bool, stack: frozenset[str]) -> bool:
            reads, written = map_access(node, self.maps)
            if reads or (written and in_loop):
                return False
            for name in written:
                counts[name] = counts.get(name, 0) + 1
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.functions:
                if node.func.id in stack:
                    return False
                if not all(walk(s, in_loop, stack | {node.func.id}) for s in self.functions[node.func.id].body):
                    return False
            loop = in_loop or isinstance(node, ast.For | ast.While)
            return all(walk(child, loop, stack) for child in ast.iter_child_nodes(node))

        if not all(walk(s, False, frozenset()) for s in statements):
            return False
        return bool(counts) and all(n == 1 for n in counts.values()) and set(counts) <= set(self.coordinated)

    def probe_write(self, name: str, key: object, node: ast.AST) -> IntV:
        """In a probe, the write of map `name` at `key`: note the key's bucket and end the probe."""
        if not self.probing or name not in self.coordinated:
            self.fail(node, f"{name}: map writes stay in user space")
        m = self.coordinated.index(name)
        koff = self.key_bytes(self.maps[name], key, node)
        self.emit(f"{self.slot(f'probe_bucket_{m}')} = pt_hash(h, {koff}, {self.maps[name].key.size}) & {BUCKETS - 1};")
        self.emit(f"{self.slot(f'probe_flag_{m}')} = 1;")
        self.emit(f"goto {self.probing};")
        return IntV("0")

    def write_field(self, value: object) -> None:
        if isinstance(value, IntV):
            self.emit(f"*(i64u *)&h[top & M] = {value.c}; top += 8;")
        elif isinstance(value, BytesV):
            self.emit(f"*(u16u *)&h[top & M] = (__u16){value.len if value.lit is None else len(value.lit)}; top += 2;")
            self.copy("top", value)
            self.emit(f"top += {value.len if value.lit is None else len(value.lit)};")
        elif isinstance(value, StructV):
            self.copy("top", BytesV(value.off, str(value.desc.size), value.desc.size))
            self.emit(f"top += {value.desc.size};")
        elif isinstance(value, OptV):
            self.emit(f"h[top & M] = ({value.present}) ? 1 : 0; top += 1;")
            self.emit(f"if ({value.present}) {{")
            self.depth += 1
            self.write_field(value.inner)
            self.depth -= 1
            self.emit("}")

    # -- statements
    def block(self, statements: list[ast.stmt], env: dict, frame: _Frame) -> dict | None:
        for index, stmt in enumerate(statements):
            if frame.top and not frame.loops and not self.probing and isinstance(stmt, ast.If):
                self.tails.append(statements[index + 1:])
                try:
                    env = self.handler_if(stmt, env, frame)
                finally:
                    self.tails.pop()
            else:
                env = self.statement(stmt, env, frame)
            if env is None:
                return None
        return env

    def handler_if(self, stmt: ast.If, env: dict, frame: _Frame) -> dict | None:
        """An `if` of the handler: its branches split the paths; a branch none of whose paths is offloaded
        becomes a user point."""
        taken = frozenset(i for i in self.reaching if (stmt.lineno, True) in _decided(self.paths[i]))
        not_taken = self.reaching - taken
        condition = self.test(stmt.test, env, frame)
        outs = []
        reaching = self.reaching
        for branch, body, head in ((taken, stmt.body, f"if ({condition}) {{"), (not_taken, stmt.orelse, "} else {")):
            self.emit(head)
            self.depth += 1
            self.reaching = branch
            if branch and not branch & self.offloaded:
                self.user_point(body, env, body[0] if body else stmt, frame)
                outs.append(None)
            else:
                outs.append(self.block(body, dict(env), frame))
            self.depth -= 1
        self.emit("}")
        self.reaching = reaching
        return _join(outs)

    def statement(self, stmt: ast.stmt, env: dict, frame: _Frame) -> dict | None:
        self.fresh = None
        self.emit(f"/* line {stmt.lineno}: {ast.unparse(stmt).splitlines()[0][:80]} */")
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            value = self.expr(stmt.value, env, frame)
            return self.bind(frame, env, stmt.targets[0].id, value, stmt)
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Subscript) \
                and isinstance(stmt.targets[0].value, ast.Name) and stmt.targets[0].value.id in self.maps:
            self.probe_write(stmt.targets[0].value.id, self.expr(stmt.targets[0].slice, env, frame), stmt)
            return None
        if isinstance(stmt, ast.Delete) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Subscript) \
                and isinstance(stmt.targets[0].value, ast.Name) and stmt.targets[0].value.id in self.maps:
            self.probe_write(stmt.targets[0].value.id, self.expr(stmt.targets[0].slice, env, frame), stmt)
            return None
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            return self.bind(frame, env, stmt.target.id, self.expr(stmt.value, env, frame), stmt)
        if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
            value = self.binop(stmt.op, ast.Name(stmt.target.id, ast.Load()), stmt.value, env, frame, stmt)
            return self.bind(frame, env, stmt.target.id, value, stmt)
        if isinstance(stmt, ast.Return):
            value = self.expr(stmt.value, env, frame) if stmt.value is not None else NoneV()
            self.ret(frame, value, stmt)
            return None
        if isinstance(stmt, ast.If):
            condition = self.test(stmt.test, env, frame)
            self.emit(f"if ({condition}) {{")
            self.depth += 1
            yes = self.block(stmt.body, dict(env), frame)
            self.depth -= 1
            self.emit("} else {")
            self.depth += 1
            no = self.block(stmt.orelse, dict(env), frame)
            self.depth -= 1
            self.emit("}")
            return _join([yes, no])
        if isinstance(stmt, ast.For):
            return self.loop(stmt, env, frame)
        if isinstance(stmt, ast.Break | ast.Continue):
            if not frame.loops:
                self.fail(stmt, "break/continue outside a loop")
            brk, cont, envs = frame.loops[-1]
            envs.append((isinstance(stmt, ast.Break), dict(env)))
            self.emit(f"goto {brk if isinstance(stmt, ast.Break) else cont};")
            return None
        if isinstance(stmt, ast.Pass):
            return env
        if isinstance(stmt, ast.Expr):
            if isinstance(stmt.value, ast.Constant):
                return env  # a docstring
            self.expr(stmt.value, env, frame)
            return env
        self.fail(stmt, f"{type(stmt).__name__} statements are not compiled to BPF")

    def bind(self, frame: _Frame, env: dict, name: str, value: object, node: ast.AST) -> dict:
        if name in env and _kind(env[name])[0] != _kind(value)[0]:
            self.fail(node, f"{name} changes kind ({_kind(env[name])[0]} to {_kind(value)[0]}): not compiled to BPF")
        env = dict(env)
        env[name] = self.store(frame, name, value, node)
        if frame.top:
            self.assigned.add(name)
        return env

    def ret(self, frame: _Frame, value: object, node: ast.AST) -> None:
        if isinstance(value, BytesV):
            value = self.materialize(value)
        frame.returns.append(value)
        if frame.top and self.probing:
            self.emit(f"goto {self.probing};")  # the branch ends without a write
            return
        if frame.top:
            if isinstance(value, NoneV):
                self.emit("goto done_none;")
                return
            if not isinstance(value, BytesV):
                self.fail(node, "the handler must return bytes (the reply) or None")
            self.guard(f"{value.len} > {REPLY_MAX}")  # more than one frame: the user half sends it
            self.emit(f"reply_off = {value.off}; reply_len = {value.len};")
            self.emit("goto done_reply;")
            return
        kind = _kind(value)[0]
        i, o, n, k = (self.slot(f"{frame.ret}_{part}") for part in ("i", "o", "n", "k"))
        if isinstance(value, IntV):
            self.emit(f"{i} = {value.c}; {k} = 1;")
        elif isinstance(value, BytesV):
            self.emit(f"{o} = {value.off}; {n} = {value.len}; {k} = 2;")
        elif isinstance(value, StructV):
            self.emit(f"{o} = {value.off}; {k} = 3;")
        elif isinstance(value, NoneV):
            self.emit(f"{k} = 0;")
        else:
            self.fail(node, f"returning {kind} from {frame.name} is not compiled to BPF")
        self.emit(f"goto {frame.label};")

    def loop(self, stmt: ast.For, env: dict, frame: _Frame) -> dict | None:
        it = stmt.iter
        if not (isinstance(stmt.target, ast.Name) and isinstance(it, ast.Call) and isinstance(it.func, ast.Name)
                and it.func.id == "range" and 1 <= len(it.args) <= 2 and not stmt.orelse):
            self.fail(stmt, "only `for NAME in range(N)` / `range(M, N)` loops are compiled to BPF")
        bounds = [self.int_expr(a, env, frame) for a in it.args]
        low, high = (IntV("0", 0), bounds[0]) if len(bounds) == 1 else bounds
        trips = (max(0, high.const - low.const) if low.const is not None and high.const is not None else None)
        lo, hi = self.tmp("lo"), self.tmp("hi")
        self.emit(f"{lo} = {low.c}; {hi} = {high.c};")
        if trips is None:
            self.guard(f"{hi} - {lo} > {LOOP_MAX}")
        bound = trips if trips is not None else LOOP_MAX
        # The environment at the loop's head: what it is before, joined with what each iteration leaves
        # (byte strings built across iterations grow): found by compiling the body until it is stable.
        head = dict(env)
        for _ in range(bound + 1):
            saved = (len(self.lines), len(self.decls), self.counter, dict(self.declared), len(self.points))
            after = self._loop_body(stmt, head, frame, lo, hi, bound)
            del self.lines[saved[0]:]
            del self.decls[saved[1]:]
            self.counter, self.declared = saved[2], saved[3]
            del self.points[saved[4]:]
            joined = _join([head, *after[1]])
            if joined == head:
                break
            head = joined
        exits, _ = self._loop_body(stmt, head, frame, lo, hi, bound, final=True)
        return _join([head, *exits])

    def _loop_body(self, stmt, head, frame, lo, hi, bound, final=False):
        k = self.label("i")
        brk, cont = self.label("brk"), self.label("cont")
        envs: list = []
        frame.loops.append((brk, cont, envs))
        if bound > 8:
            self.emit("#pragma clang loop unroll(disable)")
        self.emit(f"for (i64 {k} = 0; {k} < {bound}; {k}++) {{")
        self.depth += 1
        self.emit(f"if ({lo} + {k} >= {hi}) break;")
        body_env = self.bind(frame, dict(head), stmt.target.id, IntV(f"({lo} + {k})"), stmt)
        end = self.block(stmt.body, body_env, frame)
        self.depth -= 1
        self.emit(f"{cont}:;")
        self.emit("}")
        self.emit(f"{brk}:;")
        frame.loops.pop()
        ends = [e for is_break, e in envs if not is_break] + ([end] if end is not None else [])
        breaks = [e for is_break, e in envs if is_break]
        return breaks, ends

    # -- expressions
    def test(self, node: ast.expr, env: dict, frame: _Frame) -> str:
        return _truth(self.expr(node, env, frame))

    def int_expr(self, node: ast.expr, env: dict, frame: _Frame) -> IntV:
        value = self.unwrap(self.expr(node, env, frame))
        if not isinstance(value, IntV):
            self.fail(node, f"{ast.unparse(node)} is not an integer")
        return value

    def bytes_expr(self, node: ast.expr, env: dict, frame: _Frame) -> BytesV:
        value = self.unwrap(self.expr(node, env, frame))
        if not isinstance(value, BytesV):
            self.fail(node, f"{ast.unparse(node)} is not a byte string")
        return value

    def expr(self, node: ast.expr, env: dict, frame: _Frame) -> object:
        if isinstance(node, ast.Constant):
            if node.value is None:
                return NoneV()
            if isinstance(node.value, bool):
                return IntV(str(int(node.value)), int(node.value))
            if isinstance(node.value, int):
                return self.int_const(node.value, node)
            if isinstance(node.value, bytes):
                return _literal(node.value)
            self.fail(node, f"constant {node.value!r} is not compiled to BPF")
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            if node.id in self.constants:
                value = self.constants[node.id]
                return _literal(value) if isinstance(value, bytes) else self.int_const(value, node)
            if node.id in ("True", "False"):
                return IntV(str(int(node.id == "True")), int(node.id == "True"))
            self.fail(node, f"{node.id} is not defined here (or not an integer, bytes or typed-map name)")
        if isinstance(node, ast.BinOp):
            return self.binop(node.op, node.left, node.right, env, frame, node)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node, env, frame)
        if isinstance(node, ast.BoolOp):
            return self.boolop(node, env, frame)
        if isinstance(node, ast.Compare):
            return self.compare(node, env, frame)
        if isinstance(node, ast.IfExp):
            return self.ifexp(node, env, frame)
        if isinstance(node, ast.Subscript):
            return self.subscript(node, env, frame)
        if isinstance(node, ast.Attribute):
            return self.attribute(node, env, frame)
        if isinstance(node, ast.Call):
            return self.call(node, env, frame)
        self.fail(node, f"{type(node).__name__} expressions are not compiled to BPF")

    def int_const(self, value: int, node: ast.AST) -> IntV:
        if not INT64[0] <= value <= INT64[1]:
            self.fail(node, f"{value} does not fit 64 bits")
        return IntV(f"({value}LL)" if value >= 0 else f"({value + 1}LL - 1)", value)

    def binop(self, op: ast.operator, left_node, right_node, env, frame, node) -> object:
        left = self.unwrap(self.expr(left_node, env, frame))
        right = self.unwrap(self.expr(right_node, env, frame))
        if isinstance(op, ast.Add) and isinstance(left, BytesV) and isinstance(right, BytesV):
            return self.concat(left, right)
        if not (isinstance(left, IntV) and isinstance(right, IntV)):
            self.fail(node, f"{ast.unparse(node)}: only integers and byte-string concatenation")
        if left.const is not None and right.const is not None:
            try:
                value = _python_op(op, left.const, right.const)
            except (ZeroDivisionError, ValueError, OverflowError):
                value = None
            if value is not None and INT64[0] <= value <= INT64[1]:
                return self.int_const(value, node)
        a, b = left.c, right.c
        out = self.tmp("x")
        if isinstance(op, ast.Add | ast.Sub):
            builtin = "add" if isinstance(op, ast.Add) else "sub"
            self.guard(f"__builtin_{builtin}_overflow({a}, {b}, &{out})")
        elif isinstance(op, ast.Mult):
            # |a|, |b| < 2**31 keeps the product in 64 bits; a constant factor gets the exact limit.
            if right.const is not None or left.const is not None:
                c, other = (right.const, a) if right.const is not None else (left.const, b)
                if c != 0:
                    limit = INT64[1] // abs(c)
                    self.guard(f"{other} > {limit}LL || {other} < -{limit}LL")
            else:
                self.guard(f"{a} >= (1LL << 31) || {a} <= -(1LL << 31) || {b} >= (1LL << 31) || {b} <= -(1LL << 31)")
            self.emit(f"{out} = {a} * {b};")
        elif isinstance(op, ast.FloorDiv | ast.Mod):
            self.guard(f"{b} == 0")
            self.guard(f"{a} == (-9223372036854775807LL - 1) && {b} == -1")
            fn = "py_floordiv" if isinstance(op, ast.FloorDiv) else "py_mod"
            self.emit(f"{out} = {fn}({a}, {b});")
        elif isinstance(op, ast.BitAnd | ast.BitOr | ast.BitXor):
            sym = {ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^"}[type(op)]
            self.emit(f"{out} = {a} {sym} {b};")
        elif isinstance(op, ast.LShift):
            self.guard(f"{b} < 0 || ({b} >= 63 && {a} != 0)")
            self.emit(f"if ({b} < 63) {{ {out} = (i64)((u64){a} << {b}); }} else {{ {out} = 0; }}")
            self.guard(f"{b} < 63 && ({out} >> {b}) != {a}")
        elif isinstance(op, ast.RShift):
            self.guard(f"{b} < 0")
            self.emit(f"{out} = {b} >= 63 ? ({a} < 0 ? -1 : 0) : ({a} >> {b});")
        else:
            self.fail(node, f"{ast.unparse(node)}: operator not compiled to BPF")
        return IntV(out)

    def unary(self, node: ast.UnaryOp, env, frame) -> IntV:
        if isinstance(node.op, ast.Not):
            return IntV(f"(!({self.test(node.operand, env, frame)}))")
        value = self.int_expr(node.operand, env, frame)
        if value.const is not None:
            result = {ast.USub: -value.const, ast.UAdd: value.const, ast.Invert: ~value.const}[type(node.op)]
            return self.int_const(result, node)
        if isinstance(node.op, ast.USub):
            self.guard(f"{value.c} == (-9223372036854775807LL - 1)")
            return IntV(f"(-{value.c})")
        if isinstance(node.op, ast.Invert):
            return IntV(f"(~{value.c})")
        return value

    def boolop(self, node: ast.BoolOp, env, frame) -> IntV:
        # Short-circuit as Python: the value is the first operand that decides (integers only here).
        out = self.tmp("b")
        done = self.label("bool")
        for index, operand in enumerate(node.values):
            value = self.expr(operand, env, frame)
            if not isinstance(value, IntV):
                value = IntV(f"(i64)({_truth(value)})")
            self.emit(f"{out} = {value.c};")
            if index < len(node.values) - 1:
                self.emit(f"if ({'!' if isinstance(node.op, ast.And) else ''}{out}) goto {done};")
        self.emit(f"{done}:;")
        return IntV(out)

    def ifexp(self, node: ast.IfExp, env, frame) -> object:
        """`a if c else b` of integers or of byte strings (each arm evaluated only when chosen)."""
        condition = self.test(node.test, env, frame)
        self.fresh = None
        first, second = self.tmp("y"), self.tmp("y")
        arms = []
        self.emit(f"if ({condition}) {{")
        for index, arm in enumerate((node.body, node.orelse)):
            self.depth += 1
            value = self.unwrap(self.expr(arm, env, frame))
            if isinstance(value, BytesV):
                value = self.materialize(value)
                self.emit(f"{first} = {value.off}; {second} = {value.len};")
            elif isinstance(value, IntV):
                self.emit(f"{first} = {value.c};")
            else:
                self.fail(node, "a conditional expression of integers or byte strings only")
            arms.append(value)
            self.depth -= 1
            self.emit("} else {" if index == 0 else "}")
        if type(arms[0]) is not type(arms[1]):
            self.fail(node, "the arms of a conditional expression must be of one kind")
        if isinstance(arms[0], BytesV):
            return BytesV(first, second, max(arms[0].cap, arms[1].cap))
        return IntV(first)

    def compare(self, node: ast.Compare, env, frame) -> IntV:
        out = self.tmp("q")
        done = self.label("cmp")
        left = self.expr(node.left, env, frame)
        self.emit(f"{out} = 0;")
        for op, right_node in zip(node.ops, node.comparators):
            if isinstance(op, ast.In | ast.NotIn) and isinstance(right_node, ast.Name) and right_node.id in self.maps:
                found = self.map_lookup(right_node.id, left, node)
                result = found.present if isinstance(op, ast.In) else f"!({found.present})"
                self.emit(f"if (!({result})) goto {done};")
                continue
            right = self.expr(right_node, env, frame)
            self.emit(f"if (!({self.compare_pair(op, left, right, node)})) goto {done};")
            left = right
        self.emit(f"{out} = 1;")
        self.emit(f"{done}:;")
        return IntV(out)

    def compare_pair(self, op, left, right, node) -> str:
        if isinstance(op, ast.Is | ast.IsNot):
            if isinstance(right, NoneV):
                present = left.present if isinstance(left, OptV) else "0" if isinstance(left, NoneV) else "1"
                return f"!({present})" if isinstance(op, ast.Is) else f"({present})"
            self.fail(node, "`is` only compares with None")
        if isinstance(left, IntV) and isinstance(right, IntV):
            sym = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}.get(type(op))
            if sym is None:
                self.fail(node, "comparison not compiled to BPF")
            return f"{left.c} {sym} {right.c}"
        if isinstance(left, BytesV) and isinstance(right, BytesV) and isinstance(op, ast.Eq | ast.NotEq):
            equal = self.bytes_equal(left, right)
            return equal if isinstance(op, ast.Eq) else f"!({equal})"
        if isinstance(op, ast.Eq | ast.NotEq) and (isinstance(left, NoneV) or isinstance(right, NoneV)):
            other = right if isinstance(left, NoneV) else left
            present = other.present if isinstance(other, OptV) else "0" if isinstance(other, NoneV) else "1"
            return f"!({present})" if isinstance(op, ast.Eq) else f"({present})"
        self.fail(node, f"comparing {_kind(left)[0]} with {_kind(right)[0]} is not compiled to BPF")

    def bytes_equal(self, left: BytesV, right: BytesV) -> str:
        if left.lit is not None and right.lit is not None:
            return "1" if left.lit == right.lit else "0"
        if left.lit is not None:
            left, right = right, left
        out = self.tmp("e")
        if right.lit is not None:
            self.emit(f"{out} = {left.len} == {len(right.lit)} && {_holds(left, '0', right.lit)};")
            return out
        k = self.label("k")
        self.emit(f"{out} = {left.len} == {right.len};")
        self.emit("#pragma clang loop unroll(disable)")
        self.emit(f"for (i64 {k} = 0; {out} && {k} < {min(left.cap, right.cap)}; {k}++) {{")
        self.emit(f"\tif ({k} >= {left.len}) break;")
        self.emit(f"\tif (h[({left.off} + {k}) & M] != h[({right.off} + {k}) & M]) {out} = 0;")
        self.emit("}")
        return out

    def subscript(self, node: ast.Subscript, env, frame) -> object:
        if isinstance(node.value, ast.Name) and node.value.id in self.maps:
            key = self.expr(node.slice, env, frame)
            found = self.map_lookup(node.value.id, key, node)
            self.guard(f"!({found.present})")  # KeyError: the user half raises it
            return found.inner
        base = self.unwrap(self.expr(node.value, env, frame))
        if isinstance(base, BytesV):
            if base.lit is not None:
                base = self.materialize(base)
            if isinstance(node.slice, ast.Slice):
                return self.slice(base, node.slice, env, frame)
            index = self.int_expr(node.slice, env, frame)
            self.guard(f"{index.c} < 0 || {index.c} >= {base.len}")  # negative indexes: the user half
            return IntV(self.byte_at(base, index.c))
        self.fail(node, f"indexing {_kind(base)[0]} is not compiled to BPF")

    def slice(self, base: BytesV, sl: ast.Slice, env, frame) -> BytesV:
        if sl.step is not None:
            self.fail(sl, "slices with a step are not compiled to BPF")
        start = self.int_expr(sl.lower, env, frame) if sl.lower is not None else IntV("0", 0)
        stop = self.int_expr(sl.upper, env, frame) if sl.upper is not None else None
        for bound in (start, stop):
            if bound is not None and (bound.const is None or bound.const < 0):
                self.guard(f"{bound.c} < 0")  # Python counts negative bounds from the end: the user half does
        lo, hi = self.tmp("s"), self.tmp("s")
        self.emit(f"{lo} = {start.c} < {base.len} ? {start.c} : {base.len};")
        if stop is None:
            self.emit(f"{hi} = {base.len};")
        else:
            self.emit(f"{hi} = {stop.c} < {base.len} ? {stop.c} : {base.len};")
            self.emit(f"if ({hi} < {lo}) {hi} = {lo};")
        cap = base.cap
        if start.const is not None and stop is not None and stop.const is not None:
            cap = min(cap, max(0, stop.const - start.const))
        off, length = self.tmp("v"), self.tmp("w")
        self.emit(f"{off} = {base.off} + {lo}; {length} = {hi} - {lo};")
        return BytesV(off, length, cap)

    def unwrap(self, value: object) -> object:
        """An optional used as its value: None there is Python's TypeError or AttributeError (user half)."""
        if isinstance(value, OptV):
            self.guard(f"!({value.present})")
            return value.inner
        return value

    def attribute(self, node: ast.Attribute, env, frame) -> object:
        base = self.unwrap(self.expr(node.value, env, frame))
        if isinstance(base, StructV) and node.attr in base.desc.fields:
            desc, offset = base.desc.fields[node.attr], base.desc.offsets[node.attr]
            return self.field(base.off, offset, desc, node)
        self.fail(node, f"attribute .{node.attr} of {_kind(base)[0]} is not compiled to BPF")

    def field(self, off: str, offset: int, desc, node) -> object:
        if isinstance(desc, Scalar):
            ctype = {1: "__u8", 2: "u16u", 4: "u32u", 8: "u64u"}[desc.size]
            out = self.tmp("f")
            self.emit(f"{out} = (i64)*({ctype} *)&h[({off} + {offset}) & M];")
            if desc.size == 8:
                self.guard(f"{out} < 0")  # above 2**63: not an i64
            return IntV(out)
        if isinstance(desc, BytesDesc):
            return BytesV(f"({off} + {offset})", str(desc.size), desc.size)
        if isinstance(desc, Struct):
            return StructV(f"({off} + {offset})", desc)
        self.fail(node, "field kind not compiled to BPF")

    # -- calls
    def call(self, node: ast.Call, env, frame) -> object:
        func = node.func
        if node.keywords and not (isinstance(func, ast.Attribute) and func.attr == "from_bytes"):
            self.fail(node, "keyword arguments are not compiled to BPF")
        if isinstance(func, ast.Name):
            name = func.id
            if name in self.functions:
                return self.inline(self.functions[name], node.args, env, frame, node)
            if name == "len":
                value = self.bytes_expr(node.args[0], env, frame)
                return IntV(str(len(value.lit)), len(value.lit)) if value.lit is not None else IntV(value.len)
            if name in ("min", "max") and len(node.args) >= 2:
                values = [self.int_expr(a, env, frame) for a in node.args]
                out = self.tmp("m")
                self.emit(f"{out} = {values[0].c};")
                for v in values[1:]:
                    self.emit(f"if ({v.c} {'<' if name == 'min' else '>'} {out}) {out} = {v.c};")
                return IntV(out)
            if name == "bytes" and len(node.args) == 1 and isinstance(node.args[0], ast.List) and len(node.args[0].elts) == 1:
                value = self.int_expr(node.args[0].elts[0], env, frame)
                self.guard(f"{value.c} < 0 || {value.c} > 255")  # ValueError
                off = self.alloc(1)
                self.emit(f"h[{off} & M] = (__u8){value.c}; top += 1;")
                return BytesV(off, "1", 1)
            if name in self.analysis.structs and isinstance(self.ns.get(name), Struct):
                return self.construct(self.ns[name], node, env, frame)
            self.fail(node, f"{name}(...) is not compiled to BPF")
        if isinstance(func, ast.Attribute):
            owner = func.value
            if isinstance(owner, ast.Name) and owner.id in self.maps:
                if func.attr == "get" and 1 <= len(node.args) <= 2:
                    key = self.expr(node.args[0], env, frame)
                    found = self.map_lookup(owner.id, key, node)
                    if len(node.args) == 2 and not isinstance(self.expr(node.args[1], env, frame), NoneV):
                        self.fail(node, "m.get(k, default) with a default other than None")
                    return found
                if func.attr in ("put", "delete", "pop") and node.args:
                    return self.probe_write(owner.id, self.expr(node.args[0], env, frame), node)
                self.fail(node, f"{owner.id}.{func.attr}: map writes stay in user space")
            if isinstance(owner, ast.Name) and owner.id == "int" and func.attr == "from_bytes":
                return self.from_bytes(node, env, frame)
            base = self.expr(owner, env, frame)
            if isinstance(base, BytesV) and func.attr in ("startswith", "endswith") and len(node.args) == 1:
                prefix = self.bytes_expr(node.args[0], env, frame)
                if prefix.lit is None:
                    self.fail(node, f".{func.attr} of a literal only")
                n = len(prefix.lit)
                base = self.materialize(base)
                start = "0" if func.attr == "startswith" else f"{base.len} - {n}"
                out = self.tmp("e")
                self.emit(f"{out} = {base.len} >= {n} && {_holds(base, start, prefix.lit)};")
                return IntV(out)
        self.fail(node, f"{ast.unparse(node.func)}(...) is not compiled to BPF")

    def from_bytes(self, node: ast.Call, env, frame) -> IntV:
        order = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "byteorder"), None)
        if not (isinstance(order, ast.Constant) and order.value in ("big", "little")) or \
                any(k.arg not in ("byteorder",) for k in node.keywords):
            self.fail(node, 'int.from_bytes(b, "big"|"little") only')
        value = self.materialize(self.bytes_expr(node.args[0], env, frame))
        self.guard(f"{value.len} > 7")  # longer values may not fit an i64: the user half
        out, k = self.tmp("u"), self.label("k")
        self.emit(f"{out} = 0;")
        self.emit(f"for (i64 {k} = 0; {k} < 7; {k}++) {{")
        self.emit(f"\tif ({k} >= {value.len}) break;")
        if order.value == "big":
            self.emit(f"\t{out} = ({out} << 8) | h[({value.off} + {k}) & M];")
        else:
            self.emit(f"\t{out} |= (i64)h[({value.off} + {k}) & M] << ({k} * 8);")
        self.emit("}")
        return IntV(out)

    def construct(self, desc: Struct, node: ast.Call, env, frame) -> StructV:
        if len(node.args) != len(desc.fields):
            self.fail(node, f"{desc.name}(...) needs all {len(desc.fields)} fields, by position")
        values = [self.expr(a, env, frame) for a in node.args]
        off = self.alloc(desc.size)
        self.emit(f"top += {desc.size};")
        self.emit(f"__builtin_memset(&h[{off} & M], 0, {desc.size});")
        for (name, fdesc), value in zip(desc.fields.items(), values):
            self.put_field(off, desc.offsets[name], fdesc, value, node)
        return StructV(off, desc)

    def put_field(self, off: str, offset: int, desc, value, node) -> None:
        if isinstance(desc, Scalar) and isinstance(value, IntV):
            self.guard(f"{value.c} < 0" + (f" || {value.c} >= {1 << 8 * desc.size}LL" if desc.size < 8 else ""))
            ctype = {1: "__u8", 2: "u16u", 4: "u32u", 8: "u64u"}[desc.size]
            self.emit(f"*({ctype} *)&h[({off} + {offset}) & M] = ({ctype}){value.c};")
        elif isinstance(desc, BytesDesc) and isinstance(value, BytesV):
            value = self.materialize(value)
            self.guard(f"{value.len} > {desc.size}")  # does not fit Bytes(n): the runtime raises
            dst = self.tmp("d")
            self.emit(f"{dst} = {off} + {offset};")
            k = self.label("k")
            self.emit(f"for (i64 {k} = 0; {k} < {min(value.cap, desc.size)}; {k}++) {{")
            self.emit(f"\tif ({k} >= {value.len}) break;")
            self.emit(f"\th[({dst} + {k}) & M] = h[({value.off} + {k}) & M];")
            self.emit("}")
        else:
            self.fail(node, f"a {_kind(value)[0]} for a {desc!r} field")

    def map_lookup(self, name: str, key: object, node: ast.AST) -> OptV:
        typed = self.maps[name]
        koff = self.key_bytes(typed, key, node)
        if name in self.coordinated:
            # A write of this map on its way to the user half (to any key, or to a key of this bucket):
            # the datagram waits behind it in the socket's queue.
            base = self.coordinated.index(name) * SYNC_STRIDE
            self.emit(f"if (pending({base}) || pending({base + 2} + 2 * (pt_hash(h, {koff}, {typed.key.size}) & "
                      f"{BUCKETS - 1}))) {self.restart()}")
        ptr = self.label("p")
        present = self.tmp("found")
        self.emit(f"void *{ptr} = bpf_map_lookup_elem(&{typed.name}, &h[{koff} & M]);")
        vdesc = typed.value
        voff = self.alloc(vdesc.size)
        self.emit(f"top += {vdesc.size};")
        self.emit(f"{present} = {ptr} != 0;")
        self.emit(f"if ({ptr}) __builtin_memcpy(&h[{voff} & M], {ptr}, {vdesc.size});")
        if typed.type_name == "array":
            self.guard(f"!{ptr}")  # an index out of range: the runtime's answer, in user space
        return OptV(present, self.field(voff, 0, vdesc, node))

    def key_bytes(self, typed: _TypedMap, key: object, node: ast.AST) -> str:
        """The key encoded as the map holds it (zero-padded), at a fresh heap offset."""
        kdesc = typed.key
        koff = self.alloc(kdesc.size)
        self.emit(f"top += {kdesc.size};")
        self.emit(f"__builtin_memset(&h[{koff} & M], 0, {kdesc.size});")
        self.put_field(koff, 0, kdesc, key if not isinstance(key, BytesV) else self.materialize(key), node)
        return koff

    def inline(self, fn: ast.FunctionDef, args: list[ast.expr], env: dict, frame: _Frame, node: ast.Call) -> object:
        if fn.name in self.stack:
            self.fail(node, f"recursive call of {fn.name}")
        params = [a.arg for a in fn.args.args]
        defaults = fn.args.defaults
        if len(args) > len(params) or len(args) < len(params) - len(defaults) or fn.args.vararg or fn.args.kwonlyargs:
            self.fail(node, f"call of {fn.name} with {len(args)} arguments")
        values = [self.expr(a, env, frame) for a in args]
        values += [self.expr(d, {}, frame) for d in defaults[len(defaults) - (len(params) - len(args)):]]
        self.counter += 1
        callee = _Frame(fn.name, f"f{self.counter}", f"r{self.counter}", f"ret{self.counter}")
        local: dict = {}
        self.emit(f"/* {fn.name}({', '.join(ast.unparse(a) for a in args)}) */")
        for name, value in zip(params, values):
            local = self.bind(callee, local, name, value, node)
            if isinstance(value, IntV) and value.const is not None:
                local[name] = replace(local[name], const=value.const)  # loop bounds and slices fold
        self.stack.append(fn.name)
        end = self.block(fn.body, local, callee)
        self.stack.pop()
        if end is not None:
            self.ret(callee, NoneV(), fn)
        self.emit(f"{callee.label}:;")
        return self.returned(callee, node)

    def returned(self, callee: _Frame, node: ast.AST) -> object:
        kinds = {_kind(v)[0] for v in callee.returns}
        i, o, n, k = (self.slot(f"{callee.ret}_{part}") for part in ("i", "o", "n", "k"))
        if kinds == {"int"}:
            return IntV(i)
        if kinds == {"bytes"}:
            return BytesV(o, n, max(v.cap for v in callee.returns))
        if kinds == {"none"}:
            return NoneV()
        if kinds <= {"bytes", "none"}:
            return OptV(f"({k} == 2)", BytesV(o, n, max(v.cap for v in callee.returns if isinstance(v, BytesV))))
        if len(kinds) == 1 and "struct" in kinds:
            return StructV(o, callee.returns[0].desc)
        self.fail(node, f"{callee.name} returns {' or '.join(sorted(kinds))}: not compiled to BPF")


def _holds(value: BytesV, start: str, literal: bytes) -> str:
    """C: `value` holds `literal` from offset `start` on (the caller checks the length first)."""
    return " && ".join([f"h[({value.off} + {start} + {i}) & M] == {b}" for i, b in enumerate(literal)] or ["1"])


def _decided(path) -> set[tuple[int, bool]]:
    return {(line, taken) for line, _, taken in path.decisions}


def _truth(value: object) -> str:
    if isinstance(value, IntV):
        return f"({value.c} != 0)"
    if isinstance(value, BytesV):
        return "1" if value.lit else "0" if value.lit is not None else f"({value.len} != 0)"
    if isinstance(value, OptV):
        inner = _truth(value.inner)
        return f"({value.present} && {inner})"
    if isinstance(value, NoneV):
        return "0"
    return "1"


def _kind(value: object) -> tuple[str, object]:
    if isinstance(value, IntV):
        return "int", None
    if isinstance(value, BytesV):
        return "bytes", None
    if isinstance(value, StructV):
        return "struct", value.desc
    if isinstance(value, OptV):
        return "opt", _kind(value.inner)
    return "none", None


def _field_cap(value: object) -> int:
    if isinstance(value, IntV):
        return 8
    if isinstance(value, BytesV):
        return 2 + value.cap
    if isinstance(value, StructV):
        return value.desc.size
    if isinstance(value, OptV):
        return 1 + _field_cap(value.inner)
    return 0


def _join(envs: list[dict | None]) -> dict | None:
    """The environment after branches meet: the names every live branch defines, with the same kind; a
    byte string's cap the largest, an integer's constant only when every branch agrees."""
    live = [e for e in envs if e is not None]
    if not live:
        return None
    out = {}
    for name, value in live[0].items():
        others = [e.get(name) for e in live[1:]]
        if any(o is None or _kind(o)[0] != _kind(value)[0] for o in others):
            continue
        for o in others:
            value = _merge(value, o)
        out[name] = value
    return out


def _merge(a: object, b: object) -> object:
    if isinstance(a, IntV) and isinstance(b, IntV):
        return a if a.const == b.const else replace(a, const=None)
    if isinstance(a, BytesV) and isinstance(b, BytesV):
        return replace(a, cap=max(a.cap, b.cap))
    if isinstance(a, OptV) and isinstance(b, OptV):
        return replace(a, inner=_merge(a.inner, b.inner))
    return a


def _python_op(op, a: int, b: int) -> int:
    if isinstance(op, ast.Add):
        return a + b
    if isinstance(op, ast.Sub):
        return a - b
    if isinstance(op, ast.Mult):
        return a * b
    if isinstance(op, ast.FloorDiv):
        return a // b
    if isinstance(op, ast.Mod):
        return a % b
    if isinstance(op, ast.BitAnd):
        return a & b
    if isinstance(op, ast.BitOr):
        return a | b
    if isinstance(op, ast.BitXor):
        return a ^ b
    if isinstance(op, ast.LShift):
        return a << b if 0 <= b < 64 else None
    if isinstance(op, ast.RShift):
        return a >> b if b >= 0 else None
    return None


# ---- the whole program ----------------------------------------------------------------------------------------

PRELUDE = r"""// Generated by bpforge partition from {source} (handler {handler}): do not edit.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

typedef __s64 i64;
typedef __u64 u64;
typedef __u8 u8;
typedef __u16 __attribute__((aligned(1))) u16u;
typedef __u32 __attribute__((aligned(1))) u32u;
typedef __u64 __attribute__((aligned(1))) u64u;
typedef __s64 __attribute__((aligned(1))) i64u;

#define FRAME_MAX {frame_max}
#define HEAP {heap}
#define M (HEAP - 1)
#define PORT {port}
#define NONCE 0x{nonce:016x}ULL

/* the heap: the frame's copy, the byte strings the handler builds, and its variables (slot 0: the top) */
struct pt_heap_value {{ u8 b[HEAP + {slack}]; i64 v[{slots}]; i64 send[5]; }};
#define V(n) (((volatile i64 *)hv->v)[n])
#define top V(0)
struct {{
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pt_heap_value);
}} pt_heap SEC(".maps");

/* Per coordinated map m, from m * SYNC_STRIDE: a (seen, done) pair for writes of any key, then one per key
 * bucket. seen: datagrams passed up that write m (there); done: those the user half has finished. */
struct {{
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, {sync_entries});
	__type(key, __u32);
	__type(value, __u64);
}} pt_sync SEC(".maps");
{maps}
static __always_inline int pending(__u32 index)
{{
	__u32 done_index = index + 1;
	volatile __u64 *seen = bpf_map_lookup_elem(&pt_sync, &index);
	volatile __u64 *done = bpf_map_lookup_elem(&pt_sync, &done_index);

	return !seen || !done || *seen != *done;
}}

static __always_inline void count(__u32 index)
{{
	__u64 *seen = bpf_map_lookup_elem(&pt_sync, &index);

	if (seen)
		__sync_fetch_and_add(seen, 1);
}}

/* FNV-1a (32 bit) of a key as the map holds it: the key's pending-counter bucket */
static __always_inline __u32 pt_hash(u8 *h, i64 off, int size)
{{
	__u32 hash = 2166136261u;

	for (int i = 0; i < size; i++)
		hash = (hash ^ h[(off + i) & M]) * 16777619u;
	return hash;
}}

static __always_inline i64 py_floordiv(i64 a, i64 b)
{{
	u64 ua = a < 0 ? -(u64)a : (u64)a, ub = b < 0 ? -(u64)b : (u64)b;
	u64 q = ua / ub;

	if ((a < 0) == (b < 0))
		return (i64)q;
	return -(i64)q - (q * ub != ua);
}}

static __always_inline i64 py_mod(i64 a, i64 b)
{{
	return a - py_floordiv(a, b) * b;
}}

static __always_inline void put_be16(u8 *h, i64 at, i64 value)
{{
	h[at & M] = (u8)(value >> 8);
	h[(at + 1) & M] = (u8)value;
}}

/* The frame (headers from the heap copy, then `keep` payload bytes, then `body_len` bytes at body_off: the
 * arguments in hv->send, as BPF calls take five)
 * made into the packet: lengths and the IPv4 checksum fixed, the UDP checksum 0 (IPv4 allows it), and for a
 * reply the addresses and ports swapped. 0 when done, -1 when the packet is as it was (nothing changed), -2
 * when it was changed half-way. A global function: the verifier checks it once, not on every path. */
__attribute__((noinline)) int pt_send(struct xdp_md *ctx, struct pt_heap_value *hv, int reply)
{{
	if (!ctx || !hv)
		return -1;
	u8 *h = hv->b;
	i64 flen = hv->send[0], hdrs = hv->send[1], keep = hv->send[2], body_off = hv->send[3], body_len = hv->send[4];
	i64 ip = 14, ihl = (h[14] & 15) * 4, new_len = hdrs + keep + body_len, delta = new_len - flen;
	int moved = 0;

	if (reply) {{
#pragma unroll
		for (int i = 0; i < 6; i++) {{
			u8 t = h[i];
			h[i] = h[6 + i];
			h[6 + i] = t;
		}}
#pragma unroll
		for (int i = 0; i < 4; i++) {{
			u8 t = h[26 + i];
			h[26 + i] = h[30 + i];
			h[30 + i] = t;
		}}
		h[22] = 64;
#pragma unroll
		for (int i = 0; i < 2; i++) {{
			u8 t = h[(hdrs - 8 + i) & M];
			h[(hdrs - 8 + i) & M] = h[(hdrs - 6 + i) & M];
			h[(hdrs - 6 + i) & M] = t;
		}}
	}}
	put_be16(h, ip + 2, new_len - 14);
	put_be16(h, ip + 10, 0);
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 30; i++) {{
		if (i * 2 >= ihl)
			break;
		sum += ((__u32)h[(ip + 2 * i) & M] << 8) | h[(ip + 2 * i + 1) & M];
	}}
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	put_be16(h, ip + 10, ~sum & 0xffff);
	put_be16(h, hdrs - 4, new_len - hdrs + 8);
	put_be16(h, hdrs - 2, 0);

	if (delta > 0 && bpf_xdp_adjust_tail(ctx, (int)delta)) {{
		/* no tailroom (veth often has none): grow at the head and rewrite what is kept from the copy */
		if (bpf_xdp_adjust_head(ctx, (int)-delta))
			return -1;
		moved = 1;
	}} else if (delta < 0 && bpf_xdp_adjust_tail(ctx, (int)delta)) {{
		return -1;
	}}
	if (bpf_xdp_store_bytes(ctx, 0, h, ((hdrs - 1) & 127) + 1))
		return -2;
	if (moved && keep > 0 && bpf_xdp_store_bytes(ctx, hdrs, &h[hdrs & 127], ((keep - 1) & (FRAME_MAX - 1)) + 1))
		return -2;
	if (body_len > 0 && bpf_xdp_store_bytes(ctx, hdrs + keep, &h[body_off & M], ((body_len - 1) & (FRAME_MAX - 1)) + 1))
		return -2;
	return 0;
}}
"""

ENTRY = r"""
SEC("{section}")
int {function}(struct xdp_md *ctx)
{{
	__u32 zero = 0;
	struct pt_heap_value *hv = bpf_map_lookup_elem(&pt_heap, &zero);
	u8 *h;
	i64 flen, hdrs, pay_off, pay_len, reply_off = 0, reply_len = 0;
	i64 tr_off = FRAME_MAX, tr_fields = 0, point = 0, mask = 0, bmask = 0;
	int sent;
{decls}
	if (!hv)
		return XDP_PASS;
	h = hv->b;
	top = FRAME_MAX;
	flen = bpf_xdp_get_buff_len(ctx);
	if (flen < 42 || flen > FRAME_MAX)
		return XDP_PASS; /* not a UDP datagram, or larger than the copy: not ours */
	if (bpf_xdp_load_bytes(ctx, 0, h, ((flen - 1) & (FRAME_MAX - 1)) + 1))
		return XDP_PASS;
	if (h[12] != 0x08 || h[13] != 0x00 || (h[14] >> 4) != 4 || (h[14] & 15) < 5 || h[23] != 17)
		return XDP_PASS; /* IPv4 UDP only */
	if ((h[20] & 0x3f) || h[21])
		return XDP_PASS; /* a fragment: the user half gets the reassembled datagram (uncounted) */
	hdrs = 14 + (h[14] & 15) * 4 + 8;
	if (hdrs > flen || ((i64)h[(hdrs - 6) & M] << 8 | h[(hdrs - 5) & M]) != PORT)
		return XDP_PASS;
	pay_len = ((i64)h[(hdrs - 4) & M] << 8 | h[(hdrs - 3) & M]) - 8;
	if (pay_len < 0 || hdrs + pay_len > flen)
		return XDP_PASS;
	pay_off = hdrs;

{body}
done_none:
	return XDP_DROP; /* the handler returned None: no reply */
done_reply:
	hv->send[0] = flen; hv->send[1] = hdrs; hv->send[2] = 0; hv->send[3] = reply_off; hv->send[4] = reply_len;
	sent = pt_send(ctx, hv, 1);
	if (sent == 0)
		return XDP_TX;
	if (sent == -2)
		return XDP_ABORTED;
	mask = {all_mask};
	/* fall through: the user half answers */
restart:
	bmask = 0;
	top = FRAME_MAX;
	tr_off = FRAME_MAX;
	tr_fields = 0;
	point = 0;
pass_up:
	*(u16u *)&h[top & M] = (__u16)tr_fields;
	*(u16u *)&h[(top + 2) & M] = (__u16)point;
	*(u16u *)&h[(top + 4) & M] = (__u16)mask;
	*(u16u *)&h[(top + 6) & M] = (__u16)bmask;
	*(u64u *)&h[(top + 8) & M] = NONCE;
	top += 16;
	hv->send[0] = flen; hv->send[1] = hdrs; hv->send[2] = pay_len; hv->send[3] = tr_off; hv->send[4] = top - tr_off;
	sent = pt_send(ctx, hv, 0);
	if (sent == -1)
		return XDP_PASS; /* unchanged: the user half runs the whole handler on it, uncounted */
	if (sent == -2)
		return XDP_ABORTED;
{raise_pending}
	return XDP_PASS;
}}

char LICENSE[] SEC("license") = "GPL";
"""


def _c_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def _map_c(typed: _TypedMap) -> str:
    name = _c_name(typed.name)
    kind = {"hash": "BPF_MAP_TYPE_HASH", "array": "BPF_MAP_TYPE_ARRAY"}[typed.type_name]
    key = "__u32" if typed.type_name == "array" else f"struct {name}_key"
    lines = []
    if typed.type_name != "array":
        lines.append(f"struct {name}_key {{ u8 b[{typed.key.size}]; }};")
    lines.append(f"struct {name}_value {{ u8 b[{typed.value.size}]; }};")
    # Without preallocation a replaced element is freed after its readers: a lookup never sees half of an
    # update the user half makes at the same time.
    flags = "\t__uint(map_flags, BPF_F_NO_PREALLOC);\n" if typed.type_name == "hash" else ""
    lines.append(f"struct {{\n\t__uint(type, {kind});\n\t__uint(max_entries, {typed.max_entries});\n{flags}"
                 f"\t__type(key, {key});\n\t__type(value, struct {name}_value);\n}} {name} SEC(\".maps\");")
    return "\n".join(lines)


def generate(analysis: Analysis, namespace: dict, offloaded: frozenset[int], nonce: bytes | None = None) -> Program:
    """The C of the BPF half for the paths in `offloaded`, and the user points of the others."""
    if analysis.port is None:
        raise CodegenError(f"{analysis.source}: the handler needs a port (@bpforge.offload(hook=\"xdp\", port=N))")
    nonce = nonce or secrets.token_bytes(8)
    emitter = _Emitter(analysis, namespace, offloaded)
    for name, typed in emitter.maps.items():
        for desc in (typed.key, typed.value):
            if desc.size > SLACK:
                raise CodegenError(f"{analysis.source}: map {name}: {desc!r} is larger than {SLACK} bytes")
    lines = emitter.handler()
    mask_all = (1 << len(emitter.coordinated)) - 1
    raise_pending = "\n".join(
        f"\tif (mask & {1 << i}) count({i * SYNC_STRIDE});\n"
        f"\tif (bmask & {1 << i}) count({i * SYNC_STRIDE + 2} + 2 * ({emitter.slot(f'probe_bucket_{i}')} & {BUCKETS - 1}));"
        for i in range(len(emitter.coordinated)))
    function = _c_name(f"bpforge_{analysis.handler}")[:15]
    prelude = PRELUDE.format(source=analysis.source, handler=analysis.handler, frame_max=FRAME_MAX, heap=HEAP,
                             slack=SLACK, slots=len(emitter.declared) + 1, port=analysis.port, nonce=int.from_bytes(nonce, "little"),
                             sync_entries=max(2, SYNC_STRIDE * len(emitter.coordinated)),
                             maps="\n".join(_map_c(t) for t in emitter.maps.values()))
    entry = ENTRY.format(section="xdp", function=function, decls="\n".join("\t" + d for d in emitter.decls),
                         body="\n".join(line for line in lines if line.strip()), all_mask=mask_all,
                         raise_pending=raise_pending)
    return Program(prelude + entry, "xdp", function, nonce, emitter.points, emitter.coordinated,
                   {name: typed.name for name, typed in emitter.maps.items()}, analysis.port, emitter.param)
