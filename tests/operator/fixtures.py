"""Fixtures that run the operator against the tests' API server, for tests/operator and tests/sim (loaded by
tests/conftest.py as a plugin: a conftest's fixtures reach only its own folder).

- `crd_installed` (session): the TextGenService CRD applied and established.
- `api` (function): a `kubernetes.client.CustomObjectsApi`.
- `run_operator` (function): context manager factory, the operator in-process watching only this test's namespace;
  yields the kopf log lines it wrote.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
from kopf.testing import KopfRunner
from kubernetes import client
from textgen_operator import constants as C
from textgen_operator import handlers

from tests.operator.tgs_common import CRD_PATH
from tests.support import wait_for


class LogLines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)


@pytest.fixture(scope="session")
def crd_installed(kubectl):
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    kubectl("wait", "--for", "condition=established", "--timeout=60s", f"crd/{C.CRD_NAME}")
    return True


@pytest.fixture
def api(k8s_api):
    return client.CustomObjectsApi(k8s_api)


@pytest.fixture
def run_operator(kubeconfig, namespace, crd_installed, monkeypatch):
    """Context manager factory: the operator, in-process, watching only this test's namespace."""
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setattr(handlers, "_API", None)  # the handlers' own client: built from this kubeconfig
    log = LogLines()
    logging.getLogger("kopf").addHandler(log)

    @contextlib.contextmanager
    def run():
        args = ["run", "--standalone", "--verbose", "--namespace", namespace, "-m", "textgen_operator.handlers"]
        with KopfRunner(args, timeout=60) as runner:
            wait_for(lambda: log.count("textgen-operator ready"), "the operator's startup handler")
            yield log
        assert runner.exception is None, runner.output
        assert runner.exit_code == 0, runner.output

    try:
        yield run
    finally:
        logging.getLogger("kopf").removeHandler(log)
