"""Helpers shared by several test areas (fixtures live in conftest.py files and tests/k8s_fixtures.py).

Three ways to wait, kept apart because callers need different things on a timeout:
- `wait_for(predicate, what)`: fails the test, naming `what` (most callers).
- `poll_until(predicate)`: returns the last value, falsy on a timeout, for callers whose failure message needs more
  than a description (a log tail, the statuses seen) or that treat a sentinel value themselves.
- `wait_for_async(predicate)`: the same inside a running event loop (the engine's tests), short default interval.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def poll_until(predicate, timeout: float = 60.0, interval: float = 0.5):
    """Call `predicate` until it returns something truthy; return that value, or the last one after `timeout`."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def wait_for(predicate, what: str, timeout: float = 60.0, interval: float = 0.5):
    """Poll `predicate` until it returns something truthy; return that value, or fail after `timeout` seconds."""
    value = poll_until(predicate, timeout, interval)
    if not value:
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last value: {value!r}")
    return value


async def wait_for_async(predicate, timeout: float = 20.0, interval: float = 0.005) -> None:
    """`wait_for` for code on an event loop: sleeps with asyncio so the loop keeps running meanwhile."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() >= deadline:
            pytest.fail(f"condition not reached in {timeout:.0f}s")
        await asyncio.sleep(interval)


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a process a test started, killing it when it does not exit within `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def import_script(relative_path: str) -> ModuleType:
    """A repository script that is not in a package (tools/make_model.py, hack/deps/constraints.py), by its path.

    Loaded once per session under its file name, without putting its folder on sys.path (where its name could
    shadow or be shadowed by an installed module).
    """
    path = ROOT / relative_path
    name = f"_script_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
