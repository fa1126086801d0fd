"""`bpforge partition run DIR --dev IFACE`: deploy a partition written by `bpforge partition`.

In this process: the application is imported from its source, the BPF half is loaded into the kernel
with its maps, the application's typed maps are backed by those kernel maps (what they held is carried
over), the handler is made to dispatch to the user half (resume.install), the program is attached to
IFACE, and the application's own `main(argv)` runs — its socket loop, unchanged. When main returns (or
on Ctrl-C / SIGTERM) the program is detached and everything closed.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .analyze import PartitionError
from .profile import load_module
from .resume import Dispatcher, install
from .runtime import Struct, _TypedMap


@dataclass
class Deployment:
    """A loaded partition: the application module (its handler dispatching), the kernel program and maps."""

    module: Any
    program: Any  # kernel.KernelProgram
    dispatcher: Dispatcher
    meta: dict


def read_meta(directory: str | Path) -> dict:
    path = Path(directory) / "partition.json"
    try:
        meta = json.loads(path.read_text())
    except OSError as err:
        raise PartitionError(f"{path}: {err.strerror or err} (write it with bpforge partition APP.py -o DIR)") from None
    except json.JSONDecodeError as err:
        raise PartitionError(f"{path}: not a partition description ({err.msg})") from None
    if meta.get("version") != 1:
        raise PartitionError(f"{path}: unknown version {meta.get('version')!r}")
    return meta


def load_partition(directory: str | Path, stack: ExitStack) -> Deployment:
    """Load DIR's halves into this process and the kernel (closed by `stack`), not attached yet."""
    from .. import kernel
    from ..elf import read_object

    directory = Path(directory)
    meta = read_meta(directory)
    app = Path(meta["app"])
    try:
        text = app.read_text(encoding="utf-8")
    except OSError as err:
        raise PartitionError(f"{app}: {err.strerror or err}") from None
    module = load_module(text, str(app), None)
    namespace = vars(module)
    obj = read_object(directory / "xdp.o")
    program = stack.enter_context(kernel.load_linked(obj.linked(), obj, log_level=0))
    for py_name, kernel_name in meta["map_names"].items():
        typed = namespace.get(py_name)
        if not isinstance(typed, _TypedMap):
            raise PartitionError(f"{app}: {py_name} is no longer a typed map (partition again)")
        typed.attach(program.maps[kernel_name])
        stack.callback(typed.detach)
    sync = program.maps.get("pt_sync")  # absent (clang drops it) when no map needs coordinating

    def finished(index: int, count: int) -> None:
        if sync is None:
            raise PartitionError("a datagram counted in a pending counter, but the BPF half has none")
        sync.update(struct.pack("<I", index + 1), struct.pack("<Q", count))

    kinds = {p["point"]: [_field_kind(namespace, spec) for _, spec in p["live"]] for p in meta["report"]["points"]}
    nonce = bytes.fromhex(meta["nonce"])
    holder: dict = {}

    def make(original, resumes):
        holder["d"] = Dispatcher(original, resumes, nonce, kinds, finished)
        return holder["d"]

    install(namespace, meta["handler"], (directory / "user.py").read_text(), str(directory / "user.py"), make)
    return Deployment(module, program, holder["d"], meta)


XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3


def exchange(deployment: Deployment, payload: bytes, *, port: int | None = None) -> tuple[str, bytes | None]:
    """One datagram through both halves without a network: the BPF half by BPF_PROG_TEST_RUN on a frame
    carrying `payload`, then, when it passes the frame up, the user half on what the socket would read.
    (where: "bpf" or "user", the reply or None)."""
    from .build import udp_frame

    port = port or deployment.meta["report"]["port"]
    result = deployment.program.test_run(udp_frame(payload, port))
    if result.retval == XDP_TX:
        return "bpf", result.data_out[42:]
    if result.retval == XDP_DROP:
        return "bpf", None
    if result.retval != XDP_PASS:
        raise PartitionError(f"the BPF half returned {result.retval} for {payload[:40]!r}")
    ihl = (result.data_out[14] & 15) * 4
    return "user", getattr(deployment.module, deployment.meta["handler"])(result.data_out[14 + ihl + 8:])


def _field_kind(namespace: dict, spec: Any) -> tuple[str, Any]:
    """partition.json's record of a live variable's kind as (kind, descriptor) for read_trailer."""
    if isinstance(spec, str):
        return spec, None
    if spec[0] == "struct":
        found = [v for v in namespace.values() if isinstance(v, Struct) and v.name == spec[1]]
        if not found:
            raise PartitionError(f"the application no longer declares struct {spec[1]} (partition again)")
        return "struct", found[0]
    return "opt", _field_kind(namespace, spec[1])


def run_partition(directory: str | Path, dev: str, argv: list[str], *, mode: str = "native") -> int:
    """Deploy and run until the application's main returns (see the module docstring)."""
    from ..kernel.objects import attach_xdp

    with ExitStack() as stack:
        deployment = load_partition(directory, stack)
        main = getattr(deployment.module, "main", None)
        if not callable(main):
            raise PartitionError(f"{deployment.meta['app']}: no main(argv) to run the application with")
        try:
            ifindex = socket.if_nametoindex(dev)
        except OSError:
            raise PartitionError(f"no network interface {dev!r}") from None
        stack.enter_context(attach_xdp(deployment.program.fd, ifindex, mode))
        try:
            return int(main(argv) or 0)
        except KeyboardInterrupt:
            return 0
        finally:
            counts = deployment.dispatcher.counts
            print(f"bpforge partition: the user half answered {counts['resumed']} resumed, {counts['restart']} "
                  f"restarted and {counts['untagged']} untagged datagrams", file=sys.stderr, flush=True)


__all__ = ["Deployment", "exchange", "load_partition", "read_meta", "run_partition"]
