"""Pytest fixtures for tests that talk to a real Kubernetes API server (mark them `@pytest.mark.cluster`).

- `kubeconfig` (session): path to a kubeconfig. With TEXTGEN_USE_EXISTING_CLUSTER=1 and KUBECONFIG pointing at an
  existing file (e.g. a kind cluster), that cluster is used as it is. Otherwise the local control plane
  (hack/cluster/cluster.sh: etcd + kube-apiserver + kube-controller-manager + the KubeRay operator on 127.0.0.1)
  is reused when already up, or started (building it first if needed) and stopped again at session end when
  this session started it and no other pytest session still uses it.
- `k8s_api` (session): a `kubernetes.client.ApiClient` for that kubeconfig.
- `kubectl` (session): `kubectl("get", "pods", "-n", ns)` runs the cached kubectl with `--kubeconfig` and returns
  the `subprocess.CompletedProcess` (text); raises `KubectlError` on a non-zero exit unless `check=False`.
- `namespace` (function): a fresh namespace, deleted after the test.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support import ROOT

BIN = ROOT / ".cache" / "bin"
CLUSTER_SH = ROOT / "hack" / "cluster" / "cluster.sh"
LOCAL_KUBECONFIG = ROOT / ".cluster" / "kubeconfig"
# Sessions using the local cluster register here (one file per pytest PID), so a session that started the
# cluster does not stop it under another session that is still running tests on the same checkout.
USERS_DIR = ROOT / ".cache" / "cluster-users"
FIXTURE_LOCK = ROOT / ".cache" / "cluster-fixture.lock"
# Written when a pytest session started the cluster: the last session using it then stops it. A cluster that
# `make cluster-up` started has no marker and is left running.
STARTED_BY_PYTEST = ROOT / ".cluster" / "started-by-pytest"
KUBERAY_SAMPLES = ROOT / ".cache" / "kuberay" / "samples"

USE_EXISTING_ENV = "TEXTGEN_USE_EXISTING_CLUSTER"



class KubectlError(RuntimeError):
    def __init__(self, proc: subprocess.CompletedProcess):
        self.proc = proc
        super().__init__(
            f"kubectl {' '.join(proc.args[3:])} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )


def _cluster_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PY", sys.executable)
    env["BIN"] = str(BIN)
    return env


def _cluster_sh(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER_SH), *args],
        cwd=ROOT,
        env=_cluster_env(),
        check=check,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
    )


@contextlib.contextmanager
def _fixture_lock() -> Iterator[None]:
    FIXTURE_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(FIXTURE_LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _other_live_users() -> list[int]:
    live = []
    for f in USERS_DIR.glob("*"):
        try:
            pid = int(f.name)
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            live.append(pid)
        except ProcessLookupError:
            f.unlink(missing_ok=True)  # a session that died without cleaning up
        except PermissionError:
            live.append(pid)
    return live


def use_existing_cluster() -> str | None:
    """The user's own cluster, when asked for explicitly."""
    path = os.environ.get("KUBECONFIG", "")
    if os.environ.get(USE_EXISTING_ENV) == "1":
        if path and os.path.isfile(path):
            return path
        raise pytest.UsageError(f"{USE_EXISTING_ENV}=1 needs KUBECONFIG set to an existing file (got {path!r})")
    return None


def kubectl_binary() -> str:
    if not (BIN / "kubectl").exists():
        subprocess.run([sys.executable, str(ROOT / "hack" / "cluster" / "tools.py"), "--bin", str(BIN)], check=True)
    return str(BIN / "kubectl") if (BIN / "kubectl").exists() else (shutil.which("kubectl") or "kubectl")


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[str]:
    existing = use_existing_cluster()
    if existing:
        yield existing
        return

    USERS_DIR.mkdir(parents=True, exist_ok=True)
    me = USERS_DIR / str(os.getpid())
    with _fixture_lock():
        if _cluster_sh("status", check=False, capture=True).returncode != 0:
            _cluster_sh("up")  # builds first when needed; fails loudly with the component's log tail
            STARTED_BY_PYTEST.write_text(f"{os.getpid()}\n")
        me.touch()
    try:
        yield str(LOCAL_KUBECONFIG)
    finally:
        with _fixture_lock():
            me.unlink(missing_ok=True)
            if STARTED_BY_PYTEST.exists() and not _other_live_users():
                _cluster_sh("down", check=False)


@pytest.fixture(scope="session")
def k8s_api(kubeconfig: str):
    from kubernetes import config

    client = config.new_client_from_config(config_file=kubeconfig)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def kubectl(kubeconfig: str):
    binary = kubectl_binary()

    def run(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [binary, "--kubeconfig", kubeconfig, *args],
            check=False,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc)
        return proc

    return run


@pytest.fixture
def namespace(k8s_api) -> Iterator[str]:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(k8s_api)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"textgen.dev/test": "true"}))
    )
    # Pods need the namespace's `default` ServiceAccount (the ServiceAccount admission plugin); the
    # controller manager creates it within moments. Bounded wait; tests that need it will fail clearly anyway.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException as exc:
            if exc.status != 404:
                raise
            time.sleep(0.2)
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise
