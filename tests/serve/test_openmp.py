"""The process environment the launchers give the model replicas (serve_app/openmp.py): OpenMP runtime, huge pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serve_app import openmp


def fake_prefix(tmp_path, with_iomp: bool):
    (tmp_path / "lib").mkdir(parents=True)
    if with_iomp:
        (tmp_path / "lib" / openmp.INTEL_OPENMP_LIB).write_bytes(b"")
    return str(tmp_path)


def test_intel_openmp_is_preloaded_first_and_replaces_passive_waiting(tmp_path):
    prefix = fake_prefix(tmp_path, True)
    env = {"LD_PRELOAD": "/x/libtcmalloc.so", "OMP_WAIT_POLICY": "PASSIVE"}
    set_ = openmp.apply_replica_env(env, prefix)
    lib = f"{prefix}/lib/{openmp.INTEL_OPENMP_LIB}"
    assert set_ == {"LD_PRELOAD": f"{lib}:/x/libtcmalloc.so", "KMP_BLOCKTIME": "1", "THP_MEM_ALLOC_ENABLE": "1"}
    assert env == set_  # PASSIVE would turn Intel OpenMP's spinning off
    assert openmp.apply_replica_env(env, prefix) == set_  # idempotent: listed once


def test_without_intel_openmp_libgomp_waits_passively(tmp_path):
    env: dict[str, str] = {}
    passive = {"OMP_WAIT_POLICY": "PASSIVE", "THP_MEM_ALLOC_ENABLE": "1"}
    assert openmp.apply_replica_env(env, fake_prefix(tmp_path, False)) == passive
    assert env == passive
    chosen = {"TEXTGEN_OPENMP": "gnu", "THP_MEM_ALLOC_ENABLE": "0"}  # an A/B run may keep torch's runtime, 4 KB pages
    assert openmp.apply_replica_env(chosen, fake_prefix(tmp_path / "x", True)) == {
        "OMP_WAIT_POLICY": "PASSIVE", "THP_MEM_ALLOC_ENABLE": "0"}


def test_a_process_started_with_the_replica_env_runs_torch_on_intel_openmp():
    """The venv (make venv) has intel-openmp: a child started with the replica env loads it for torch."""
    env = {"PATH": "/usr/bin:/bin"}
    openmp.apply_replica_env(env)
    code = "import torch; torch.ones(64, 64) @ torch.ones(64, 64); from serve_app.openmp import loaded_runtime; " \
           "print(loaded_runtime())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "intel"
    plain = subprocess.run([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                           text=True, timeout=120)
    assert plain.stdout.strip() == "gnu"  # torch's own runtime when nothing is preloaded


def thp_mode() -> str:
    try:
        return open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "[never]"


@pytest.mark.skipif("[never]" in thp_mode(), reason="this host has transparent huge pages off")
def test_a_process_started_with_the_replica_env_backs_large_tensors_with_huge_pages():
    """What the replica env's THP_MEM_ALLOC_ENABLE buys: a 64 MiB tensor lands on 2 MB pages (AnonHugePages)."""
    code = ("import torch; t = torch.ones(16 << 20); "
            "print(next(int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHugePages')))")

    def huge_kib(env):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.strip())

    env = {"PATH": "/usr/bin:/bin"}
    openmp.apply_replica_env(env)
    assert huge_kib(env) >= 32 * 1024
    if "[madvise]" in thp_mode():  # only what asks for them gets huge pages: torch by default does not
        assert huge_kib({"PATH": "/usr/bin:/bin", "THP_MEM_ALLOC_ENABLE": "0"}) < 32 * 1024
