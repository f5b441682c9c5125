"""The Kubernetes Pod Security Standards, "restricted" profile (which includes "baseline"), as a checker of a pod
spec (a dict as the API returns it). Written from the standard's published rules
(https://kubernetes.io/docs/concepts/security/pod-security-standards/), one function per control, so that a test
can say which control a pod fails. Applies to containers, initContainers and ephemeralContainers alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUME_SOURCES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                             "projected", "secret", "image"}


def containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(key) or []


def _csc(c: dict[str, Any]) -> dict[str, Any]:
    return c.get("securityContext") or {}


def _psc(pod: dict[str, Any]) -> dict[str, Any]:
    return pod.get("securityContext") or {}


# --- baseline --------------------------------------------------------------------------------------------------


def host_process(pod):
    scs = [_psc(pod)] + [_csc(c) for c in containers(pod)]
    if any((sc.get("windowsOptions") or {}).get("hostProcess") for sc in scs):
        yield "windowsOptions.hostProcess must not be true"


def host_namespaces(pod):
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            yield f"{key} must not be true"


def privileged(pod):
    for c in containers(pod):
        if _csc(c).get("privileged"):
            yield f"container {c.get('name')}: privileged"


def baseline_capabilities(pod):
    for c in containers(pod):
        extra = set((_csc(c).get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        if extra:
            yield f"container {c.get('name')}: adds {sorted(extra)}"


def host_path_volumes(pod):
    for v in pod.get("volumes") or []:
        if "hostPath" in v:
            yield f"volume {v.get('name')}: hostPath"


def host_ports(pod):
    for c in containers(pod):
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                yield f"container {c.get('name')}: hostPort {p['hostPort']}"


def apparmor(pod):
    scs = [_psc(pod)] + [_csc(c) for c in containers(pod)]
    for sc in scs:
        kind = (sc.get("appArmorProfile") or {}).get("type")
        if kind not in (None, "RuntimeDefault", "Localhost"):
            yield f"appArmorProfile {kind}"
    for key, value in ((pod.get("metadata") or {}).get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and \
                value != "runtime/default" and not value.startswith("localhost/"):
            yield f"AppArmor annotation {value}"


def selinux(pod):
    scs = [_psc(pod)] + [_csc(c) for c in containers(pod)]
    for sc in scs:
        opts = sc.get("seLinuxOptions") or {}
        if opts.get("type", "") not in SELINUX_TYPES or opts.get("user") or opts.get("role"):
            yield f"seLinuxOptions {opts}"


def proc_mount(pod):
    for c in containers(pod):
        if _csc(c).get("procMount", "Default") != "Default":
            yield f"container {c.get('name')}: procMount {_csc(c)['procMount']}"


def baseline_seccomp(pod):
    scs = [_psc(pod)] + [_csc(c) for c in containers(pod)]
    if any((sc.get("seccompProfile") or {}).get("type") == "Unconfined" for sc in scs):
        yield "seccompProfile Unconfined"


def sysctls(pod):
    for s in _psc(pod).get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            yield f"sysctl {s.get('name')}"


# --- restricted ------------------------------------------------------------------------------------------------


def volume_types(pod):
    for v in pod.get("volumes") or []:
        sources = set(v) - {"name"}
        if not sources <= RESTRICTED_VOLUME_SOURCES:
            yield f"volume {v.get('name')}: {sorted(sources - RESTRICTED_VOLUME_SOURCES)}"


def privilege_escalation(pod):
    for c in containers(pod):
        if _csc(c).get("allowPrivilegeEscalation") is not False:
            yield f"container {c.get('name')}: allowPrivilegeEscalation must be false"


def run_as_non_root(pod):
    pod_level = _psc(pod).get("runAsNonRoot")
    for c in containers(pod):
        value = _csc(c).get("runAsNonRoot", pod_level)
        if value is not True:
            yield f"container {c.get('name')}: runAsNonRoot must be true (pod or container)"


def run_as_non_root_user(pod):
    scs = [_psc(pod)] + [_csc(c) for c in containers(pod)]
    if any(sc.get("runAsUser") == 0 for sc in scs):
        yield "runAsUser must not be 0"


def restricted_seccomp(pod):
    pod_type = (_psc(pod).get("seccompProfile") or {}).get("type")
    for c in containers(pod):
        kind = (_csc(c).get("seccompProfile") or {}).get("type", pod_type)
        if kind not in ("RuntimeDefault", "Localhost"):
            yield f"container {c.get('name')}: seccompProfile must be RuntimeDefault or Localhost, is {kind}"


def restricted_capabilities(pod):
    for c in containers(pod):
        caps = _csc(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            yield f"container {c.get('name')}: capabilities must drop ALL"
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            yield f"container {c.get('name')}: may add only NET_BIND_SERVICE"


CONTROLS = (host_process, host_namespaces, privileged, baseline_capabilities, host_path_volumes, host_ports,
            apparmor, selinux, proc_mount, baseline_seccomp, sysctls,
            volume_types, privilege_escalation, run_as_non_root, run_as_non_root_user, restricted_seccomp,
            restricted_capabilities)


def violations(pod_spec: dict[str, Any], metadata: dict[str, Any] | None = None) -> list[str]:
    """Every way `pod_spec` breaks the restricted standard (empty: it meets it)."""
    pod = dict(pod_spec, metadata=metadata or {})
    return [f"{control.__name__}: {msg}" for control in CONTROLS for msg in control(pod)]
