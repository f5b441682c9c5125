"""operator/textgen_operator/ttl_cache.py: how often the status loop reads a RayCluster's token Secret."""

import pytest
from textgen_operator.ttl_cache import TTLCache


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def counting(values):
    calls = []

    def fetch():
        calls.append(1)
        return values[min(len(calls), len(values)) - 1]
    return fetch, calls


def test_a_found_value_is_read_once_until_it_expires():
    clock = Clock()
    cache = TTLCache(ttl_s=60, clock=clock)
    fetch, calls = counting(["tok-1", "tok-2"])
    assert [cache.get(("ns", "rc"), fetch) for _ in range(12)] == ["tok-1"] * 12  # a minute of 5 s status passes
    assert len(calls) == 1
    clock.t += 60  # expired: read again, and the new value wins
    assert cache.get(("ns", "rc"), fetch) == "tok-2" and len(calls) == 2


def test_a_miss_is_not_remembered_and_keys_are_separate():
    cache = TTLCache(ttl_s=60, clock=Clock())
    fetch, calls = counting([None, None, "tok"])
    assert cache.get("a", fetch) is None and cache.get("a", fetch) is None  # no Secret yet: asked each time
    assert cache.get("a", fetch) == "tok" and cache.get("a", fetch) == "tok"
    assert len(calls) == 3
    other, other_calls = counting(["x"])
    assert cache.get("b", other) == "x" and len(other_calls) == 1 and len(cache) == 2


def test_at_most_max_entries_expired_first_then_oldest():
    clock = Clock()
    cache = TTLCache(ttl_s=60, max_entries=2, clock=clock)
    cache.get("old", lambda: "1")
    clock.t += 30
    cache.get("mid", lambda: "2")
    clock.t += 40  # "old" has expired, "mid" has not
    cache.get("new", lambda: "3")
    assert len(cache) == 2
    fetched = []
    assert cache.get("mid", lambda: fetched.append(1) or "again") == "2" and not fetched
    cache.get("newest", lambda: "4")  # nothing expired: the oldest insertion ("mid") goes
    assert cache.get("mid", lambda: "refetched") == "refetched"
    with pytest.raises(ValueError):
        TTLCache(ttl_s=0)


@pytest.mark.cluster
def test_the_status_loop_reads_a_clusters_token_secret_at_most_once_a_minute(k8s_api, kubeconfig, namespace,
                                                                            monkeypatch):
    """handlers.ray_auth_token against the real API server: a Secret not there yet is asked for again, a found
    token is reused within the minute, and read again after it."""
    import base64

    from kubernetes import client
    from textgen_operator import handlers
    from textgen_operator import ray_auth as RA

    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setattr(handlers, "_API", None)  # the handlers' own client, from this kubeconfig
    clock = Clock()
    monkeypatch.setattr(RA, "TOKENS", TTLCache(ttl_s=60, clock=clock))
    core = client.CoreV1Api(k8s_api)
    cluster = "gpt2-raycluster-x7k2p"

    def secret(token: str) -> client.V1Secret:
        return client.V1Secret(metadata=client.V1ObjectMeta(name=RA.auth_secret_name(cluster)),
                               data={RA.TOKEN_KEY: base64.b64encode(token.encode()).decode()})

    assert handlers.ray_auth_token(namespace, cluster) is None  # KubeRay has not made it yet
    core.create_namespaced_secret(namespace, secret("first"))
    assert handlers.ray_auth_token(namespace, cluster) == "first"  # the miss was not remembered
    core.replace_namespaced_secret(RA.auth_secret_name(cluster), namespace, secret("second"))
    clock.t += 55
    assert handlers.ray_auth_token(namespace, cluster) == "first"  # within the minute: no read
    clock.t += 5
    assert handlers.ray_auth_token(namespace, cluster) == "second"
