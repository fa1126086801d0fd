"""The generated BPF half and the user half together answer exactly as the Python handler: every datagram
through BPF_PROG_TEST_RUN (the kernel runs the BPF half) and, when the frame is passed up, through the
user half — against the original handler on the same requests in the same order, on shared maps."""

from __future__ import annotations

import random
import textwrap
from contextlib import ExitStack
from pathlib import Path

import pytest

from bpforge import kernel
from bpforge.partition.build import partition, udp_frame
from bpforge.partition.deploy import exchange, load_partition
from bpforge.partition.profile import load_module
from bpforge.partition.workload import Mix, make_requests

ROOT = Path(__file__).resolve().parent.parent
KVCACHE = ROOT / "examples" / "kvcache" / "server.py"

needs_kernel = pytest.mark.skipif(kernel.kernel_available() is not None,
                                  reason=f"needs bpf(): {kernel.kernel_available()}")
needs_clang = pytest.mark.skipif(__import__("shutil").which("clang-19") is None, reason="needs clang-19")


def trace_file(path: Path, payloads: list[bytes]) -> Path:
    path.write_text("# requests\n" + "".join(p.hex() + "\n" for p in payloads))
    return path


def compare(app: Path, out: Path, payloads: list[bytes], trace: list[bytes] | None = None) -> dict[str, int]:
    """Every payload through both halves and through the original handler: equal replies; where each
    request was answered, counted."""
    trace_path = trace_file(out.parent / f"{out.name}.trace", trace if trace is not None else payloads[:200])
    result = partition(app, trace=trace_path, out_dir=out, verify=False)
    reference = load_module(app.read_text(), str(app), None)
    handler = getattr(reference, result.analysis.handler)
    where: dict[str, int] = {}
    with ExitStack() as stack:
        deployment = load_partition(out, stack)
        for payload in payloads:
            try:
                want = ("ok", handler(payload))
            except Exception as err:  # noqa: BLE001 - the handler's own exception must happen in the user half too
                want = ("raised", type(err).__name__)
            try:
                side, reply = exchange(deployment, payload)
                got = ("ok", reply)
            except Exception as err:  # noqa: BLE001
                side, got = "user", ("raised", type(err).__name__)
            assert got == want, f"{payload!r}: {got} != {want}"
            where[side] = where.get(side, 0) + 1
    return where


@needs_kernel
@needs_clang
def test_kvcache_both_halves_answer_as_the_server(tmp_path):
    mix = [r.payload for r in make_requests(Mix(requests=1500, seed=11, keys=48, missing=12))]
    odd = [b"", b"short", b"\x00\x01\x00\x00\x00\x01\x00\x00get \r\n", b"\x00\x01\x00\x00\x00\x01\x00\x00get " +
           b"k" * 40 + b"\r\n", b"\x00\x01\x00\x00\x00\x01\x00\x00get a b\r\n", b"\x00" * 8 + b"get \x7f\r\n",
           b"\x00\x01\x00\x00\x00\x01\x00\x00set k 1 2 70\r\n" + b"v" * 70 + b"\r\n", b"\xff" * 300]
    where = compare(KVCACHE, tmp_path / "kv", odd + mix, trace=mix[:300])
    assert where["bpf"] > where["user"] > 0  # GETs at XDP, SETs and DELETEs in user space


SEMANTICS = '''
import bpforge

counts = bpforge.ArrayMap(value=bpforge.U64, max_entries=4, name="counts")
table = bpforge.HashMap(key=bpforge.U32, value=bpforge.U32, max_entries=64, name="table")
SHIFT = 3


def digits(n: int) -> bytes:
    out = b""
    for _ in range(20):
        out = bytes([48 + n % 10]) + out
        n = n // 10
        if n == 0:
            break
    return out


def signed(n: int) -> bytes:
    return b"-" + digits(-n) if n < 0 else digits(n)


@bpforge.offload(hook="xdp", port=9000)
def handle(p: bytes) -> bytes | None:
    if len(p) < 2:
        return None
    op = p[0]
    a = int.from_bytes(p[1:5], "big") - 2147483648
    b = int.from_bytes(p[5:9], "little") - 2147483648
    if op == 1:
        return signed(a // b) + b" " + signed(a % b)
    if op == 2:
        return signed(a * b) + b"," + signed((a + b) * 3 - (a - b) - -a)
    if op == 3:
        return signed(((a << SHIFT) ^ b) + (a >> (b & 63)) * 7 + (~a & b | 5))
    if op == 4:
        return p[2:p[1]] + p[p[1]:] + p[:1] + p[9:200]
    if op == 5:
        return b"yes" if p[1:].startswith(b"ab") and p.endswith(b"z") else b"no"
    if op == 6:
        k = p[1]
        if k in table:
            return signed(table[k]) + signed(counts[k & 3])
        return b"none" + signed(counts.get(k % 4) or 0)
    if op == 7:
        return signed(min(a, b, 7) * 3 + max(a, b) * 5 + (a if a > b else b) + ((a > 0) and b or 9)) + \
            (b"big" if a > b else b"small")
    if op == 8:
        return bytes([p[1] + 100])
    if op == 9:
        total = 0
        for i in range(2, len(p)):
            total = total + p[i] * i
        return signed(total)
    if op == 10:
        table.put(p[1], a & 0xFFFF)
        return b"stored"
    return p[len(p) - 1:]
'''


@needs_kernel
@needs_clang
def test_the_subset_is_compiled_with_pythons_semantics(tmp_path):
    app = tmp_path / "semantics.py"
    app.write_text(textwrap.dedent(SEMANTICS))
    rng = random.Random(7)
    payloads = []
    for _ in range(900):
        op = rng.randrange(0, 12)
        body = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 3, 8, 9, 12, 40, 300))))
        if op == 5 and rng.random() < 0.5:
            body = b"ab" + body + b"z"
        payloads.append(bytes([op]) + body)
    payloads += [bytes([1]) + (2 ** 31).to_bytes(4, "big") + (2 ** 31).to_bytes(4, "little"),  # b == 0: raises
                 bytes([2]) + b"\xff" * 8, bytes([8, 200]), bytes([9]) + b"\xff" * 600]
    where = compare(app, tmp_path / "sem", payloads)
    assert where["bpf"] > 700 and where["user"] > 0


def test_frames_carry_the_payload_to_the_port():
    frame = udp_frame(b"hello", 9000)
    assert frame[12:14] == b"\x08\x00" and frame[36:38] == (9000).to_bytes(2, "big") and frame[42:] == b"hello"


UNCOMPILED = '''
import bpforge
table = bpforge.HashMap(key=bpforge.U32, value=bpforge.U32, max_entries=64, name="t2")


@bpforge.offload(hook="xdp", port=9001)
def handle(p: bytes) -> bytes | None:
    if len(p) < 1:
        return None
    if p[0] == 1:
        return bytes([table.get(p[0], 7) % 256])
    return p[0:1]
'''


@needs_clang
def test_a_path_the_compiler_cannot_lower_stays_in_user_space_with_the_reason(tmp_path):
    app = tmp_path / "uncompiled.py"
    app.write_text(UNCOMPILED)
    result = partition(app, trace=trace_file(tmp_path / "t.txt", [b"\x01", b"\x02"]), verify=False)
    decisions = {d.index: d for d in result.cut.decisions}
    assert decisions[1].where == "user" and "m.get(k, default)" in decisions[1].why
    assert decisions[2].where == "bpf" and [p.paths for p in result.program.points] == [[1]]


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/app.py"], "No such file"),
    ([str(ROOT / "examples" / "obj" / "xdp_lb.o")], "not a Python source"),
    (["run", "/nonexistent", "--dev", "lo"], "partition.json"),
    ([str(KVCACHE), "--force-offload", "3"], "writes stay in user space"),
    ([str(KVCACHE), "--keep-user", "x"], "path numbers"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "bpforge", "partition", *args], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


CARRIED = '''
import bpforge
Rec = bpforge.Struct("Rec", a=bpforge.U32, b=bpforge.Bytes(4))
store = bpforge.HashMap(key=bpforge.U32, value=Rec, max_entries=16, name="store")


@bpforge.offload(hook="xdp", port=9002)
def handle(p: bytes) -> bytes | None:
    if len(p) < 2:
        return None
    rec = Rec(p[1], p[2:6])
    found = store.get(p[1] % 8)
    if p[0] == 1:
        store.put(p[1] % 8, rec)
        return b"put" + rec.b + (b"old" if found is not None else b"new") + bytes([len(p) % 256])
    if found is None:
        return b"none"
    return found.b + bytes([found.a % 256])
'''


@needs_kernel
@needs_clang
def test_structs_and_optionals_travel_in_the_trailer(tmp_path):
    app = tmp_path / "carried.py"
    app.write_text(CARRIED)
    rng = random.Random(3)
    payloads = [bytes([rng.choice((0, 1, 2)), rng.randrange(256)]) + bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
                for _ in range(300)]
    where = compare(app, tmp_path / "carried", payloads)
    assert where["bpf"] > 100 and where["user"] > 50
    points = partition(app, trace=trace_file(tmp_path / "t.txt", payloads[:50]), verify=False).program.points
    assert [(name, kind) for name, kind, _ in points[0].live][:2] == [("rec", "struct"), ("found", "opt")]


REASSIGNED = '''
import bpforge


def countdown(n: int) -> bytes:
    out = b""
    for _ in range(6):
        if n == 0:
            break
        out = out + bytes([48 + n])
        n = n - 1
    return out


@bpforge.offload(hook="xdp", port=9003)
def handle(p: bytes) -> bytes | None:
    if len(p) > 3 and p[0] == 35:
        p = p[2:]
    return p[0:2] + countdown(3) + countdown(len(p) % 5)
'''


@needs_kernel
@needs_clang
def test_reassigned_parameters_meet_in_one_place(tmp_path):
    """A handler reassigning its payload on one branch, a constant argument counted down in a loop."""
    app = tmp_path / "reassigned.py"
    app.write_text(REASSIGNED)
    payloads = [b"", b"a", b"#xyzw", b"#x", b"hello", b"#abcdefgh", b"12"]
    assert compare(app, tmp_path / "reassigned", payloads).get("bpf", 0) >= 6


def test_a_write_is_counted_by_its_key_only_where_the_probe_sees_every_write():
    """Writes in a loop, or at two places, count the datagram map-wide (mask bit set); one write not in a
    loop is probed for its key's bucket (mask 0)."""
    from bpforge.partition.analyze import analyze_source
    from bpforge.partition.codegen import generate

    source = textwrap.dedent('''
        import bpforge
        t = bpforge.HashMap(key=bpforge.U32, value=bpforge.U32, max_entries=8, name="t")

        def w(k):
            t.put(k, 1)
            return 0

        @bpforge.offload(hook="xdp", port=9)
        def handle(p):
            if len(p) < 2:
                return None
            if p[0] == 1:
                for i in range(3):
                    w(i)
                return b"x"
            if p[0] == 2:
                w(1)
                w(2)
                return b"y"
            if p[0] == 3:
                w(p[1])
                return b"z"
            return b"n" if p[0] in t else b"m"
        ''')
    analysis = analyze_source(source, "probe.py")
    namespace = vars(load_module(source, "probe.py", None))
    program = generate(analysis, namespace, frozenset(p.index for p in analysis.paths if not p.writes))
    line = {text: n for n, text in enumerate(source.splitlines(), 1)}
    firsts = [line["        for i in range(3):"], line["        w(1)"], line["        w(p[1])"]]
    assert [(p.line, p.mask) for p in program.points] == list(zip(firsts, (1, 1, 0)))
    assert program.coordinated == ["t"] and "probe" in program.c
