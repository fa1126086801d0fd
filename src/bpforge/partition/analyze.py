"""Analyze a Python application for partitioning: find the per-packet handler marked `@bpforge.offload`, the
module-level typed maps it uses, the functions it calls, and for every construct whether BPF can run it —
and if not, why, at which source line. Then the handler's paths (each sequence of branch outcomes from its
entry to a `return`) with the state each reads and writes and whether it can run in BPF.

The subset BPF can run (what `partition` compiles; everything else may still be used on the user side):
- fixed-width integers (the maps' descriptors and `int` arithmetic: + - * // % & | ^ << >> ~, comparisons),
  booleans, `and`/`or`/`not`, conditional expressions;
- the packet as `bytes`: `len(p)`, `p[i]`, `p[i:j]` (Python's bounds: an index out of range raises in the
  user half), `==`/`!=`, `p.startswith(b"...")`/`p.endswith(b"...")`, `int.from_bytes(p[i:j], "big"|"little")`
  (up to 7 bytes), `bytes([n])`, `bytes` literals and concatenation (a reply of up to one frame);
- module-level `bpforge.Struct` values: built by position, fields read;
- the module's typed maps: reads (`m.get(k)`, `m[k]`, `k in m`) in BPF; writes (`m.put`, `m.delete`,
  `m[k] = v`, `del m[k]`, `m.pop`) are allowed, and their paths stay in user space (partition/cost.py);
- `if`/`elif`/`else`, conditional expressions, `return`, assignments to local names, `for i in range(N)`
  / `range(M, N)` (N - M beyond 256 when not a constant: the datagram goes to user space), `break`/
  `continue`; calls to other functions of the module that are themselves in the subset (not recursive).
Integers are Python's: a result outside 64 bits, a division by zero or a negative shift sends the datagram
to the user half, which does what Python does.
Out of it, with the reason given: floats (`/`, float literals, `float()`), unbounded loops (`while`
without a constant bound, `for` over anything but a bounded range), I/O (`print`, `open`, sockets, files),
allocation (lists, dicts, sets, comprehensions, `bytearray`, string building of unbounded size), exceptions
(`try`, `raise`, `assert`, `with`), `global`/`nonlocal` rebinding, lambdas, generators, classes, imports,
recursion, and calls to anything else (library functions, methods of other objects).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BpforgeError

MAP_KINDS = ("HashMap", "ArrayMap")
STRUCT_KIND = "Struct"
# Calls BPF can do: builtins with a bounded lowering, and methods of bytes and of typed maps.
BUILTINS = frozenset({"len", "range", "min", "max", "int", "bool", "abs"})
BYTES_METHODS = frozenset({"startswith", "endswith"})
MAP_METHODS = frozenset({"get", "pop", "put", "delete"})
MAP_WRITES = frozenset({"pop", "put", "delete", "update", "clear", "setdefault"})
IO_NAMES = frozenset({"print", "open", "input", "socket", "sendto", "recvfrom", "write", "read", "time", "sleep",
                      "log", "logging"})
MAX_PATHS = 256  # paths enumerated per handler before the rest are summarized as one


class PartitionError(BpforgeError):
    """The application cannot be partitioned as written (no handler, a syntax error, ...)."""


@dataclass(frozen=True)
class MapDecl:
    name: str
    kind: str  # HashMap | ArrayMap
    line: int
    key: str | None
    value: str | None
    max_entries: int | None


@dataclass(frozen=True)
class Finding:
    """A construct BPF cannot run."""

    function: str
    line: int
    col: int
    what: str  # the construct, in words
    why: str  # why BPF cannot run it

    def text(self) -> str:
        return f"line {self.line}: {self.what}: {self.why} (in {self.function})"


@dataclass
class Path_:
    """One path through the handler: the branch outcomes that lead to its return."""

    index: int
    decisions: list[tuple[int, str, bool]]  # (line, the condition's source, taken)
    end_line: int  # of the return (or the handler's end)
    reads: set[str] = field(default_factory=set)  # maps read
    writes: set[str] = field(default_factory=set)  # maps written
    findings: list[Finding] = field(default_factory=list)  # on this path: why it cannot run in BPF
    lines: list[int] = field(default_factory=list)  # the statements it runs

    @property
    def offloadable(self) -> bool:
        return not self.findings

    def describe(self) -> str:
        if not self.decisions:
            return "the only path"
        return " and ".join(f"{'' if taken else 'not '}({text}) at line {line}" for line, text, taken in self.decisions)

    def as_json(self) -> dict:
        return {"index": self.index, "decisions": [{"line": ln, "condition": t, "taken": k} for ln, t, k in self.decisions],
                "end_line": self.end_line, "reads": sorted(self.reads), "writes": sorted(self.writes),
                "offloadable": self.offloadable, "why_not": [f.text() for f in self.findings]}


@dataclass
class Analysis:
    source: str  # the file
    handler: str
    hook: str
    port: int | None
    maps: dict[str, MapDecl]
    functions: list[str]  # the handler and what it calls, in call order
    findings: list[Finding]  # every construct outside the subset, in the handler and its callees
    paths: list[Path_]
    truncated: bool = False  # more than MAX_PATHS paths: the rest are not listed
    text: str = field(default="", repr=False)  # the source, for the compiler
    constants: dict[str, object] = field(default_factory=dict, repr=False)  # module-level int/bytes constants
    structs: dict[str, int] = field(default_factory=dict, repr=False)  # module-level bpforge.Struct names: line

    def as_json(self) -> dict:
        return {"source": self.source, "handler": self.handler, "hook": self.hook, "port": self.port,
                "maps": [vars(m) for m in self.maps.values()], "functions": self.functions,
                "findings": [vars(f) for f in self.findings], "paths": [p.as_json() for p in self.paths],
                "truncated": self.truncated}


def analyze_file(path: str | Path, handler: str | None = None) -> Analysis:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise PartitionError(f"{path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise PartitionError(f"{path}: not a Python source file (not UTF-8 text)") from None
    return analyze_source(text, str(path), handler)


def analyze_source(text: str, filename: str = "<app>", handler: str | None = None) -> Analysis:
    """The analysis of an application's source text (`handler`: the function to partition; default the
    one decorated with `offload`)."""
    try:
        module = ast.parse(text, filename)
    except SyntaxError as err:
        raise PartitionError(f"{filename}:{err.lineno}: {err.msg}") from None
    functions = {node.name: node for node in module.body if isinstance(node, ast.FunctionDef)}
    maps = _map_decls(module)
    structs = _struct_decls(module)
    constants, state = _module_names(module, maps, functions)
    state -= set(structs)
    chosen, hook, port = _handler(functions, handler, filename, constants)
    order = _callees(chosen, functions)
    findings: list[Finding] = []
    for name in order:
        findings += _Checker(name, functions, maps, constants, state, structs).check(functions[name])
    findings += _recursion(order, functions)
    paths, truncated = _paths(functions[chosen], functions, maps, findings)
    return Analysis(filename, chosen, hook, port, maps, order, findings, paths, truncated, text=text,
                    constants=constants, structs=structs)


# ---- the handler and its module --------------------------------------------------------------------------

def _decorator_call(node: ast.expr) -> ast.Call | None:
    """`@bpforge.offload(...)` / `@offload(...)` as a call node."""
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name == "offload":
            return node
    return None


def _handler(functions: dict[str, ast.FunctionDef], wanted: str | None, filename: str,
             constants: dict[str, object]) -> tuple[str, str, int | None]:
    marked = {name: call for name, fn in functions.items() for d in fn.decorator_list
              if (call := _decorator_call(d)) is not None}
    if wanted is not None:
        if wanted not in functions:
            raise PartitionError(f"{filename}: no function named '{wanted}' (functions: {', '.join(functions)})")
        call = marked.get(wanted)
    elif len(marked) == 1:
        wanted, call = next(iter(marked.items()))
    elif not marked:
        raise PartitionError(f"{filename}: no handler marked @bpforge.offload(...) (or give --handler NAME)")
    else:
        raise PartitionError(f"{filename}: more than one handler marked @bpforge.offload: {', '.join(marked)} "
                             "(pick one with --handler NAME)")
    hook, port = "xdp", None
    for keyword in (call.keywords if call is not None else []):
        value = keyword.value
        if keyword.arg == "hook" and isinstance(value, ast.Constant) and isinstance(value.value, str):
            hook = value.value
        elif keyword.arg == "port" and isinstance(value, ast.Constant) and isinstance(value.value, int):
            port = value.value
        elif keyword.arg == "port" and isinstance(value, ast.Name) and isinstance(constants.get(value.id), int):
            port = constants[value.id]  # a module constant, as examples/kvcache's PORT
    if hook != "xdp":
        raise PartitionError(f"{filename}: hook '{hook}': only xdp handlers are partitioned so far")
    return wanted, hook, port


def _map_decls(module: ast.Module) -> dict[str, MapDecl]:
    """Module-level `NAME = bpforge.HashMap(key=..., value=..., max_entries=N)` (or ArrayMap)."""
    found = {}
    for node in module.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call)):
            continue
        func = node.value.func
        kind = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if kind not in MAP_KINDS:
            continue
        args = {k.arg: k.value for k in node.value.keywords}
        entries = args.get("max_entries")
        found[node.targets[0].id] = MapDecl(
            node.targets[0].id, kind, node.lineno, ast.unparse(args["key"]) if "key" in args else None,
            ast.unparse(args["value"]) if "value" in args else None,
            entries.value if isinstance(entries, ast.Constant) and isinstance(entries.value, int) else None)
    return found


def _struct_decls(module: ast.Module) -> dict[str, int]:
    """Module-level `NAME = bpforge.Struct("NAME", field=descriptor, ...)`: record types a handler may build."""
    found = {}
    for node in module.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and isinstance(node.value, ast.Call):
            func = node.value.func
            kind = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if kind == STRUCT_KIND:
                found[node.targets[0].id] = node.lineno
    return found


def _module_names(module: ast.Module, maps, functions) -> tuple[dict[str, object], set[str]]:
    """Module-level names: constants (an int or bytes literal assigned once: compiled in) and the rest of
    the module's state (a dict, a socket, an object: user space only)."""
    assigned: dict[str, list[ast.expr]] = {}
    for node in module.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign | ast.AugAssign) else []
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    assigned.setdefault(name.id, []).append(getattr(node, "value", None))
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                assigned.setdefault((alias.asname or alias.name).split(".")[0], []).append(None)
    constants = {}
    for name, values in assigned.items():
        if name in maps or name in functions:
            continue
        if len(values) == 1 and isinstance(values[0], ast.Constant) and isinstance(values[0].value, int | bytes) \
                and not isinstance(values[0].value, bool):
            constants[name] = values[0].value
    return constants, set(assigned) - set(constants) - set(maps) - set(functions)


def _called_names(fn: ast.FunctionDef) -> list[str]:
    return [node.func.id for node in ast.walk(fn) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]


def _callees(root: str, functions: dict[str, ast.FunctionDef]) -> list[str]:
    """The handler and every module function it reaches, each once, in the order first called."""
    order, todo = [], [root]
    while todo:
        name = todo.pop(0)
        if name in order:
            continue
        order.append(name)
        todo += [callee for callee in _called_names(functions[name]) if callee in functions]
    return order


def _recursion(order: list[str], functions: dict[str, ast.FunctionDef]) -> list[Finding]:
    """A call cycle among the module's functions: BPF has no recursion (the verifier refuses it)."""
    found = []
    for name in order:
        seen, todo = set(), [c for c in _called_names(functions[name]) if c in functions]
        while todo:
            callee = todo.pop()
            if callee == name:
                fn = functions[name]
                found.append(Finding(name, fn.lineno, fn.col_offset, f"recursive function {name}",
                                     "BPF has no recursion: the verifier refuses call cycles"))
                break
            if callee not in seen:
                seen.add(callee)
                todo += [c for c in _called_names(functions[callee]) if c in functions]
    return found


# ---- the subset check ------------------------------------------------------------------------------------

class _Checker(ast.NodeVisitor):
    """Every construct of one function outside the subset, as a Finding."""

    def __init__(self, function: str, functions: dict[str, ast.FunctionDef], maps: dict[str, MapDecl],
                 constants: dict[str, object], state: set[str], structs: dict[str, int]) -> None:
        self.function, self.functions, self.maps, self.structs = function, functions, maps, structs
        self.constants, self.state = constants, state
        self.found: list[Finding] = []
        self.local: set[str] = set()

    def check(self, fn: ast.FunctionDef) -> list[Finding]:
        self.parents = {id(child): node for node in ast.walk(fn) for child in ast.iter_child_nodes(node)}
        self.local = {a.arg for a in fn.args.args} | {n.id for n in ast.walk(fn)
                                                       if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        for stmt in fn.body:
            self.visit(stmt)
        return self.found

    def _no(self, node: ast.AST, what: str, why: str) -> None:
        self.found.append(Finding(self.function, getattr(node, "lineno", 0), getattr(node, "col_offset", 0), what, why))

    # statements
    def visit_While(self, node: ast.While) -> None:
        self._no(node, "while loop", "unbounded loop: BPF needs a bound the verifier can see (for i in range(N))")
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        if not _bounded_range(node.iter):
            self._no(node, f"for loop over {ast.unparse(node.iter)}",
                     "only for i in range(N) / range(M, N) of integers runs in BPF")
        if node.orelse:
            self._no(node, "for ... else", "not in the subset")
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        self._no(node, "try statement", "exceptions: BPF has no unwinding")
        self.generic_visit(node)

    visit_TryStar = visit_Try

    def visit_Raise(self, node: ast.Raise) -> None:
        self._no(node, "raise", "exceptions: BPF has no unwinding")

    def visit_Assert(self, node: ast.Assert) -> None:
        self._no(node, "assert", "exceptions: BPF has no unwinding (use if ...: return)")

    def visit_With(self, node: ast.With) -> None:
        self._no(node, "with statement", "context managers run arbitrary code (I/O, locks)")
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self._no(node, f"global {', '.join(node.names)}", "module state must be a typed map to be shared with BPF")

    visit_Nonlocal = visit_Global

    def visit_Import(self, node: ast.Import) -> None:
        self._no(node, "import", "imports run arbitrary code")

    visit_ImportFrom = visit_Import

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._no(node, f"nested function {node.name}", "not in the subset (define it at module level)")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._no(node, f"class {node.name}", "not in the subset")

    def visit_Yield(self, node: ast.AST) -> None:
        self._no(node, "generator", "BPF runs to completion once per packet")

    visit_YieldFrom = visit_Yield
    visit_Await = visit_Yield

    # expressions
    def visit_Name(self, node: ast.Name) -> None:
        if node.id in self.state and node.id not in self.local and node.id not in ("bpforge",):
            self._no(node, f"module state {node.id}", "not a typed map: it lives in user space (declare it "
                     "bpforge.HashMap/ArrayMap to share it with BPF)")

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, float | complex):
            self._no(node, f"float {node.value!r}", "BPF has no floating point")

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Div):
            self._no(node, ast.unparse(node), "true division gives a float: use // for integers")
        elif isinstance(node.op, ast.Pow) and not (isinstance(node.right, ast.Constant) and isinstance(node.right.value, int)):
            self._no(node, ast.unparse(node), "a power by a variable exponent is an unbounded loop")
        elif isinstance(node.op, ast.MatMult):
            self._no(node, ast.unparse(node), "not in the subset")
        self.generic_visit(node)

    def _allocation(self, node: ast.AST) -> None:
        self._no(node, ast.unparse(node)[:60], "allocates: BPF has no heap (use a typed map for state)")

    visit_List = visit_Dict = visit_Set = visit_ListComp = visit_DictComp = visit_SetComp = _allocation
    visit_GeneratorExp = _allocation

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self._no(node, "f-string", "string formatting is not compiled to BPF (build digits from n % 10, as bytes)")

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._no(node, "lambda", "not in the subset")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            name = func.id
            if name in self.functions or name in BUILTINS or name in self.structs:
                pass
            elif name == "bytes" and len(node.args) == 1 and isinstance(node.args[0], ast.List) \
                    and len(node.args[0].elts) == 1 and not node.keywords:
                self.visit(node.args[0].elts[0])  # bytes([n]): one byte, no allocation
                return
            elif name == "str":
                self._no(node, "str(...)", "text is not compiled to BPF (build digits from n % 10, as bytes)")
            elif name in IO_NAMES:
                self._no(node, f"{name}(...)", "I/O: BPF cannot reach files, sockets or the terminal")
            elif name == "float":
                self._no(node, "float(...)", "BPF has no floating point")
            elif name in ("list", "dict", "set", "bytearray", "tuple", "sorted"):
                self._allocation(node)
            else:
                self._no(node, f"{name}(...)", "a call outside the module's subset functions")
        elif isinstance(func, ast.Attribute):
            owner = func.value
            if isinstance(owner, ast.Name) and owner.id in self.maps:
                if func.attr not in MAP_METHODS:
                    self._no(node, ast.unparse(func), f"typed maps offer get/put/delete/pop/[]/del/in in BPF, "
                             f"not .{func.attr}")
            elif func.attr in BYTES_METHODS:
                pass
            elif isinstance(owner, ast.Name) and owner.id == "int" and func.attr == "from_bytes":
                pass
            elif func.attr in IO_NAMES or isinstance(owner, ast.Name) and owner.id in IO_NAMES:
                self._no(node, f"{ast.unparse(func)}(...)", "I/O: BPF cannot reach files, sockets or the terminal")
            else:
                self._no(node, f"{ast.unparse(func)}(...)", "a library call BPF cannot make")
        else:
            self._no(node, ast.unparse(node)[:60], "an indirect call")
        # The arguments, and a receiver that is itself an expression; a named receiver was judged above.
        if isinstance(func, ast.Attribute) and not isinstance(func.value, ast.Name):
            self.visit(func.value)
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            self.visit(arg)


def _bounded_range(node: ast.expr) -> bool:
    """`range(stop)` or `range(start, stop)` of integers: BPF runs it with a bound the verifier sees (the
    trip count when it is a constant, else the compiler's loop limit, past which the packet goes to user
    space), so any integer bounds will do; a step other than 1 is outside the subset."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"):
        return False
    return 1 <= len(node.args) <= 2 and not node.keywords


# ---- paths -----------------------------------------------------------------------------------------------

def _paths(fn: ast.FunctionDef, functions, maps, findings: list[Finding]) -> tuple[list[Path_], bool]:
    """Every path of the handler: statements walked with each `if` taken both ways (a loop body is walked
    once as part of the path: its iterations do not make paths of their own); calls to module functions
    contribute their maps and findings to the path that makes them."""
    by_line: dict[tuple[str, int], list[Finding]] = {}
    for f in findings:
        by_line.setdefault((f.function, f.line), []).append(f)
    done: list[Path_] = []
    truncated = [False]

    def effects(node: ast.AST, path: Path_, function: str, seen: frozenset[str]) -> None:
        for sub in ast.walk(node):
            line = getattr(sub, "lineno", None)
            if line is not None:
                for f in by_line.get((function, line), ()):
                    if f not in path.findings:
                        path.findings.append(f)
            reads, writes = map_access(sub, maps)
            path.reads |= reads
            path.writes |= writes
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in functions \
                    and sub.func.id not in seen:
                callee = functions[sub.func.id]
                for stmt in callee.body:
                    effects(stmt, path, callee.name, seen | {callee.name})

    def walk(stmts: list[ast.stmt], path: Path_, rest: list[list[ast.stmt]]) -> None:
        if len(done) >= MAX_PATHS:
            truncated[0] = True
            return
        if not stmts:
            if rest:
                walk(rest[0], path, rest[1:])
            else:
                path.end_line = fn.body[-1].end_lineno or fn.lineno
                done.append(path)
            return
        stmt, tail = stmts[0], stmts[1:]
        path.lines.append(stmt.lineno)
        if isinstance(stmt, ast.If):
            effects(stmt.test, path, fn.name, frozenset({fn.name}))
            condition = ast.unparse(stmt.test)
            for taken, body in ((True, stmt.body), (False, stmt.orelse)):
                branch = _copy(path)
                branch.decisions.append((stmt.lineno, condition, taken))
                walk(body, branch, [tail, *rest])
            return
        if isinstance(stmt, ast.Return):
            effects(stmt, path, fn.name, frozenset({fn.name}))
            path.end_line = stmt.lineno
            done.append(path)
            return
        effects(stmt, path, fn.name, frozenset({fn.name}))
        walk(tail, path, rest)

    walk(fn.body, Path_(0, [], fn.lineno), [])
    for index, path in enumerate(done):
        path.index = index
    return done, truncated[0]


def _copy(path: Path_) -> Path_:
    return Path_(path.index, list(path.decisions), path.end_line, set(path.reads), set(path.writes),
                 list(path.findings), list(path.lines))


def map_access(node: ast.AST, maps: dict[str, MapDecl]) -> tuple[set[str], set[str]]:
    """(maps read, maps written) by this one node (not its children)."""
    reads, writes = set(), set()
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in maps:
        (writes if isinstance(node.ctx, ast.Store | ast.Del) else reads).add(node.value.id)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
            and node.func.value.id in maps:
        (writes if node.func.attr in MAP_WRITES else reads).add(node.func.value.id)
    elif isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
        reads |= {c.id for c in node.comparators if isinstance(c, ast.Name) and c.id in maps}
    return reads, writes


__all__ = ["Analysis", "Finding", "MapDecl", "PartitionError", "Path_", "analyze_file", "analyze_source", "map_access"]
