"""Where the search runs (opt.backends): this process, local worker processes and a local Ray instance of 2
workers give results of one kind (proved improvements of the windows they were given), a unit whose worker
dies costs that unit only, the stop reaches the workers, and `optimize --ray` ends in a proved program the
kernel accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import bpforge
from bpforge.formats import load_program
from bpforge.isa.asm import assemble
from bpforge.kernel import kernel_available
from bpforge.opt.backends import Here, Lost, Processes, make_backend
from bpforge.opt.passes import ProgramView
from bpforge.opt.searching import Found, run_search, units_of, window_jobs
from bpforge.opt.smt.equiv import PROVED, prove_equivalent

from conftest import EXAMPLES

NO_KERNEL = kernel_available()
XDP_COUNTER = EXAMPLES / "obj" / "xdp_counter.o"
# Two windows with a known improvement each: a zero stored through a register, and a copy through r2.
PROGRAM = """r1 = 0
*(u32 *)(r10 - 4) = r1
r0 = *(u32 *)(r10 - 4)
r2 = r0
r2 += 1
r0 = r2
exit
"""


def jobs_of(text: str):
    insns = assemble(text)
    return window_jobs(ProgramView(insns, (), "xdp"))


def square(unit, stop):  # a unit of work for the backends' own tests: top level, so workers can import it
    return unit * unit


def wait_for_stop(unit, stop):
    while not stop():
        time.sleep(0.01)
    return unit


def exit_on_three(unit, stop):
    if unit == 3:
        os._exit(1)  # the worker dies without a word, as a killed machine would
    return unit


def assert_proved(found: list[Found]) -> None:
    for f in found:
        proof = prove_equivalent(f.job.window, f.best, dict(f.job.live_out), dict(f.job.assumes),
                                 contexts=f.job.contexts, regions=dict(f.job.regions))
        assert proof.status == PROVED, (f.job.window, f.best)


# ---- units and local backends ----------------------------------------------------------------------------------

def test_units_depend_on_the_windows_and_the_worker_count_only():
    jobs = jobs_of(PROGRAM)
    assert len(jobs) >= 2
    a = units_of(jobs, seconds=4, workers=2, seed=7, prog_type="xdp", cost="size", timeout_ms=2000)
    b = units_of(jobs, seconds=4, workers=2, seed=7, prog_type="xdp", cost="size", timeout_ms=2000)
    assert a == b
    assert [u.chain for u in a] == [n % 2 for n in range(len(jobs))]
    assert len({u.seed for u in a}) == len(a)
    assert sum(u.seconds for u in a) == pytest.approx(4 * 2)  # two chains at once, 4 s each


def test_here_and_processes_run_every_unit():
    for backend in (Here(), Processes(2)):
        try:
            got = dict(backend.run(square, [1, 2, 3, 4], stop=lambda: False, deadline=time.monotonic() + 60))
        finally:
            backend.close()
        assert got == {0: 1, 1: 4, 2: 9, 3: 16}


def test_the_stop_reaches_worker_processes():
    backend = Processes(2)
    asked = time.monotonic() + 0.5
    try:  # without the stop the units would run to the deadline's backstop and come back Lost
        got = dict(backend.run(wait_for_stop, [5, 6], stop=lambda: time.monotonic() >= asked,
                               deadline=time.monotonic() + 120))
    finally:
        backend.close()
    assert got == {0: 5, 1: 6}


def test_a_unit_whose_worker_process_dies_is_lost_alone():
    backend = Processes(2)
    try:
        got = dict(backend.run(exit_on_three, [1, 2, 3, 4], stop=lambda: False, deadline=time.monotonic() + 3))
        assert isinstance(got.pop(2), Lost)
        assert got == {0: 1, 1: 2, 3: 4}
        assert dict(backend.run(square, [5], stop=lambda: False, deadline=time.monotonic() + 60)) == {0: 25}
    finally:
        backend.close()


def assert_the_search_finds_proved_improvements_on(backend) -> None:
    pytest.importorskip("z3")
    try:
        searched = run_search(jobs_of(PROGRAM), seconds=6, backend=backend, seed=0, prog_type="xdp", cost="size",
                              timeout_ms=2000, stop=lambda: False)
    finally:
        backend.close()
    assert searched.found and not searched.lost
    assert_proved(searched.found)


def test_the_search_in_worker_processes_finds_proved_improvements():
    assert_the_search_finds_proved_improvements_on(make_backend(jobs=2))


# ---- a local Ray instance of 2 workers ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'bpforge[ray]')")
    # the workers cannot import this test module: its units of work travel by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    context = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 << 20, log_to_driver=False,
                       configure_logging=False)
    try:
        yield context.address_info["address"]
    finally:
        ray.shutdown()


def test_ray_runs_every_unit_on_two_workers(ray_address):
    backend = make_backend(ray="auto")
    try:
        assert backend.workers == 2
        got = dict(backend.run(square, [1, 2, 3, 4], stop=lambda: False, deadline=time.monotonic() + 120))
    finally:
        backend.close()
    assert got == {0: 1, 1: 4, 2: 9, 3: 16}


def test_a_ray_task_whose_worker_dies_is_lost_alone(ray_address):
    backend = make_backend(ray="auto")
    try:
        got = dict(backend.run(exit_on_three, [1, 2, 3, 4], stop=lambda: False, deadline=time.monotonic() + 120))
    finally:
        backend.close()
    assert isinstance(got.pop(2), Lost)
    assert got == {0: 1, 1: 2, 3: 4}


def test_the_stop_reaches_ray_tasks(ray_address):
    backend = make_backend(ray="auto")
    asked = time.monotonic() + 1.0
    try:
        got = dict(backend.run(wait_for_stop, [5, 6], stop=lambda: time.monotonic() >= asked,
                               deadline=time.monotonic() + 120))
    finally:
        backend.close()
    assert got == {0: 5, 1: 6}


def test_the_search_on_ray_finds_proved_improvements(ray_address):
    assert_the_search_finds_proved_improvements_on(make_backend(ray="auto"))


def test_optimize_on_ray_is_proved_and_the_kernel_accepts_it(ray_address, tmp_path):
    pytest.importorskip("z3")
    out = tmp_path / "out.o"
    report = bpforge.optimize(XDP_COUNTER, output=out, budget=8, ray="auto")
    passes_only = bpforge.optimize(XDP_COUNTER, budget=8, search=False)
    assert report.as_json()["searched_on"] == "Ray cluster (2 CPUs)"
    assert report.equivalent == "proved" and report.after <= passes_only.after < report.before
    assert bpforge.load(out).verify().verdict == "accept"
    if NO_KERNEL is None:
        assert report.kernel_accepted is True


def test_cli_optimize_joins_a_running_cluster_by_address(ray_address, tmp_path):
    pytest.importorskip("z3")
    out = tmp_path / "out.o"
    done = subprocess.run([sys.executable, "-m", "bpforge", "optimize", str(XDP_COUNTER), "-o", str(out),
                           "--budget", "6", "--ray", ray_address, "--json"], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["searched_on"] == "Ray cluster (2 CPUs)" and report["equivalent"] == "proved"
    assert report["after"] < report["before"]
    if NO_KERNEL is None:
        assert report["kernel_accepted"] is True
    assert load_program(out).insns and bpforge.load(out).verify().verdict == "accept"


def test_cli_ray_at_a_bad_address_is_one_line_exit_2(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'bpforge[ray]')")
    done = subprocess.run([sys.executable, "-m", "bpforge", "optimize", str(XDP_COUNTER), "--budget", "2",
                           "--ray", "127.0.0.1:9"], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--ray 127.0.0.1:9" in lines[0] and "Traceback" not in done.stderr


def test_a_fleet_on_ray_is_optimized_with_one_cluster(ray_address, tmp_path):
    pytest.importorskip("z3")
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    for name in ("xdp_counter.o", "asm_xdp_pass.o"):
        (fleet / name).symlink_to(EXAMPLES / "obj" / name)
    summary = bpforge.optimize_many(fleet, tmp_path / "out", budget=3, ray="auto", kernel=NO_KERNEL is None,
                                    rules_store=tmp_path / "rules.sqlite")
    assert [row.status for row in summary.rows] == ["done", "done"]
    assert all(row.equivalent in (None, "proved") for row in summary.rows)
    assert bpforge.load(tmp_path / "out" / "xdp_counter.o").verify().verdict == "accept"
