"""examples/kvcache and what it stands on (partition.runtime, netlab, workload): the handler as plain
Python, the typed maps alone and backed by kernel maps shared with the XDP half through test_run, and end
to end on a veth pair: the hand-written split answers every request exactly as the Python-only server,
races of SETs and GETs included, with GET hits answered at XDP."""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
import sys

import pytest

from conftest import EXAMPLES
from bpforge import ArrayMap, Bytes, HashMap, Struct, U8, U16, U32, U64, offload
from bpforge.isa.maptypes import MapError, MapSpec
from bpforge.partition.runtime import MapFull, MissingKey, Offload, PartitionError, declared, offload_of
from bpforge.partition.workload import Mix, make_requests

KVCACHE = EXAMPLES / "kvcache"
sys.path.insert(0, str(KVCACHE))
import hand_server  # noqa: E402
import server  # noqa: E402

OBJECT = EXAMPLES / "obj" / "xdp_kvcache.o"
HEADER = struct.pack(">HHHH", 0x1234, 0, 1, 0)
REPLY_HEADER = struct.pack(">HHHH", 0x1234, 0, 1, 0)


@pytest.fixture
def handle():
    """server.handle on an empty store (the store is the module's, as in the application)."""
    for key in list(server.cache):
        del server.cache[key]
    yield lambda body: server.handle(HEADER + body)
    for key in list(server.cache):
        del server.cache[key]


# ---- the handler, in plain Python ------------------------------------------------------------------------

def test_get_set_delete(handle):
    assert handle(b"get a\r\n") == REPLY_HEADER + b"END\r\n"
    assert handle(b"set a 7 0 3\r\nabc\r\n") == REPLY_HEADER + b"STORED\r\n"
    assert handle(b"get a\r\n") == REPLY_HEADER + b"VALUE a 7 3\r\nabc\r\nEND\r\n"
    assert handle(b"set a 4294967295 99 0\r\n\r\n") == REPLY_HEADER + b"STORED\r\n"
    assert handle(b"get a\r\n") == REPLY_HEADER + b"VALUE a 4294967295 0\r\n\r\nEND\r\n"
    assert handle(b"delete a\r\n") == REPLY_HEADER + b"DELETED\r\n"
    assert handle(b"delete a\r\n") == REPLY_HEADER + b"NOT_FOUND\r\n"
    assert handle(b"get a\r\n") == REPLY_HEADER + b"END\r\n"


def test_limits_and_data_with_line_ends(handle):
    key, value = b"k" * 32, b"\r\n" + b"v" * 62
    assert handle(b"set %s 1 0 64\r\n%s\r\n" % (key, value)) == REPLY_HEADER + b"STORED\r\n"
    assert handle(b"get %s\r\n" % key) == REPLY_HEADER + b"VALUE %s 1 64\r\n%s\r\nEND\r\n" % (key, value)


@pytest.mark.parametrize("body", [
    b"", b"get", b"get\r\n", b"get \r\n", b"get a b\r\n", b"get a\x00\r\n", b"get " + b"k" * 33 + b"\r\n",
    b"get a\r\nextra", b"GET a\r\n", b"gets a\r\n", b"set a 1 0 3\r\nab\r\n", b"set a 1 0 3\r\nabcd\r\n",
    b"set a 1 0 3\r\nabc", b"set a 1 0\r\nabc\r\n", b"set a 1 0 65\r\n" + b"v" * 65 + b"\r\n",
    b"set a 4294967296 0 1\r\nx\r\n", b"set a -1 0 1\r\nx\r\n", b"set a 1 0 1 noreply\r\nx\r\n",
    b"set a  1 0 1\r\nx\r\n", b"set a 1 0 0x1\r\nx\r\n", b"delete\r\n", b"delete a b\r\n", b"delete a 0\r\n",
    b"flush_all\r\n", b"x" * 200,
])
def test_anything_else_is_an_error(handle, body):
    assert handle(body) == REPLY_HEADER + b"ERROR\r\n"
    assert len(server.cache) == 0


def test_no_reply_without_a_frame_header(handle):
    assert server.handle(b"") is None and server.handle(b"\x00" * 7) is None


def test_full_store_refuses_new_keys_but_replaces(handle, monkeypatch):
    small = HashMap(key=Bytes(server.KEY_MAX), value=server.Entry, max_entries=2)
    monkeypatch.setattr(server, "cache", small)
    assert handle(b"set a 1 0 1\r\nx\r\n") == handle(b"set b 1 0 1\r\nx\r\n") == REPLY_HEADER + b"STORED\r\n"
    assert handle(b"set c 1 0 1\r\nx\r\n") == REPLY_HEADER + b"SERVER_ERROR out of memory storing object\r\n"
    assert handle(b"set a 2 0 1\r\ny\r\n") == REPLY_HEADER + b"STORED\r\n"


def test_the_handler_is_marked_for_offload():
    assert offload_of(server.handle) == Offload("xdp", 11211)
    handlers, maps = declared(vars(server))
    assert list(handlers) == ["handle"] and list(maps) == ["cache"]


# ---- the runtime ---------------------------------------------------------------------------------------------

def test_scalars_and_bytes_check_and_encode():
    assert [d.size for d in (U8, U16, U32, U64)] == [1, 2, 4, 8]
    assert U16.encode(0x1234) == (0x1234).to_bytes(2, sys.byteorder)
    for desc, bad in ((U8, 256), (U32, -1), (U64, 1 << 64), (U8, True), (U16, 1.0), (U32, "1")):
        with pytest.raises(PartitionError):
            desc.encode(bad)
    assert Bytes(4).encode(b"ab") == b"ab\0\0" and Bytes(4).decode(b"ab\0\0") == b"ab\0\0"
    with pytest.raises(PartitionError):
        Bytes(4).encode(b"abcde")
    with pytest.raises(PartitionError):
        Bytes(4).encode("ab")
    with pytest.raises(PartitionError):
        Bytes(0)


def test_struct_has_the_c_layout():
    rec = Struct("Rec", a=U8, b=U32, c=U16, d=Bytes(3), e=U64)
    assert rec.offsets == {"a": 0, "b": 4, "c": 8, "d": 10, "e": 16} and rec.size == 24
    value = rec(1, 2, 3, b"x", 5)
    assert value.d == b"x\0\0" and rec.decode(rec.encode(value)) == value
    assert rec.encode({"a": 1, "b": 2, "c": 3, "d": b"x", "e": 5}) == rec.encode(value)
    with pytest.raises(PartitionError, match="Rec"):
        rec(1, 2, 3, b"x", -5)
    with pytest.raises(PartitionError):
        rec.encode((1, 2))


def test_hash_map_is_dict_like_and_full_as_the_kernel_says():
    m = HashMap(key=Bytes(4), value=U32, max_entries=2)
    m[b"a"] = 1
    m[b"b"] = 2
    assert m[b"a"] == 1 and b"b" in m and b"c" not in m and m.get(b"c", 7) == 7 and len(m) == 2
    assert sorted(m) == [b"a\0\0\0", b"b\0\0\0"] and sorted(m.values()) == [1, 2]
    with pytest.raises(MapFull) as info:
        m[b"c"] = 3
    assert info.value.errno == errno.E2BIG
    assert m.put(b"c", 3) == -errno.E2BIG and m.put(b"a", 5) == 0 and m[b"a"] == 5
    del m[b"a"]
    with pytest.raises(MissingKey):
        del m[b"a"]
    with pytest.raises(KeyError):  # dict idioms work
        m[b"a"]
    assert m.delete(b"a") == -errno.ENOENT and m.delete(b"b") == 0 and len(m) == 0
    with pytest.raises(PartitionError):
        m[b"toolong"] = 1
    with pytest.raises(PartitionError):
        m[b"a"] = 1 << 32


def test_array_map_has_every_index():
    a = ArrayMap(value=U64, max_entries=3)
    assert list(a.items()) == [(0, 0), (1, 0), (2, 0)] and len(a) == 3
    a[2] = 9
    assert a[2] == 9
    with pytest.raises(MissingKey):
        a[3]
    with pytest.raises(MapError) as info:
        a[3] = 1
    assert info.value.errno == errno.E2BIG
    with pytest.raises(MapError):
        del a[0]


def test_offload_marks_and_returns_the_function():
    def f(payload):
        return payload

    assert offload(hook="xdp", port=53)(f) is f and offload_of(f) == Offload("xdp", 53)
    assert offload_of(lambda p: p) is None
    for bad in (dict(hook="kprobe"), dict(port=0), dict(port=70000)):
        with pytest.raises(PartitionError):
            offload(**bad)


def test_attach_moves_the_contents_and_checks_the_shape(kernel):
    m = HashMap(key=Bytes(4), value=U32, max_entries=4, name="t_attach")
    m[b"a"] = 1
    with kernel.KernelMap.create(m.spec) as kmap:
        with m.backing(kmap):
            assert kmap.lookup(b"a\0\0\0") == U32.encode(1)
            m[b"b"] = 2
            assert kmap.lookup(b"b\0\0\0") == U32.encode(2)
            kmap.update(b"c\0\0\0", U32.encode(3))  # written behind the map's back: seen at once
            assert m[b"c"] == 3 and len(m) == 3
        assert not m.backed and dict(m.items()) == {b"a\0\0\0": 1, b"b\0\0\0": 2, b"c\0\0\0": 3}
    with kernel.KernelMap.create(MapSpec.of("hash", 4, 8, 4)) as other:
        with pytest.raises(PartitionError):
            m.attach(other)


# ---- the XDP half through BPF_PROG_TEST_RUN, sharing maps with Python ----------------------------------

def _csum(header: bytes) -> int:
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(payload: bytes, *, dport: int = 11211) -> bytes:
    udp = struct.pack(">HHHH", 40000, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes([10, 11, 0, 2]),
                     bytes([10, 11, 0, 1]))
    ip = ip[:10] + struct.pack(">H", _csum(ip)) + ip[12:]
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


@pytest.fixture
def xdp(kernel, handle):
    from bpforge.elf import read_object

    obj = read_object(OBJECT)
    with kernel.load_linked(obj.linked(), obj, log_level=0) as prog:
        yield prog, hand_server.XdpCache(prog.maps["kv_cache"], prog.maps["kv_seen"], prog.maps["kv_done"])


def stats(prog) -> list[int]:
    return [struct.unpack("<Q", prog.maps["kv_stats"].lookup(struct.pack("<I", i)))[0] for i in range(4)]


def test_python_writes_are_seen_by_bpf_and_bpf_writes_by_python(xdp):
    prog, coordination = xdp
    # Python -> BPF: an entry written through the typed map is what XDP answers with.
    body = b"VALUE k 0 1\r\nv\r\nEND\r\n"
    coordination.cache[b"k"] = hand_server.Reply(len(body), body)
    out = prog.test_run(udp_frame(HEADER + b"get k\r\n"))
    assert out.retval == 3  # XDP_TX
    assert out.data_out[42:] == REPLY_HEADER + body
    eth, ip, udp = out.data_out[:14], out.data_out[14:34], out.data_out[34:42]
    assert eth == b"\x04" * 6 + b"\x02" * 6 + b"\x08\x00" and _csum(ip) == 0
    assert ip[12:16] == bytes([10, 11, 0, 1]) and struct.unpack(">HHHH", udp) == (11211, 40000, 8 + 8 + len(body), 0)
    # BPF -> Python: a SET passing XDP raises its bucket's counter, read through the typed array.
    bucket = hand_server.bucket(b"k")
    assert prog.test_run(udp_frame(HEADER + b"set k 0 0 1\r\nw\r\n")).retval == 2  # XDP_PASS
    assert coordination.seen[bucket] == 1 and coordination.done[bucket] == 0
    assert b"k" not in coordination.cache  # invalidated on its way up
    assert prog.test_run(udp_frame(HEADER + b"get k\r\n")).retval == 2  # a write is pending: passed
    assert stats(prog) == [1, 0, 1, 1]


def test_the_hand_split_in_arrival_order_equals_the_handler(xdp):
    """The two halves on one ordered stream, through test_run: each request goes to XDP first and, when
    passed, to the handler plus the coordination, as on the wire; every reply is the handler's alone."""
    prog, coordination = xdp
    requests = make_requests(Mix(requests=600, keys=12, missing=4, seed=5))
    expected = []
    reference = HashMap(key=Bytes(server.KEY_MAX), value=server.Entry, max_entries=server.ENTRIES)
    store = server.cache
    server.cache = reference
    try:
        expected = [server.handle(r.payload) for r in requests]
    finally:
        server.cache = store
    got = []
    for request in requests:
        out = prog.test_run(udp_frame(request.payload)) if len(request.payload) else None
        if out is not None and out.retval == 3:
            got.append(out.data_out[42:])
        else:
            got.append(server.handle(request.payload))
            coordination.after(request.payload)
    assert got == expected
    assert stats(prog)[0] > 50  # many GETs were answered at XDP


def test_written_key_is_the_xdp_rule(xdp):
    prog, coordination = xdp
    cases = [b"set a 1 0 1\r\nx\r\n", b"delete a\r\n", b"set " + b"k" * 32, b"set " + b"k" * 33 + b" 1",
             b"set  a", b"set a\x00 1", b"delete\r\n", b"set\r\n", b"get a\r\n", b"delete " + b"d" * 32 + b"\r",
             b"set x", b"sett a"]
    for body in cases:
        payload = HEADER + body
        before = [coordination.seen[b] for b in range(hand_server.BUCKETS)]
        prog.test_run(udp_frame(payload))
        after = [coordination.seen[b] for b in range(hand_server.BUCKETS)]
        key = hand_server.written_key(payload)
        changed = [b for b in range(hand_server.BUCKETS) if before[b] != after[b]]
        assert changed == ([] if key is None else [hand_server.bucket(key)]), body


# ---- end to end on veth ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab_ok():
    from bpforge.kernel import kernel_available
    from bpforge.partition.netlab import lab_unavailable

    reason = kernel_available() or lab_unavailable()
    if reason is not None:
        pytest.skip(reason)


def _namespaces() -> set[str]:
    try:
        return {n for n in os.listdir("/run/netns") if n.startswith("bpfg-")}
    except OSError:
        return set()


def test_the_lab_removes_what_it_made_even_on_errors(lab_ok):
    from bpforge.partition.netlab import Lab

    before = _namespaces()
    with pytest.raises(RuntimeError):
        with Lab(tag="cleanup") as lab:
            names = {lab.server_ns, lab.client_ns}
            assert names <= _namespaces()
            lab.start([sys.executable, "-c", "import time; print('listening', flush=True); time.sleep(60)"])
            raise RuntimeError("the test's own failure")
    assert not names & _namespaces() and _namespaces() <= before | set()
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in out for name in names)


def _replay_against(lab, argv, requests):
    from bpforge.partition.workload import replay

    process = lab.start(argv)
    with lab.socket() as sock:
        result = replay(sock, (lab.server_ip, server.PORT), requests, window=8, timeout=2.0)
    assert process.stop() == 0, process.log()
    return result


def test_hand_split_replies_equal_the_python_server_on_veth(lab_ok):
    from bpforge import kernel
    from bpforge.elf import read_object
    from bpforge.partition.netlab import Lab

    requests = make_requests(Mix(requests=1500, keys=32, missing=8, race=0.1, seed=7))
    python = [sys.executable, str(KVCACHE / "server.py"), "--bind"]
    hand = [sys.executable, str(KVCACHE / "hand_server.py"), "--bind"]
    obj = read_object(OBJECT)
    with Lab(tag="kv") as lab:
        alone = _replay_against(lab, python + [lab.server_ip], requests)
        with kernel.load_linked(obj.linked(), obj, log_level=0) as prog:
            pins = lab.pin_maps({name: prog.maps[name] for name in hand_server.MAPS})
            lab.attach_xdp(prog.fd)
            split = _replay_against(lab, hand + [lab.server_ip, "--maps", pins], requests)
            hits, _, blocked, writes = stats(prog)
    assert alone.lost == split.lost == 0
    assert all(reply is not None for reply, r in zip(alone.replies, requests) if r.answered)
    different = [(requests[i].payload, a, b) for i, (a, b) in enumerate(zip(alone.replies, split.replies)) if a != b]
    assert not different, different[:3]
    assert hits > 100 and writes > 0  # XDP answered GETs and saw the writes
    assert blocked >= 0


def test_hand_server_deploys_itself_with_dev(lab_ok):
    from bpforge.partition.netlab import Lab

    requests = make_requests(Mix(requests=300, keys=8, seed=2))
    with Lab(tag="dev") as lab:
        alone = _replay_against(lab, [sys.executable, str(KVCACHE / "server.py"), "--bind", lab.server_ip], requests)
        split = _replay_against(lab, [sys.executable, str(KVCACHE / "hand_server.py"), "--bind", lab.server_ip,
                                      "--dev", lab.server_dev], requests)
    assert split.replies == alone.replies and split.lost == 0


def test_the_automatic_partition_replies_as_the_python_server_on_veth(lab_ok, tmp_path):
    """bpforge partition on the example (verified by ours and the kernel's verifier), deployed with
    `partition run` on veth: every reply equals the Python-only server's on a mix with SETs racing GETs,
    the report explains the cut, and XDP answered GETs."""
    from bpforge.partition.netlab import Lab

    requests = make_requests(Mix(requests=1500, keys=32, missing=8, race=0.1, seed=9))
    trace = tmp_path / "trace.txt"
    trace.write_text("".join(r.payload.hex() + "\n" for r in requests[:400]))
    out, html = tmp_path / "kvcache", tmp_path / "report.html"
    cli = [sys.executable, "-m", "bpforge", "partition"]
    built = subprocess.run(cli + [str(KVCACHE / "server.py"), "--trace", str(trace), "-o", str(out), "--json",
                                  "--budget", "0", "--report", str(html)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    report = json.loads(built.stdout)
    assert report["checks"]["verifier"] == "accept" and report["checks"]["kernel verifier"] == "accept"
    assert report["predicted_speedup"] > 1
    where = {p["index"]: p for p in report["cut"]["paths"]}
    gets = [p for p in report["analysis"]["paths"] if any("get " in d["condition"] and d["taken"] for d in p["decisions"])]
    assert gets and all(where[p["index"]]["where"] == "bpf" for p in gets)
    writers = [p for p in report["analysis"]["paths"] if p["writes"]]
    assert writers and all(where[p["index"]]["where"] == "user" and "writes cache" in where[p["index"]]["why"]
                           for p in writers)
    assert "Predicted speedup" in html.read_text()
    with Lab(tag="auto") as lab:
        alone = _replay_against(lab, [sys.executable, str(KVCACHE / "server.py"), "--bind", lab.server_ip], requests)
        process = lab.start(cli + ["run", str(out), "--dev", lab.server_dev, "--", "--bind", lab.server_ip])
        from bpforge.partition.workload import replay

        with lab.socket() as sock:
            split = replay(sock, (lab.server_ip, server.PORT), requests, window=8, timeout=2.0)
        assert process.stop() == 0, process.log()
        log = process.log()
    assert alone.lost == split.lost == 0
    different = [(requests[i].payload, a, b) for i, (a, b) in enumerate(zip(alone.replies, split.replies)) if a != b]
    assert not different, different[:3]
    counts = re.search(r"answered (\d+) resumed, (\d+) restarted and (\d+) untagged", log)
    assert counts, log
    resumed, restarted, untagged = map(int, counts.groups())
    assert resumed > 0 and untagged == 0
    # XDP answered the rest: a GET restarts in user space only behind a write of its key's bucket still on
    # its way (on this mix, pipelined SETs race GETs of the same keys on purpose).
    assert len(requests) - resumed - restarted > len(requests) // 3
