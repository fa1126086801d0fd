"""Shared test fixtures: the examples corpus, external tools and the kernel oracle (each skips with a reason)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXAMPLE_OBJECTS = sorted((EXAMPLES / "obj").glob("*.o"))


def tool(name: str) -> str:
    """Path of an external tool, or skip the test saying which one is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (make test installs it)")
    return path


@pytest.fixture(scope="session")
def kernel():
    """The running kernel's bpf(); skips where it cannot be used."""
    from bpforge.kernel import kernel_available

    reason = kernel_available()
    if reason is not None:
        pytest.skip(reason)
    from bpforge import kernel as module

    return module

from hypothesis import settings  # noqa: E402

# HYPOTHESIS_PROFILE=deep runs the property tests much longer than CI does.
settings.register_profile("ci", deadline=None)
settings.register_profile("deep", deadline=None, max_examples=5000)
settings.load_profile(__import__("os").environ.get("HYPOTHESIS_PROFILE", "ci"))
