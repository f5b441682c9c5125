"""The process environment of the model replicas' torch: Intel OpenMP when it is installed (else GNU libgomp
passive), and 2 MB pages for torch's large tensors.

PyTorch's wheels use GNU libgomp. With libgomp, 2 torch threads were no faster than 1 for a decode step (its
threads either sleep between the ~150 parallel regions of a step, OMP_WAIT_POLICY=PASSIVE, paying a wake-up each
time, or spin and collapse when the cores are shared). Intel OpenMP (`intel-openmp` on PyPI, what vLLM's CPU
backend and IPEX preload too) implements the same GOMP entry points; preloaded, a 124M decode step at batch 32 on
2 threads took a median 80 ms vs 137 ms with libgomp passive, on a shared 2-core machine (bench/ENGINE.md).

Huge pages: ``THP_MEM_ALLOC_ENABLE=1`` makes torch's CPU allocator 2 MB-align large tensors and madvise them
(transparent huge pages, on hosts whose THP mode is ``madvise`` or ``always``), so the ~0.5 GB of packed weights a
decode step streams miss the TLB far less: a GPT-2 124M step on 2 threads took 6-10 % less at batch 1 and 8, 3-5 %
at 32 (three A/B alternations, bench/ENGINE.md). torch reads the variable once, at its first large allocation.

It all has to be in place before the process starts (LD_PRELOAD), so the local launcher (`serve_app.run_local`, used by
`make run` and `make bench`) sets it in its own environment before Ray starts the replica processes; an in-process
benchmark re-executes itself with `reexec_with_replica_env`. The serve image sets LD_PRELOAD itself
(images/serve/Dockerfile), so the replicas of a RayService get it too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import MutableMapping, Optional

INTEL_OPENMP_LIB = "libiomp5.so"


def intel_openmp(prefix: str = sys.prefix) -> Optional[str]:
    """Path of the `intel-openmp` wheel's library in this environment, if installed."""
    lib = Path(prefix) / "lib" / INTEL_OPENMP_LIB
    return str(lib) if lib.is_file() else None


def replica_env(environ: MutableMapping[str, str], prefix: str = sys.prefix) -> dict[str, str]:
    """The variables a model replica process needs, given the current environment ``environ``
    (``TEXTGEN_OPENMP=gnu`` keeps torch's own libgomp, e.g. for an A/B run)."""
    pages = {"THP_MEM_ALLOC_ENABLE": environ.get("THP_MEM_ALLOC_ENABLE", "1")}
    lib = intel_openmp(prefix) if environ.get("TEXTGEN_OPENMP", "intel") != "gnu" else None
    if lib is None:
        return {"OMP_WAIT_POLICY": environ.get("OMP_WAIT_POLICY", "PASSIVE"), **pages}
    preload = [p for p in environ.get("LD_PRELOAD", "").split(":") if p and p != lib]
    # Spin at most 1 ms after a parallel region: a step's regions follow each other closely, so the threads stay
    # hot within a step and sleep between steps, leaving the cores to the replica's Python side and the proxy.
    return {"LD_PRELOAD": ":".join([lib] + preload), "KMP_BLOCKTIME": environ.get("KMP_BLOCKTIME", "1"), **pages}


def apply_replica_env(environ: MutableMapping[str, str] = os.environ, prefix: str = sys.prefix) -> dict[str, str]:
    """Set `replica_env` in ``environ`` (for the processes started after this); Intel OpenMP's own spin-then-sleep
    wait replaces libgomp's PASSIVE setting, which would turn Intel OpenMP's spinning off."""
    env = replica_env(environ, prefix)
    if "LD_PRELOAD" in env:
        environ.pop("OMP_WAIT_POLICY", None)
    environ.update(env)
    return env


def loaded_runtime() -> str:
    """Which OpenMP runtime this process has loaded: "intel", "gnu" or "none" (from /proc/self/maps)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    if INTEL_OPENMP_LIB in maps:
        return "intel"
    return "gnu" if "libgomp" in maps else "none"


def reexec_with_replica_env(module: Optional[str] = None) -> None:
    """Re-execute this Python program once with `replica_env` applied (for benchmarks that import torch
    in-process and must measure what a replica runs); ``module``: the name it was started with ``-m`` as."""
    if os.environ.get("TEXTGEN_REPLICA_ENV") == "1":
        return
    env = dict(os.environ)
    apply_replica_env(env)
    env["TEXTGEN_REPLICA_ENV"] = "1"
    head = ["-m", module] if module else [sys.argv[0]]
    os.execve(sys.executable, [sys.executable, *head, *sys.argv[1:]], env)
