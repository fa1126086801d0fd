"""Profile-guided partitioning: run the handler under Python on a trace and learn how often each path is
taken and what it costs in user space.

The application is loaded twice from its source: as written (timed: ns per call of each request) and with
every `if` of the handler recording its outcome (which path each request took, matched against the
analysis's paths by their decisions). Both copies replay the same requests in order from a fresh module
state, so each request meets the state the requests before it left, as in the server.

A trace is a pcap file (classic format, Ethernet or raw-IP link type: the UDP payloads to the handler's
port) or a requests file (one hex payload per line, `#` comments).
"""

from __future__ import annotations

import ast
import itertools
import statistics
import struct
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

from .analyze import Analysis, PartitionError

_RECORD = "__bpforge_decision__"
SAMPLES = 8  # requests kept per path: the BPF half is timed on them
_counter = itertools.count()


@dataclass(frozen=True)
class PathProfile:
    index: int  # the analysis's path
    count: int
    share: float  # of all requests
    user_ns: float  # median ns per call of this path's requests in Python (0 when never taken)

    def as_json(self) -> dict:
        return {"index": self.index, "count": self.count, "share": self.share, "user_ns": self.user_ns}


@dataclass(frozen=True)
class Profile:
    requests: int
    paths: list[PathProfile]
    unmatched: int  # requests whose decisions matched no listed path (analysis truncated, or an exception)
    samples: dict[int, list[bytes]] = field(default_factory=dict)  # a few requests of each path, in order

    def as_json(self) -> dict:
        return {"requests": self.requests, "paths": [p.as_json() for p in self.paths], "unmatched": self.unmatched}


def profile_handler(analysis: Analysis, requests: list[bytes]) -> Profile:
    """Replay `requests` through the handler of `analysis.source` (see the module docstring)."""
    source = Path(analysis.source).read_text(encoding="utf-8")
    timed = load_module(source, analysis.source, instrument=None)
    traced = load_module(source, analysis.source, instrument=analysis.handler)
    decisions: list[tuple[int, bool]] = []
    traced.__dict__[_RECORD] = lambda line, value: decisions.append((line, bool(value))) or value
    handler, tracer = getattr(timed, analysis.handler), getattr(traced, analysis.handler)
    by_decisions = {tuple((line, taken) for line, _, taken in p.decisions): p.index for p in analysis.paths}
    times: dict[int, list[int]] = {p.index: [] for p in analysis.paths}
    samples: dict[int, list[bytes]] = {p.index: [] for p in analysis.paths}
    unmatched = 0
    for request in requests:
        started = time.perf_counter_ns()
        try:
            handler(request)
        except Exception:  # noqa: BLE001 - the application's own error on this request: not a path of ours
            unmatched += 1
            _replay(tracer, request)
            decisions.clear()
            continue
        elapsed = time.perf_counter_ns() - started
        decisions.clear()
        _replay(tracer, request)
        index = by_decisions.get(tuple(decisions))
        decisions.clear()
        if index is None:
            unmatched += 1
        else:
            times[index].append(elapsed)
            if len(samples[index]) < SAMPLES:
                samples[index].append(request)
    total = max(len(requests), 1)
    return Profile(len(requests), [PathProfile(i, len(t), len(t) / total, statistics.median(t) if t else 0.0)
                                   for i, t in times.items()], unmatched, samples)


def _replay(tracer, request: bytes) -> None:
    try:
        tracer(request)
    except Exception:  # noqa: BLE001 - see profile_handler
        pass


def load_module(source: str, filename: str, instrument: str | None) -> types.ModuleType:
    """A fresh module from the application's source; `instrument`: the function whose `if` tests record
    their outcome. Its `__name__` is not `__main__`, so the server's main loop does not start."""
    tree = ast.parse(source, filename)
    if instrument is not None:
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == instrument:
                _Recorder().generic_visit(node)  # its body; nested functions are not its paths
        ast.fix_missing_locations(tree)
    name = f"bpforge_partition_app_{next(_counter)}"
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module  # dataclasses and the like look their module up
    try:
        exec(compile(tree, filename, "exec"), module.__dict__)  # noqa: S102 - the user's own application
    except Exception as err:
        raise PartitionError(f"{filename}: running the application's module failed: {type(err).__name__}: {err}") from None
    finally:
        sys.modules.pop(name, None)
    return module


class _Recorder(ast.NodeTransformer):
    """`if TEST:` -> `if __bpforge_decision__(LINE, TEST):` for the `if`s that make the analysis's paths:
    those of the handler's own body and its branches, not inside loops (a loop is one step of a path)."""

    def visit_If(self, node: ast.If) -> ast.If:
        self.generic_visit(node)
        node.test = ast.Call(ast.Name(_RECORD, ast.Load()), [ast.Constant(node.lineno), node.test], [])
        return node

    def visit_For(self, node: ast.AST) -> ast.AST:
        return node

    visit_While = visit_AsyncFor = visit_FunctionDef = visit_For


# ---- traces ----------------------------------------------------------------------------------------------

_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}
_LINK_ETHERNET, _LINK_RAW = 1, 101


def read_trace(path: str | Path, port: int | None) -> list[bytes]:
    """The requests of a trace file: a pcap's UDP payloads to `port` (any port when None), or a requests
    file's hex lines."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise PartitionError(f"{path}: {err.strerror or err}") from None
    if data[:4] in _PCAP_MAGIC:
        return pcap_payloads(data, port, str(path))
    requests = []
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            requests.append(bytes.fromhex(line))
        except ValueError:
            raise PartitionError(f"{path}:{number}: not a hex request (a requests file has one per line)") from None
    return requests


def pcap_payloads(data: bytes, port: int | None, name: str = "<pcap>") -> list[bytes]:
    endian = _PCAP_MAGIC[data[:4]]
    if len(data) < 24:
        raise PartitionError(f"{name}: truncated pcap header")
    link = struct.unpack(endian + "I", data[20:24])[0]
    if link not in (_LINK_ETHERNET, _LINK_RAW):
        raise PartitionError(f"{name}: link type {link}: only Ethernet and raw IP captures are read")
    out, at = [], 24
    while at + 16 <= len(data):
        caplen = struct.unpack(endian + "I", data[at + 8:at + 12])[0]
        frame = data[at + 16:at + 16 + caplen]
        if len(frame) < caplen:
            raise PartitionError(f"{name}: truncated record at byte {at}")
        at += 16 + caplen
        payload = _udp_payload(frame[14:] if link == _LINK_ETHERNET else frame, port,
                               frame[12:14] if link == _LINK_ETHERNET else b"\x08\x00")
        if payload is not None:
            out.append(payload)
    return out


def _udp_payload(ip: bytes, port: int | None, ethertype: bytes) -> bytes | None:
    if ethertype != b"\x08\x00" or len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
        return None
    header = (ip[0] & 0xF) * 4
    udp = ip[header:]
    if len(udp) < 8 or port is not None and int.from_bytes(udp[2:4], "big") != port:
        return None
    length = int.from_bytes(udp[4:6], "big")
    return udp[8:max(length, 8)]


__all__ = ["PathProfile", "Profile", "pcap_payloads", "profile_handler", "read_trace"]
