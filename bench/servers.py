"""Start and stop the benchmarked servers as subprocesses on free 127.0.0.1 ports; measure their memory.

Three kinds of server (:func:`baseline_spec`, :func:`peer_spec`, :func:`textgen_spec`):

- ``baseline``: ``uvicorn bench.baseline_app:app`` (FastAPI + transformers pipeline, one process);
- ``peer``: ``transformers serve --continuous-batching --device cpu <model dir>`` (Hugging Face's own
  OpenAI-compatible server, one process);
- ``textgen``: our serve app on a private local Ray, started by the project's one launcher
  (``python -m serve_app.run_local``, what ``make run`` runs) with the benchmark's overrides, N replicas.

:class:`Server` is a context manager: it starts the process in its own session, waits until the
server answers (and, for Ray, until the application is RUNNING), and on exit stops it with SIGTERM,
then kills by pid whatever of its process tree is still alive. Output goes to a log file.

Memory: :meth:`Server.memory` sums RSS and PSS (proportional set size: shared pages split between
the processes sharing them, so a sum does not count torch's libraries once per process) over the
server's process tree, and lists the model replicas' own RSS (for Ray, the ``ServeReplica`` worker
processes of the model deployment; for the single-process servers, the process itself).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import httpx
import psutil

from serve_app.run_local import free_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
REPLICA_MARK = "ServeReplica:textgen:GPT2Model"


def _base_env() -> dict:
    env = dict(os.environ)
    env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env["HF_HUB_OFFLINE"] = "1"  # the Hub is unreachable here: never wait on it
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    # Every torch-based system gets what our replicas get (serve_app/openmp.py): torch's large tensors on huge pages.
    env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    env.pop("RAY_ADDRESS", None)  # never attach to someone else's Ray
    return env


@dataclass
class ServerSpec:
    """How to start one server and how to talk to it."""

    name: str  # key in results: baseline | peer | textgen-1 | textgen-2 ...
    label: str  # human-readable, for tables and plots
    argv: list[str]
    port: int
    kind: str  # loadgen request kind: "generate" | "completions"
    ready_path: str
    stream: bool  # supports SSE streaming (TTFT)
    forced_tokens: bool = False  # always generates exactly new_tokens
    env: dict = field(default_factory=dict)
    ready_file: Optional[Path] = None  # textgen: written by the launcher when RUNNING
    startup_timeout_s: float = 600.0
    replicas: int = 1
    meta: dict = field(default_factory=dict)
    replica_mark: Optional[str] = None  # command-line mark of the process holding the model, if not the root

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def baseline_spec(model_dir: str, new_tokens: int, port: Optional[int] = None) -> ServerSpec:
    port = port or free_port()
    return ServerSpec(
        name="baseline",
        label="baseline (FastAPI + pipeline)",
        argv=[sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--host", "127.0.0.1",
              "--port", str(port), "--log-level", "warning"],
        env={"BENCH_MODEL_DIR": str(model_dir), "BENCH_NEW_TOKENS": str(new_tokens)},
        port=port, kind="generate", ready_path="/openapi.json", stream=False, forced_tokens=True,
        meta={"command": "uvicorn bench.baseline_app:app (1 process, transformers pipeline, greedy, "
                         f"min_new_tokens=max_new_tokens={new_tokens})"},
    )


def peer_spec(model_dir: str, port: Optional[int] = None, extra_args: Optional[list[str]] = None) -> ServerSpec:
    port = port or free_port()
    extra_args = list(extra_args or [])
    exe = VENV_BIN / "transformers"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "transformers.cli.transformers"]
    argv += ["serve", "--continuous-batching", "--device", "cpu", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", *extra_args, str(model_dir)]
    return ServerSpec(
        name="peer", label="transformers serve --continuous-batching", argv=argv,
        port=port, kind="completions", ready_path="/health", stream=True,
        meta={"command": " ".join(["transformers serve --continuous-batching --device cpu", *extra_args,
                                   "<model dir>"])},
    )


def textgen_spec(
    model_dir: str,
    replicas: int = 1,
    cpus: Optional[float] = None,
    port: Optional[int] = None,
    app_args: Optional[dict] = None,
    config: Optional[Path] = None,
) -> ServerSpec:
    port = port or free_port()
    cpus = float(cpus or os.cpu_count() or 1)
    ready = Path(tempfile.mkstemp(prefix="textgen-ready-", suffix=".json")[1])
    ready.unlink()
    argv = [sys.executable, "-m", "serve_app.run_local", "--port", str(port), "--no-dashboard",
            "--model-dir", str(model_dir), "--replicas", str(replicas), "--cpus", str(cpus),
            "--app-args", json.dumps(app_args or {}), "--ready-file", str(ready), "--private-temp-dir"]
    if config is not None:
        argv += ["--config", str(config)]
    return ServerSpec(
        name=f"textgen-{replicas}", label=f"ours (Ray Serve, {replicas} replica{'s' if replicas > 1 else ''})",
        argv=argv, port=port, kind="completions", ready_path="/healthz", stream=True, ready_file=ready,
        replicas=replicas,
        meta={"command": f"serve_app on a local Ray: {replicas} x GPT2Model, "
                         f"{cpus / replicas:g} CPU and {max(1, int(cpus / replicas))} torch threads each",
              "app_args": app_args or {}},
    )


class ServerError(RuntimeError):
    pass


class Server:
    """A running server (context manager)."""

    def __init__(self, spec: ServerSpec, log_path: Optional[Path] = None):
        self.spec = spec
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix=f"{spec.name}-", suffix=".log")[1])
        self.proc: Optional[subprocess.Popen] = None
        self.startup_s: Optional[float] = None
        self.ready_info: dict = {}
        self._log = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Server":
        env = _base_env()
        env.update(self.spec.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.spec.argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = round(time.monotonic() - t0, 2)
        return self

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.spec.startup_timeout_s
        url = self.spec.base_url + self.spec.ready_path
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                if self.proc.poll() is not None:
                    raise ServerError(f"{self.spec.name} exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise ServerError(f"{self.spec.name} not ready after {self.spec.startup_timeout_s:.0f} s:\n{self.log_tail()}")
                launcher_ok = True
                if self.spec.ready_file is not None:
                    launcher_ok = False
                    if self.spec.ready_file.is_file() and self.spec.ready_file.read_text().strip():
                        self.ready_info = json.loads(self.spec.ready_file.read_text())
                        if not str(self.ready_info.get("status", "")).endswith("RUNNING"):
                            raise ServerError(f"{self.spec.name} failed to deploy: {self.ready_info}\n{self.log_tail()}")
                        launcher_ok = True
                if launcher_ok:
                    try:
                        if client.get(url).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                time.sleep(0.5)

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.proc is None:
            return
        tree = self._tree()
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # Whatever of the tree outlived its root (Ray workers, raylet...): end it, by pid.
        leftovers = [p for p in tree if p.pid != self.proc.pid and _alive(p)]
        for p in leftovers:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(leftovers, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.spec.ready_file is not None:
            self.spec.ready_file.unlink(missing_ok=True)
        temp_dir = self.ready_info.get("temp_dir")
        if temp_dir and Path(temp_dir).name.startswith("rb") and Path(temp_dir).parent == Path("/tmp"):
            shutil.rmtree(temp_dir, ignore_errors=True)  # the launcher's private Ray temp dir
        self.proc = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ introspection
    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def _tree(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root] + root.children(recursive=True)
        except psutil.Error:
            return []

    def replica_processes(self) -> list[psutil.Process]:
        tree = self._tree()
        mark = REPLICA_MARK if self.spec.name.startswith("textgen") else self.spec.replica_mark
        if mark:
            out = []
            for p in tree:
                try:
                    if mark in " ".join(p.cmdline()):
                        out.append(p)
                except psutil.Error:
                    pass
            return out
        return tree[:1]

    def memory(self) -> dict:
        """RSS/PSS of the whole process tree and RSS of each model replica, in MiB."""
        rss = pss = 0
        n = 0
        for p in self._tree():
            try:
                mi = p.memory_full_info()
            except psutil.Error:
                continue
            rss += mi.rss
            pss += getattr(mi, "pss", mi.rss)
            n += 1
        replicas = []
        for p in self.replica_processes():
            try:
                replicas.append(round(p.memory_info().rss / 2**20, 1))
            except psutil.Error:
                pass
        return {
            "tree_rss_mib": round(rss / 2**20, 1),
            "tree_pss_mib": round(pss / 2**20, 1),
            "processes": n,
            "replica_rss_mib": replicas,
        }


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
