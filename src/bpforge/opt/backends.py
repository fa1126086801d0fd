"""Where the search's units of work run: in this process, in a pool of local worker processes, or as tasks
on a Ray cluster. A backend only decides where and how many at once: it runs a picklable function of
(unit, stop) on every unit and hands each result back as it arrives, so a run on a cluster finds the same
kind of results as one here (each proved in the worker, gated and kernel-checked in this process).

A worker never sees SIGINT: the caller's `stop` (Ctrl-C, the budget) reaches the units through an event
(processes) or a flag actor (Ray) that the unit polls, and every unit still returns the best it found. A
unit whose worker dies comes back as `Lost`: it costs that unit alone, never the run.

Ray is an optional extra (`pip install bpforge[ray]`): `RayCluster` imports it when built, and the local
process pool needs nothing beyond the standard library.
"""

from __future__ import annotations

import multiprocessing
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import BpforgeError

Stop = Callable[[], bool]
Work = Callable[[Any, Stop], Any]  # (unit, stop) -> result; top-level (picklable) for the pool and Ray

BACKSTOP_SECONDS = 5.0  # after the deadline, how long units get to notice the stop before the run gives up on them
CONNECT_SECONDS = 10.0  # to find out whether a cluster address answers at all
STOP_POLL_SECONDS = 0.25  # how often a Ray unit asks the flag actor (each ask is a round trip)


@dataclass(frozen=True)
class Lost:
    """A unit that produced nothing: its worker died, or it outran the deadline's backstop."""

    why: str


class Backend(Protocol):
    workers: int  # units that run at once
    where: str  # in words, for the report

    def run(self, work: Work, units: Sequence[Any], *, stop: Stop, deadline: float) -> Iterator[tuple[int, Any]]:
        """(index in `units`, result or `Lost`) for every unit, in the order they finish. Units are asked to stop
        when `stop()` turns true or at `deadline` (time.monotonic())."""
        ...

    def close(self) -> None: ...


class Here:
    """Units one after another in this process."""

    workers = 1
    where = "this process"

    def run(self, work: Work, units: Sequence[Any], *, stop: Stop, deadline: float) -> Iterator[tuple[int, Any]]:
        def stopping() -> bool:
            return stop() or time.monotonic() >= deadline

        for n, unit in enumerate(units):
            yield n, work(unit, stopping)

    def close(self) -> None:
        pass


# ---- local worker processes ------------------------------------------------------------------------------------

_STOP_EVENT = None


def _init_worker(event) -> None:
    global _STOP_EVENT
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STOP_EVENT = event


def _in_worker(work: Work, unit: Any) -> Any:
    return work(unit, _STOP_EVENT.is_set)


class Processes:
    """A pool of `workers` spawned processes, started on first use and kept for the backend's life (each
    search round would otherwise pay for starting them and importing the solver again)."""

    where = "local processes"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._event = self._context.Event()
        self._pool = None

    def run(self, work: Work, units: Sequence[Any], *, stop: Stop, deadline: float) -> Iterator[tuple[int, Any]]:
        if self._pool is None:
            self._pool = self._context.Pool(self.workers, initializer=_init_worker, initargs=(self._event,))
        self._event.clear()
        pending = {n: self._pool.apply_async(_in_worker, (work, unit)) for n, unit in enumerate(units)}
        try:
            while pending:
                if stop() or time.monotonic() >= deadline:
                    self._event.set()
                if time.monotonic() >= deadline + BACKSTOP_SECONDS:
                    for n in list(pending):
                        yield n, Lost("did not stop within the backstop after the deadline")
                    self.close()  # a unit that ignores the stop holds a worker: start afresh next time
                    return
                for n in [n for n, p in pending.items() if p.ready()]:
                    try:
                        result = pending.pop(n).get()
                    except Exception as err:  # the unit raised in the worker: that unit is lost, not the run
                        result = Lost(f"{type(err).__name__}: {err}")
                    yield n, result
                time.sleep(0.02)
        finally:
            self._event.set()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


# ---- Ray -----------------------------------------------------------------------------------------------------------

class RayCluster:
    """Units as Ray tasks, one CPU each, on the cluster at `address` ("auto": the one RAY_ADDRESS or a running
    local instance names, else a new local instance). A task is not retried when its worker dies (by the
    time it ran again its share of the time would be over): the unit comes back `Lost` and the caller may
    give its window another round. Every node needs bpforge installed, as for any Ray job."""

    def __init__(self, address: str = "auto") -> None:
        try:
            import ray
        except ImportError:
            raise BpforgeError("--ray needs Ray: pip install 'bpforge[ray]'") from None
        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            if address != "auto":
                _reachable(address)  # Ray itself retries an unreachable address for minutes
            try:
                ray.init(address=None if address == "auto" else address, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            except Exception as err:  # Ray raises ConnectionError, ValueError, RuntimeError... for a bad address
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise BpforgeError(f"--ray {address}: cannot reach a Ray cluster ({first})") from None
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.where = f"Ray cluster ({self.workers} CPUs)"
        self._flag = ray.remote(num_cpus=0)(_StopFlag).remote()
        self._task = ray.remote(num_cpus=1, max_retries=0)(_in_ray)

    def run(self, work: Work, units: Sequence[Any], *, stop: Stop, deadline: float) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        ray.get(self._flag.clear.remote())
        pending = {self._task.remote(work, unit, self._flag): n for n, unit in enumerate(units)}
        stopped = False
        try:
            while pending:
                if not stopped and (stop() or time.monotonic() >= deadline):
                    self._flag.set.remote()
                    stopped = True
                if time.monotonic() >= deadline + BACKSTOP_SECONDS:
                    for ref, n in list(pending.items()):
                        ray.cancel(ref, force=True)
                        yield n, Lost("did not stop within the backstop after the deadline")
                    return
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.1)
                for ref in done:
                    n = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as err:  # the worker died or the task raised: that unit only
                        result = Lost(_last_words(err))
                    yield n, result
        finally:
            if pending:
                self._flag.set.remote()

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()


def _reachable(address: str) -> None:
    """A one-line error unless something listens at `address` ("[ray://]host:port")."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise BpforgeError(f"--ray {address}: not auto or an address host:port (or ray://host:port)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as err:
        raise BpforgeError(f"--ray {address}: cannot reach a Ray cluster ({err.strerror or err})") from None


def _last_words(err: Exception) -> str:
    """What a Ray error says in one line: its kind and the last line of its text (Ray's own first line is a
    coloured task name, the cause comes last)."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1]}" if lines else type(err).__name__


class _StopFlag:
    """The cluster-wide stop: set by the driver, polled by the tasks."""

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def clear(self) -> None:
        self.value = False

    def is_set(self) -> bool:
        return self.value


def _in_ray(work: Work, unit: Any, flag) -> Any:
    import ray

    asked, last, stopped = None, 0.0, False

    def stop() -> bool:
        """The flag, asked at most every STOP_POLL_SECONDS and never waited for: a task that waits in Ray
        hands its CPU back for the time, and Ray may start another task on it (more chains than CPUs)."""
        nonlocal asked, last, stopped
        now = time.monotonic()
        if stopped or now - last < STOP_POLL_SECONDS:
            return stopped
        last = now
        if asked is None:
            asked = flag.is_set.remote()
        elif ray.wait([asked], timeout=0, fetch_local=False)[0]:
            stopped, asked = ray.get(asked), None
        return stopped

    return work(unit, stop)


def make_backend(jobs: int = 1, ray: str | None = None) -> Backend:
    """The backend for `--jobs` / `--ray`: Ray when an address is given, else processes for jobs > 1, else
    this process."""
    if ray is not None:
        return RayCluster(ray)
    return Processes(jobs) if jobs > 1 else Here()


__all__ = ["Backend", "Here", "Lost", "Processes", "RayCluster", "make_backend"]
