"""Profile-guided partitioning: path frequencies and user-space cost per path from replaying a trace
(a requests file or a pcap) through the handler."""

from __future__ import annotations

import struct

import pytest

from bpforge.partition.analyze import PartitionError, analyze_file
from bpforge.partition.profile import pcap_payloads, profile_handler, read_trace

APP = '''
store = {}
cache = {}


def offload(**kw):
    return lambda f: f


@offload(hook="xdp", port=11211)
def handle(p: bytes):
    if p.startswith(b"get "):
        key = p[4:]
        if key in cache:
            return b"HIT " + cache[key]
        value = store.get(key)
        if value is None:
            return b"END"
        cache[key] = value
        return b"VALUE " + value
    if p.startswith(b"set "):
        key, _, value = p[4:].partition(b" ")
        store[key] = value
        cache.pop(key, None)
        for i in range(3):
            if i == 5:
                break
        return b"STORED"
    if p == b"boom":
        raise ValueError(p)
    return b"ERROR"


if __name__ == "__main__":
    raise SystemExit("the server would start here")
'''


def frame(payload: bytes, port: int) -> bytes:
    udp = struct.pack(">HHHH", 40000, port, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes([10, 0, 0, 2]),
                     bytes([10, 0, 0, 1])) + udp
    return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00" + ip


def pcap(frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for f in frames:
        out += struct.pack("<IIII", 0, 0, len(f), len(f)) + f
    return out


@pytest.fixture
def app(tmp_path):
    path = tmp_path / "app.py"
    path.write_text(APP)
    return analyze_file(path)


def test_path_frequencies_follow_the_state_the_requests_leave(app):
    # set a; get a (store hit -> cached); get a (cache hit); get b (miss); bogus; boom (the app raises)
    requests = [b"set a 1", b"get a", b"get a", b"get b", b"bogus", b"boom"]
    found = profile_handler(app, requests)
    counts = {p.index: p.count for p in found.paths}
    by_end = {p.end_line: p.index for p in app.paths}
    lines = APP.splitlines()
    end = {text: next(i for i, line in enumerate(lines, 1) if text in line) for text in
           ('b"HIT "', 'b"END"', 'b"VALUE "', 'b"STORED"', 'b"ERROR"')}
    assert counts[by_end[end['b"STORED"']]] == 1 and counts[by_end[end['b"VALUE "']]] == 1
    assert counts[by_end[end['b"HIT "']]] == 1 and counts[by_end[end['b"END"']]] == 1
    assert counts[by_end[end['b"ERROR"']]] == 1
    assert found.unmatched == 1 and found.requests == 6  # the raising request is no path of ours
    assert all(p.user_ns > 0 for p in found.paths if p.count)
    assert sum(p.share for p in found.paths) == pytest.approx(5 / 6)


def test_a_loop_inside_a_path_is_one_step(app):
    found = profile_handler(app, [b"set k v"] * 3)
    assert found.unmatched == 0 and max(p.count for p in found.paths) == 3


def test_traces_from_a_requests_file_and_a_pcap(tmp_path):
    reqs = tmp_path / "reqs.txt"
    reqs.write_text("# a comment\n" + b"get a".hex() + "\n\n" + b"set a 1".hex() + "  # inline\n")
    assert read_trace(reqs, 11211) == [b"get a", b"set a 1"]
    cap = tmp_path / "trace.pcap"
    cap.write_bytes(pcap([frame(b"get a", 11211), frame(b"other", 53), frame(b"set b 2", 11211)]))
    assert read_trace(cap, 11211) == [b"get a", b"set b 2"]
    assert read_trace(cap, None) == [b"get a", b"other", b"set b 2"]


@pytest.mark.parametrize("content, message", [
    ("zz\n", "not a hex request"),
])
def test_bad_traces(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(PartitionError, match=message):
        read_trace(path, None)
    with pytest.raises(PartitionError, match="truncated record"):
        pcap_payloads(pcap([frame(b"x", 1)])[:-3], None)
    with pytest.raises(PartitionError, match="No such file"):
        read_trace(tmp_path / "missing.pcap", None)
