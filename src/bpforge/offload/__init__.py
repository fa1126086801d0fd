"""Offload to devices: capability profiles (`profile`, data files in `profiles/`), the offloadability
check with its reasons (`check`), loading and running on an emulated device with map placement and cycle
costs (`device`), multi-stage processing with host fallback (`stage`), and bpftool-style introspection
(`introspect`)."""

import sys
import types


class _Package(types.ModuleType):
    """The package and the handler marker share a name: once `bpforge.offload` (this package) is imported,
    the attribute `bpforge.offload` is the package, so the package itself marks handlers when called,
    `@bpforge.offload(hook="xdp", port=11211)`, as `partition.runtime.offload` does."""

    def __call__(self, hook: str = "xdp", *, port: int | None = None):
        from ..partition.runtime import offload  # the same layer; partition.runtime imports nothing of offload

        return offload(hook, port=port)


sys.modules[__name__].__class__ = _Package
