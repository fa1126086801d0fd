"""The partitioner's analysis of a Python application: the handler, its maps and callees, every construct
outside the BPF subset with its reason and line, and the handler's paths with the state each reads and
writes."""

from __future__ import annotations

import textwrap

import pytest

from bpforge.partition.analyze import PartitionError, analyze_source

APP = '''
import socket
import bpforge

cache = bpforge.HashMap(key=bpforge.Bytes(32), value=bpforge.Bytes(64), max_entries=1024)
hits = bpforge.ArrayMap(value=bpforge.U64, max_entries=1)


def parse_key(p: bytes, start: int) -> bytes:
    for i in range(40):
        if start + i + 1 >= len(p):
            return b""
        if p[start + i] == 13:
            return p[start:start + i]
    return b""


@bpforge.offload(hook="xdp", port=11211)
def handle(p: bytes) -> bytes | None:
    if len(p) < 12:
        return None
    body = p[8:]
    if body.startswith(b"get "):
        key = parse_key(body, 4)
        value = cache.get(key)
        if value is None:
            return p[:8] + b"END\\r\\n"
        hits[0] = hits[0] + 1
        return p[:8] + b"VALUE " + key + b" 0 " + bytes([48 + len(value) % 10]) + b"\\r\\n" + value + b"\\r\\nEND\\r\\n"
    if body.startswith(b"set "):
        key = parse_key(body, 4)
        print("set", key)
        cache[key] = body[4:]
        return p[:8] + b"STORED\\r\\n"
    return p[:8] + b"ERROR\\r\\n"


def main():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(handle(data), addr)
'''


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_the_handler_its_maps_and_callees():
    a = analyze_source(APP, "app.py")
    assert (a.handler, a.hook, a.port, a.functions) == ("handle", "xdp", 11211, ["handle", "parse_key"])
    assert {m.name: (m.kind, m.max_entries) for m in a.maps.values()} == {"cache": ("HashMap", 1024),
                                                                         "hits": ("ArrayMap", 1)}
    # the socket loop in main() is not the handler's business: only the print on the set path is a finding
    assert [(f.line, f.what) for f in a.findings] == [(line_of(APP, 'print("set"'), "print(...)")]


def test_paths_with_their_state_and_offloadability():
    a = analyze_source(APP, "app.py")
    assert len(a.paths) == 5
    by_end = {p.end_line: p for p in a.paths}
    hit = by_end[line_of(APP, 'b"VALUE "')]
    assert hit.offloadable and hit.reads == {"cache", "hits"} and hit.writes == {"hits"}
    assert [taken for _, _, taken in hit.decisions] == [False, True, False]
    miss = by_end[line_of(APP, 'b"END\\r\\n"')]
    assert miss.offloadable and miss.reads == {"cache"} and not miss.writes
    store = by_end[line_of(APP, 'b"STORED')]
    assert not store.offloadable and store.writes == {"cache"}
    assert store.findings[0].why.startswith("I/O")
    assert "not (len(p) < 12) at line" in store.describe()


@pytest.mark.parametrize("body, what, why", [
    ("x = len(p) / 2\n    return None", "len(p) / 2", "true division gives a float"),
    ("x = 1.5\n    return None", "float 1.5", "no floating point"),
    ("while len(p) > 0:\n        p = p[1:]\n    return None", "while loop", "unbounded loop"),
    ("for b in p:\n        pass\n    return None", "for loop over p", "range(N)"),
    ("try:\n        x = p[0]\n    except IndexError:\n        return None\n    return None", "try statement",
     "exceptions"),
    ("raise ValueError(p)", "raise", "exceptions"),
    ("assert p\n    return None", "assert", "exceptions"),
    ("xs = [1, 2]\n    return None", "[1, 2]", "allocates"),
    ("d = {k: 1 for k in range(3)}\n    return None", "{k: 1 for k in range(3)}", "allocates"),
    ("open('/tmp/x').write(p)\n    return None", "open(...)", "I/O"),
    ("import os\n    return None", "import", "imports run arbitrary code"),
    ("global counter\n    return None", "global counter", "typed map"),
    ("return f'{p}'.encode()", "f-string", "string formatting"),
    ("return str(p).encode() + str(p)", "str(...)", "text is not compiled to BPF"),
    ("return p.hex()", "p.hex(...)", "a library call"),
    ("import json\n    return json.dumps(p)", "json.dumps(...)", "a library call"),
    ("cache.clear()\n    return None", "cache.clear", "get/put/delete/pop/[]/del/in"),
    ("store[p] = 1\n    return None", "module state store", "not a typed map: it lives in user space"),
    ("return LIMIT + p[0] if store else None", "module state store", "not a typed map"),
    ("x = 2 ** len(p)\n    return None", "2 ** len(p)", "variable exponent"),
])
def test_constructs_outside_the_subset(body, what, why):
    source = textwrap.dedent('''
        import bpforge
        cache = bpforge.HashMap(key=bpforge.U32, value=bpforge.U32, max_entries=8)
        store = {}
        LIMIT = 64

        @bpforge.offload(hook="xdp")
        def handle(p: bytes):
        ''') + "    " + body + "\n"
    found = analyze_source(source).findings
    assert any(f.what == what and why in f.why for f in found), [(f.what, f.why) for f in found]
    assert all(f.line >= 8 for f in found)
    assert not any("LIMIT" in f.what for f in found)  # a module constant is compiled in


def test_the_subset_itself_has_no_findings():
    source = textwrap.dedent('''
        import bpforge
        counts = bpforge.HashMap(key=bpforge.U32, value=bpforge.U64, max_entries=64)

        def word(p: bytes, i: int) -> int:
            return int.from_bytes(p[i:i + 2], "big")

        @bpforge.offload(hook="xdp", port=53)
        def handle(p: bytes):
            if len(p) < 4 or not p.startswith(b"Q"):
                return None
            total = 0
            for i in range(16):
                if i >= len(p):
                    break
                total = (total + p[i]) & 0xFFFF
            key = word(p, 2)
            counts[key] = (counts.get(key) or 0) + 1
            if key in counts and total % 3 == 0:
                del counts[key]
            return b"A" + bytes([48 + total % 10]) if total > 10 else b"B"
        ''')
    a = analyze_source(source)
    assert a.findings == [] and a.port == 53 and all(p.offloadable for p in a.paths)
    assert {m for p in a.paths for m in p.writes} == {"counts"}


def test_recursion_is_outside():
    source = textwrap.dedent('''
        import bpforge

        def down(n: int) -> int:
            if n == 0:
                return 0
            return down(n - 1)

        @bpforge.offload(hook="xdp")
        def handle(p: bytes):
            return down(len(p))
        ''')
    found = analyze_source(source).findings
    assert [(f.what, f.function) for f in found] == [("recursive function down", "down")]


@pytest.mark.parametrize("source, handler, message", [
    ("def f(p):\n    return p\n", None, "no handler marked @bpforge.offload"),
    ("import bpforge\n@bpforge.offload()\ndef f(p):\n    return p\n@bpforge.offload()\ndef g(p):\n    return p\n",
     None, "more than one handler marked @bpforge.offload: f, g"),
    ("def f(p):\n    return p\n", "nope", "no function named 'nope'"),
    ("def f(p:\n", None, "app.py:1"),
    ("import bpforge\n@bpforge.offload(hook='tc')\ndef f(p):\n    return p\n", None, "only xdp handlers"),
])
def test_what_cannot_be_partitioned_at_all(source, handler, message):
    with pytest.raises(PartitionError, match=message):
        analyze_source(source, "app.py", handler)


def test_a_handler_named_on_the_command_line():
    a = analyze_source("def f(p):\n    return p\n\ndef g(p):\n    return None\n", "app.py", "g")
    assert a.handler == "g" and len(a.paths) == 1 and a.paths[0].offloadable
