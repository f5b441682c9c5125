"""`python -m textgen_operator` maps its flags onto `kopf run`, and the package runs without a cluster."""

from __future__ import annotations

import subprocess
import sys

import pytest
from textgen_operator.__main__ import DEFAULT_LIVENESS, kopf_args

from tests.operator.tgs_common import ROOT


def test_defaults_are_cluster_wide_standalone_with_liveness(monkeypatch):
    monkeypatch.delenv("WATCH_NAMESPACE", raising=False)
    args = kopf_args([])
    assert args[:2] == ["run", "--standalone"]
    assert "--all-namespaces" in args and "--namespace" not in args
    assert args[args.index("--liveness") + 1] == DEFAULT_LIVENESS
    assert args[-2:] == ["-m", "textgen_operator.handlers"]


def test_namespaces_and_log_format(monkeypatch):
    monkeypatch.delenv("WATCH_NAMESPACE", raising=False)
    args = kopf_args(["-n", "a", "--namespace=b,c", "--log-format", "json", "--liveness", "none", "-v"])
    assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == ["a", "b", "c"]
    assert "--all-namespaces" not in args and "--liveness" not in args and "--verbose" in args
    assert args[args.index("--log-format") + 1] == "json"


def test_watch_namespace_env(monkeypatch):
    monkeypatch.setenv("WATCH_NAMESPACE", "x, y")
    args = kopf_args([])
    assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == ["x", "y"]


def test_conflicting_scope_is_an_error():
    with pytest.raises(SystemExit):
        kopf_args(["-A", "-n", "a"])


def test_module_help_runs():
    proc = subprocess.run([sys.executable, "-m", "textgen_operator", "--help"], cwd=ROOT / "operator",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--all-namespaces" in proc.stdout and "--namespace" in proc.stdout


def test_package_exports_versions_without_importing_kopf():
    code = ("import sys, textgen_operator as t; "
            "print(t.RAY_VERSION, t.DEFAULT_IMAGE, 'kopf' in sys.modules, 'kubernetes' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "operator", capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.split() == ["2.60.0", "textgen-serve:0.1.0", "False", "False"], proc.stderr
