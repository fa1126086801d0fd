"""A network lab for running a partitioned server on real traffic: two network namespaces joined by a
veth pair (the server's end and the clients' end), XDP programs attached to either end through BPF links,
maps pinned in a bpffs directory, and processes started inside a namespace; `Lab` is a context manager
that removes everything it made, in reverse order, however the block ends (an error, Ctrl-C).

Two namespaces rather than the root one: nothing on the host changes (no addresses, routes or firewall
rules of its own get in the way), and the fixed addresses below cannot collide with anything, so only the
namespace names must be unique per run (they carry the pid and a counter). One receive queue per veth end
(the default): datagrams of one client stay in order through XDP and into the server's socket, which the
hand-written split's coordination relies on.

XDP_TX on a veth sends the frame to the peer, which takes it only with NAPI running there: when the peer
has an XDP program itself or GRO on (drivers/net/veth.c: the peer's rq must have xdp or napi enabled).
`Lab(peer_xdp=True)` (the default) attaches an XDP_PASS program at the client end, which works; `gro=True`
turns GRO on there (ETHTOOL_SGRO) but is not relied on: on the 6.18 kernel we run, XDP_TX replies were
then lost before the client's IP layer while the XDP_PASS peer delivered them.

Processes run in a namespace through a small Python stub doing setns(CLONE_NEWNET) and exec, not `ip netns
exec`, which remounts /sys and with it hides /sys/fs/bpf, where the pins are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import itertools
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import BpforgeError

NETNS_DIR = "/run/netns"
BPFFS = "/sys/fs/bpf"
PREFIX = "bpfg"  # every namespace and pin directory a lab makes starts with it (see sweep())
SERVER_IP, CLIENT_IP, PREFIX_LEN = "10.11.0.1", "10.11.0.2", 24
SERVER_DEV, CLIENT_DEV = "veth-srv", "veth-cli"
CLONE_NEWNET = 0x40000000
_SIOCETHTOOL, _ETHTOOL_SGRO = 0x8946, 0x2C
# Runs argv[2:] in the network namespace file argv[1] (and nothing else changes: mounts stay).
_NSEXEC = ("import ctypes,os,sys\n"
           "fd=os.open(sys.argv[1],os.O_RDONLY)\n"
           "if ctypes.CDLL(None,use_errno=True).setns(fd,0x40000000):\n"
           " e=ctypes.get_errno();raise OSError(e,'setns '+sys.argv[1]+': '+os.strerror(e))\n"
           "os.close(fd);os.execvp(sys.argv[2],sys.argv[2:])\n")
_counter = itertools.count()


class NetlabError(BpforgeError):
    """The lab could not be set up or a process in it misbehaved (the message says which step)."""


def lab_unavailable() -> str | None:
    """None when labs can be made here, else why not (for tests to skip with)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    name = f"{PREFIX}probe{os.getpid()}"
    try:
        run(["ip", "netns", "add", name])
    except NetlabError as err:
        return f"cannot create a network namespace: {err.message}"
    run(["ip", "netns", "del", name], check=False)
    return None


def run(argv: Sequence[str], *, check: bool = True) -> str:
    """Run a set-up command; its stdout. NetlabError with its stderr when it fails (and `check`)."""
    result = subprocess.run(list(argv), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NetlabError(f"{' '.join(argv)}: {result.stderr.strip() or f'exit {result.returncode}'}")
    return result.stdout


# ---- namespaces ---------------------------------------------------------------------------------------

def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetlabError(f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with the calling thread in network namespace `name` (other threads stay where they
    are): sockets made and interfaces named in it belong to that namespace, and stay there afterwards."""
    mine = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(mine)
    finally:
        os.close(mine)


def sweep() -> list[str]:
    """Delete the namespaces and pin directories that labs of processes no longer alive left behind (a
    run killed with SIGKILL cannot clean up); what was removed."""
    removed = []
    for directory, remove in ((NETNS_DIR, lambda p: run(["ip", "netns", "del", os.path.basename(p)], check=False)),
                              (BPFFS, lambda p: shutil.rmtree(p, ignore_errors=True))):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            parts = name.split("-")
            if name.startswith(PREFIX + "-") and len(parts) > 2 and parts[2].isdigit() and \
                    not _alive(int(parts[2])):
                remove(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def set_gro(dev: str, on: bool) -> None:
    """GRO on or off for `dev` of the calling thread's namespace (ETHTOOL_SGRO, as `ethtool -K DEV gro`)."""
    value = ctypes.create_string_buffer(struct.pack("II", _ETHTOOL_SGRO, int(on)), 8)
    ifreq = struct.pack("16sP16x", dev.encode(), ctypes.addressof(value))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
        except OSError as err:
            raise NetlabError(f"cannot set GRO {'on' if on else 'off'} on {dev}: {os.strerror(err.errno)}") from None


# ---- processes in a namespace --------------------------------------------------------------------------

@dataclass(eq=False)
class Process:
    """A process the lab started in a namespace. Its stderr goes to `log_path`."""

    argv: list[str]
    popen: subprocess.Popen
    log_path: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` seconds; the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return self.popen.returncode


def _wait_ready(process: Process, ready: str, timeout: float) -> None:
    """Read the process's stdout until a line containing `ready` (servers print one when they listen)."""
    stream = process.popen.stdout
    deadline = time.monotonic() + timeout
    seen = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise NetlabError(f"{process.argv[0]}: not ready after {timeout:g} s; stderr: {process.log()[-2000:]}")
        readable, _, _ = select.select([stream], [], [], left)
        if not readable:
            continue
        chunk = os.read(stream.fileno(), 4096)
        if not chunk:
            status = process.popen.wait()
            raise NetlabError(f"{' '.join(process.argv)}: exited with {status} before it was ready; stderr: "
                              f"{process.log()[-2000:]}")
        seen += chunk
        if ready.encode() in seen:
            return


# ---- the lab ----------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Lab:
    """Two namespaces (`server_ns`, `client_ns`) and a veth pair between them: SERVER_DEV at SERVER_IP in
    the first, CLIENT_DEV at CLIENT_IP in the second, both up. Use it as a context manager; everything it
    made is undone on exit, and on an error while it is being made."""

    tag: str = "lab"
    gro: bool = False
    peer_xdp: bool = True
    server_ns: str = field(init=False)
    client_ns: str = field(init=False)
    server_ip: str = SERVER_IP
    client_ip: str = CLIENT_IP
    server_dev: str = SERVER_DEV
    client_dev: str = CLIENT_DEV
    _undo: list[tuple[str, Callable[[], Any]]] = field(default_factory=list, repr=False)
    _workdir: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if not self.tag.isalnum():
            raise NetlabError(f"a lab's tag is letters and digits, not {self.tag!r}")
        base = f"{PREFIX}-{self.tag}-{os.getpid()}-{next(_counter)}"
        self.server_ns, self.client_ns = f"{base}-s", f"{base}-c"

    # ---- lifetime ---------------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        self._workdir = tempfile.mkdtemp(prefix=f"{PREFIX}-{self.tag}-")
        self._on_close("work directory", lambda: shutil.rmtree(self._workdir, ignore_errors=True))
        for ns in (self.server_ns, self.client_ns):
            run(["ip", "netns", "add", ns])
            # Deleting a namespace also deletes the veth end in it, and with it the pair.
            self._on_close(f"namespace {ns}", lambda ns=ns: run(["ip", "netns", "del", ns], check=False))
        run(["ip", "-n", self.server_ns, "link", "add", self.server_dev, "type", "veth", "peer", "name",
             self.client_dev, "netns", self.client_ns])
        for ns, dev, addr in ((self.server_ns, self.server_dev, self.server_ip),
                              (self.client_ns, self.client_dev, self.client_ip)):
            run(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev])
            run(["ip", "-n", ns, "link", "set", "dev", dev, "up"])
            run(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])
        if self.gro:
            with in_netns(self.client_ns):
                set_gro(self.client_dev, True)
        if self.peer_xdp:
            self._attach_pass(self.client_ns, self.client_dev)

    def close(self) -> None:
        """Undo everything, last made first; every step runs even when one before it fails."""
        failures = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as err:  # keep going: the rest must still be removed
                failures.append(f"{what}: {err}")
        if failures:
            raise NetlabError("lab clean-up failed: " + "; ".join(failures))

    def _on_close(self, what: str, undo: Callable[[], Any]) -> None:
        self._undo.append((what, undo))

    # ---- XDP and maps -----------------------------------------------------------------------------------

    def attach_xdp(self, prog_fd: int, *, side: str = "server", mode: str = "native"):
        """Attach the XDP program `prog_fd` to the server's (or the client's) veth end through a BPF link;
        detached when the lab closes. The kernel.objects.XdpLink."""
        from ..kernel.objects import attach_xdp

        ns, dev = self._side(side)
        with in_netns(ns):
            link = attach_xdp(prog_fd, socket.if_nametoindex(dev), mode)
        self._on_close(f"XDP link on {dev}", link.close)
        return link

    def _attach_pass(self, ns: str, dev: str) -> None:
        from ..kernel.syscall import prog_load

        result = prog_load(bytes.fromhex("b700000002000000" "9500000000000000"), "xdp", log_level=0)  # XDP_PASS
        if result.fd is None:
            raise NetlabError(f"cannot load an XDP_PASS program for {dev}: errno {result.errno}")
        self._on_close("XDP_PASS program", lambda: os.close(result.fd))
        self.attach_xdp(result.fd, side="client" if ns == self.client_ns else "server")

    def pin_maps(self, maps: Mapping[str, Any]) -> str:
        """Pin each map (name -> an object with an `fd`) in a new bpffs directory, removed when the lab
        closes; the directory."""
        from ..kernel.objects import pin

        directory = os.path.join(BPFFS, self.server_ns)
        try:
            os.mkdir(directory)
        except OSError as err:
            raise NetlabError(f"cannot make {directory} (is a bpffs mounted at {BPFFS}?): {os.strerror(err.errno)}") \
                from None
        self._on_close(f"pins in {directory}", lambda: shutil.rmtree(directory, ignore_errors=True))
        for name, kmap in maps.items():
            pin(kmap.fd, os.path.join(directory, name))
        return directory

    # ---- processes and sockets ------------------------------------------------------------------------

    def start(self, argv: Sequence[str], *, side: str = "server", ready: str | None = "listening",
              timeout: float = 15.0, env: Mapping[str, str] | None = None, stdin: bool = False) -> Process:
        """Start `argv` in the server's (or client's) namespace; stopped (SIGTERM, then SIGKILL) when the
        lab closes. With `ready`, wait until its stdout has a line containing it (NetlabError if it exits
        or `timeout` passes first). `stdin`: a pipe to write to (`process.popen.stdin`), else none."""
        ns, _ = self._side(side)
        index = next(_counter)
        log_path = os.path.join(self._workdir or tempfile.gettempdir(), f"process{index}.log")
        with open(log_path, "wb") as log:
            popen = subprocess.Popen([sys.executable, "-c", _NSEXEC, os.path.join(NETNS_DIR, ns), *argv],
                                     stdout=subprocess.PIPE, stderr=log,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     env=None if env is None else {**os.environ, **env})
        process = Process(list(argv), popen, log_path)
        self._on_close(f"process {argv[0]}", process.stop)
        if ready is not None:
            _wait_ready(process, ready, timeout)
        return process

    def socket(self, *, side: str = "client", kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A new IPv4 socket of the client's (or server's) namespace, usable from this process."""
        ns, _ = self._side(side)
        with in_netns(ns):
            return socket.socket(socket.AF_INET, kind)

    def _side(self, side: str) -> tuple[str, str]:
        if side == "server":
            return self.server_ns, self.server_dev
        if side == "client":
            return self.client_ns, self.client_dev
        raise NetlabError(f"a side is 'server' or 'client', not {side!r}")


__all__ = ["BPFFS", "CLIENT_DEV", "CLIENT_IP", "Lab", "NetlabError", "Process", "SERVER_DEV", "SERVER_IP",
           "in_netns", "lab_unavailable", "run", "set_gro", "sweep"]

