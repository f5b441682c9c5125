"""The local control plane's own hardening (hack/cluster/cluster.sh): etcd only talks TLS to holders of a client
certificate from its own CA, and the API server enforces OwnerReferencesPermissionEnforcement (as OpenShift does).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s_fixtures import use_existing_cluster
from tests.support import wait_for

pytestmark = pytest.mark.cluster


def _state(kubeconfig: str) -> tuple[Path, dict[str, str]]:
    state = Path(kubeconfig).parent
    ports = dict(line.split("=", 1) for line in (state / "ports.env").read_text().split() if "=" in line)
    return state / "pki", ports


def _curl_etcd(pki: Path, port: str, *tls: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "5", *tls, f"https://127.0.0.1:{port}/health"],
                          capture_output=True, text=True, check=False)


def test_etcd_requires_a_client_certificate_from_its_own_ca(kubeconfig):
    pki, ports = _state(kubeconfig) if (Path(kubeconfig).parent / "ports.env").exists() else (None, {})
    if use_existing_cluster() and pki is None:
        pytest.skip("checks the local control plane's etcd (hack/cluster/cluster.sh)")
    port, ca = ports["ETCD_PORT"], str(pki / "etcd-ca.crt")
    plain = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{port}/health"],
                           capture_output=True, text=True, check=False)
    assert plain.returncode != 0 and '"health"' not in plain.stdout, plain
    assert _curl_etcd(pki, port, "--cacert", ca).returncode != 0, "TLS without a client certificate was accepted"
    # The cluster CA signs the admin's (cluster-admin) certificate: etcd must not trust it.
    admin = _curl_etcd(pki, port, "--cacert", ca, "--cert", str(pki / "admin.crt"), "--key", str(pki / "admin.key"))
    assert admin.returncode != 0 and '"health"' not in admin.stdout, admin
    ok = _curl_etcd(pki, port, "--cacert", ca, "--cert", str(pki / "apiserver-etcd-client.crt"),
                    "--key", str(pki / "apiserver-etcd-client.key"))
    assert '"health":"true"' in ok.stdout, ok


def test_block_owner_deletion_needs_update_on_the_owners_finalizers(kubectl, namespace):
    """OwnerReferencesPermissionEnforcement: without `configmaps/finalizers` update, a ConfigMap that sets
    blockOwnerDeletion on another ConfigMap is refused; with it, accepted."""
    sa = "owner-ref-probe"
    kubectl("create", "serviceaccount", sa, "-n", namespace)
    kubectl("create", "role", "cm", "-n", namespace, "--verb=get,create", "--resource=configmaps")
    kubectl("create", "rolebinding", "cm", "-n", namespace, "--role=cm", f"--serviceaccount={namespace}:{sa}")
    owner = yaml.safe_load(kubectl("create", "configmap", "owner", "-n", namespace, "-o", "yaml").stdout)
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"],
           "controller": True, "blockOwnerDeletion": True}

    def create_dependent(name: str):
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace, "ownerReferences": [ref]}}
        return kubectl("create", "-f", "-", f"--as=system:serviceaccount:{namespace}:{sa}", input=yaml.safe_dump(body),
                       check=False)

    refused = create_dependent("dependent-1")
    if refused.returncode == 0 and use_existing_cluster():
        pytest.skip("this cluster does not enable OwnerReferencesPermissionEnforcement")
    assert refused.returncode != 0, "blockOwnerDeletion was accepted without configmaps/finalizers update"
    assert "cannot set blockOwnerDeletion" in refused.stderr, refused.stderr
    kubectl("create", "role", "cm-finalizers", "-n", namespace, "--verb=update", "--resource=configmaps/finalizers")
    kubectl("create", "rolebinding", "cm-finalizers", "-n", namespace, "--role=cm-finalizers",
            f"--serviceaccount={namespace}:{sa}")
    # The RBAC authorizer sees the new binding through its informer: allow it a moment.
    accepted = wait_for(lambda: create_dependent("dependent-2").returncode == 0, "the create with the finalizers rule",
                        timeout=15)
    assert accepted
