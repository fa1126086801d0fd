"""The command line on hostile or unusual input: every failure is one `bpforge: ...` line with exit code 2
(never a traceback, a hang or a box), usage errors included; `run` takes --repeat as the kernel does and
bounds its work; JSON has one shape for every engine; the userspace convention returns all of r0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from conftest import tool

BPFORGE = [sys.executable, "-m", "bpforge.cli"]
FRAME = "00" * 60


def bpforge(*args, timeout: float = 120, stdout=subprocess.PIPE):
    return subprocess.run([*BPFORGE, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)


def one_line_error(result, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpforge: ") and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def prog(tmp_path):
    path = tmp_path / "p.s"
    path.write_text("r0 = 2\nexit\n")
    return path


def test_bare_command_prints_help():
    result = bpforge()
    assert result.returncode == 0 and "Usage" in result.stdout and result.stderr == ""


@pytest.mark.parametrize("args, words", [
    (["frob"], ["No such command 'frob'", "bpforge --help"]),
    (["run", "{prog}", "--bogus"], ["No such option: --bogus", "bpforge run --help"]),
    (["run"], ["Missing argument 'PROG'"]),
    (["run", "{prog}", "--data", FRAME, "--repeat", "abc"], ["--repeat"]),
    (["run", "{prog}", "--data", FRAME, "--repeat", "1.5"], ["--repeat"]),
    (["run", "{prog}", "--data", FRAME, "--repeat", "4294967296"], ["between 1 and 4294967295"]),
    (["run", "{prog}", "--data", FRAME, "--repeat", "0"], ["between 1 and 4294967295"]),
    (["run", "{prog}", "--data", FRAME, "--budget", "-1"], ["--budget"]),
    (["disasm", "{prog}", "--section"], ["--section"]),
])
def test_usage_errors_are_one_line(prog, args, words):
    one_line_error(bpforge(*[a.format(prog=prog) for a in args]), *words)


def test_data_file_must_be_a_regular_file(prog, tmp_path):
    one_line_error(bpforge("run", prog, "--data-file", "/dev/zero"), "/dev/zero", "regular file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(bpforge("run", prog, "--data-file", fifo, timeout=30), str(fifo), "regular file")
    one_line_error(bpforge("run", prog, "--data-file", tmp_path), "regular file")
    one_line_error(bpforge("run", prog, "--data-file", tmp_path / "none"), "No such file")


def test_full_disk_names_what_could_not_be_written(prog):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        one_line_error(bpforge("disasm", prog, stdout=full), "<stdout>", "No space left")
    one_line_error(bpforge("asm", prog, "-o", "/dev/full"), "/dev/full", "No space left")


def test_broken_pipe_is_not_an_error(tmp_path):
    path = tmp_path / "long.s"
    path.write_text("r0 = 0\n" * 20000 + "exit\n")
    proc = subprocess.Popen([*BPFORGE, "disasm", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0 and b"Traceback" not in proc.stderr.read()


def test_runtime_errors_name_the_file(tmp_path):
    path = tmp_path / "spin.s"
    path.write_text("l:\ngoto l\n")
    one_line_error(bpforge("run", path, "--type", "mem", "--data", "00"), str(path), "insn 0", "budget")


# ---- run ---------------------------------------------------------------------------------------------------

def test_mem_programs_return_all_of_r0(tmp_path):
    path = tmp_path / "wide.s"
    path.write_text("r0 = 0x1122334455667788 ll\nexit\n")
    for engine in ("fast", "interp"):
        out = json.loads(bpforge("run", path, "--type", "mem", "--data", "00", "--engine", engine, "--json").stdout)
        assert out["retval"] == 0x1122334455667788
    out = json.loads(bpforge("run", path, "--type", "xdp", "--data", FRAME, "--json").stdout)
    assert out["retval"] == 0x55667788  # kernel program types report test_run's 32-bit retval


def test_json_has_one_shape_for_every_engine(prog, kernel):
    shapes = set()
    for engine in ("fast", "interp", "kernel"):
        out = json.loads(bpforge("run", prog, "--type", "xdp", "--data", FRAME, "--engine", engine, "--json").stdout)
        shapes.add(tuple(sorted(out)))
        assert out["ctx_out"] is None and out["maps"] == [] and out["repeat"] == 1
    assert len(shapes) == 1
    tc = [json.loads(bpforge("run", prog, "--type", "sched_cls", "--data", FRAME, "--engine", e, "--json").stdout)
          for e in ("fast", "kernel")]
    assert tc[0]["ctx_out"] == tc[1]["ctx_out"] is not None


def test_repeat_loop_obeys_the_budget(prog):
    result = bpforge("run", prog, "--type", "xdp", "--data", FRAME, "--repeat", "4294967295", "--budget", "0.5",
                     "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["stopped"] == "budget" and 0 < out["repeat"] < out["requested_repeat"] == 4294967295
    assert len(result.stderr.strip().splitlines()) == 1 and "stopped after" in result.stderr


def test_one_shot_types_take_no_repeat(tmp_path):
    path = tmp_path / "s.s"
    path.write_text("r0 = 0\nexit\n")
    one_line_error(bpforge("run", path, "--type", "syscall", "--data", "", "--repeat", "2"), "run once")


TAIL_CALL = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int target(struct xdp_md *ctx) { return 42; }
struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(max_entries, 4);
    __uint(key_size, sizeof(__u32));
    __array(values, int (void *));
} jmp SEC(".maps") = { .values = { [2] = (void *)&target } };
SEC("xdp") int entry(struct xdp_md *ctx) { bpf_tail_call(ctx, &jmp, 2); return 1; }
char _license[] SEC("license") = "GPL";
"""


def test_prog_array_slots_from_the_object(tmp_path):
    """`.values = { [2] = &target }` fills the prog array before the run, as libbpf does: the tail call is
    taken (42), in every engine."""
    import sysconfig

    from bpforge.kernel import kernel_available

    src, obj = tmp_path / "tail.c", tmp_path / "tail.o"
    src.write_text(TAIL_CALL)
    arch = f"/usr/include/{sysconfig.get_config_var('MULTIARCH') or 'x86_64-linux-gnu'}"
    subprocess.run([tool("clang-19"), "-O2", "-g", "-target", "bpf", f"-I{arch}", "-c", src, "-o", obj], check=True)
    engines = ["interp", "fast"] + (["kernel"] if kernel_available() is None else [])
    for engine in engines:
        out = bpforge("run", obj, "-s", "entry", "--data", FRAME, "--engine", engine, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["retval"] == 42, engine


def test_interrupt_keeps_the_runs_done(prog):
    """Ctrl-C during a long repeat loop reports the runs done so far (exit 0), not a traceback."""
    import signal

    proc = subprocess.Popen([*BPFORGE, "run", str(prog), "--type", "xdp", "--data", FRAME, "--repeat", "100000000",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(5.0, proc.send_signal, (signal.SIGINT,))
    timer.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        timer.cancel()
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["stopped"] == "interrupted" and 0 < report["repeat"] < 100000000


MAP_IN_MAP = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct inner { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, __u32); };
struct inner inner_a SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
    __uint(max_entries, 2);
    __type(key, __u32);
    __array(values, struct inner);
} outer SEC(".maps") = { .values = { [1] = &inner_a } };
SEC("xdp") int entry(struct xdp_md *ctx)
{
    __u32 one = 1, zero = 0;
    void *map = bpf_map_lookup_elem(&outer, &one);
    if (!map)
        return 1;
    __u32 *value = bpf_map_lookup_elem(map, &zero);
    return value ? *value + 5 : 3;
}
char _license[] SEC("license") = "GPL";
"""


def test_map_in_map_slots_from_the_object(tmp_path):
    import sysconfig

    from bpforge.kernel import kernel_available

    src, obj = tmp_path / "mim.c", tmp_path / "mim.o"
    src.write_text(MAP_IN_MAP)
    arch = f"/usr/include/{sysconfig.get_config_var('MULTIARCH') or 'x86_64-linux-gnu'}"
    subprocess.run([tool("clang-19"), "-O2", "-g", "-target", "bpf", f"-I{arch}", "-c", src, "-o", obj], check=True)
    for engine in ["interp", "fast"] + (["kernel"] if kernel_available() is None else []):
        out = bpforge("run", obj, "--data", FRAME, "--engine", engine, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["retval"] == 5, engine


def test_deeply_nested_map_file_is_bad_input(prog, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    one_line_error(bpforge("run", prog, "--type", "xdp", "--data", FRAME, "--map", f"m={deep}"), str(deep))
