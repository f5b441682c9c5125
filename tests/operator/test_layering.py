"""Layering: kopf is the handlers' business. Every other module of the package (the pure builders, validation,
status, ...) imports without it, so they can be used and tested without an operator framework."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import textgen_operator

from tests.operator.tgs_common import ROOT

# The only modules allowed to import kopf: the handlers and the entry point that runs them.
KOPF_MODULES = {"handlers", "__main__"}


def pure_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(textgen_operator.__path__) if m.name not in KOPF_MODULES)


def test_the_pure_modules_are_all_there():
    """The list is discovered, so a new module is covered without editing this test; these must be among them."""
    assert {"spec", "validation", "builder", "status", "networkpolicy", "capacity", "pod_customisation",
            "pod_security", "ownership", "render"} <= set(pure_modules())


def test_no_module_but_the_handlers_imports_kopf():
    code = ("import importlib, json, sys\n"
            f"for name in {pure_modules()!r}:\n"
            "    importlib.import_module('textgen_operator.' + name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'kopf' or m.startswith('kopf.'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": f"{ROOT / 'operator'}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_the_handlers_do_import_kopf():
    """The check above can see kopf at all: importing the handlers in the same way does load it."""
    code = "import sys, textgen_operator.handlers; print('kopf' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": f"{ROOT / 'operator'}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
