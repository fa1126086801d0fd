"""`bpforge run`: every engine on the same input gives the same answer; maps in and out; bad input."""

import json
import subprocess
import sys

import pytest

from conftest import EXAMPLES

BPFORGE = [sys.executable, "-m", "bpforge.cli"]
SUM = "r0 = 0\nloop:\nif r2 == 0 goto done\nr3 = *(u8 *)(r1 + 0)\nr0 += r3\nr1 += 1\nr2 -= 1\ngoto loop\ndone:\nexit\n"
IPV4_TCP = ("000000000000" "020000000001" "0800" "4500003200010000400600000a0000020a000001"
            "3039005000000001000000005002200000000000" + "00" * 10)


def bpforge(*args, check=True):
    result = subprocess.run([*BPFORGE, *map(str, args)], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("engine", ["fast", "interp"])
def test_run_mem_program(tmp_path, engine):
    src = tmp_path / "sum.s"
    src.write_text(SUM)
    out = json.loads(bpforge("run", src, "--type", "mem", "--data", "01020304", "--engine", engine, "--json").stdout)
    assert out["retval"] == 10 and out["data_out"] == "01020304" and out["engine"] == engine
    assert out["ns_per_run"] > 0


def test_engines_agree_on_an_example(kernel):
    path = EXAMPLES / "obj" / "xdp_counter.o"
    outs = [json.loads(bpforge("run", path, "--data", IPV4_TCP, "--engine", e, "--dump-maps", "--json").stdout)
            for e in ("fast", "interp", "kernel")]
    assert len({(o["retval"], o["data_out"]) for o in outs}) == 1
    size_hist = [[m for m in o["maps"] if m["name"] == "size_hist"][0]["entries"] for o in outs]
    assert size_hist[0] == size_hist[1] == size_hist[2]


def test_map_preload_and_dump(tmp_path):
    src = tmp_path / "m.s"
    src.write_text("r0 = 0\nexit\n")
    path = EXAMPLES / "obj" / "xdp_counter.o"
    preload = tmp_path / "hist.json"
    preload.write_text(json.dumps([{"key": "03000000", "value": "2a00000000000000"}]))
    out = json.loads(bpforge("run", path, "--data", IPV4_TCP, "--map", f"size_hist={preload}", "--dump-maps",
                             "--json").stdout)
    entries = {e["key"]: e["value"] for m in out["maps"] if m["name"] == "size_hist" for e in m["entries"]}
    assert entries["03000000"] != "0000000000000000"


@pytest.mark.parametrize("args, words", [
    (["--type", "mem"], "exactly one of --data"),
    (["--type", "mem", "--data", "zz"], "hex"),
    (["--type", "mem", "--data", "00", "--engine", "gpu"], "unknown engine"),
    (["--type", "mem", "--data", "00", "--map", "nomap"], "NAME=FILE"),
])
def test_run_bad_input(tmp_path, args, words):
    src = tmp_path / "sum.s"
    src.write_text(SUM)
    result = bpforge("run", src, *args, check=False)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_runtime_fault_is_one_line(tmp_path):
    src = tmp_path / "oob.s"
    src.write_text("r0 = *(u64 *)(r1 + 100)\nexit\n")
    result = bpforge("run", src, "--type", "mem", "--data", "00", check=False)
    assert result.returncode == 2 and "insn 0" in result.stderr and "memory" in result.stderr
