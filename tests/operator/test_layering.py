"""Layering: kopf is the handlers' business. Every other module of the package (the pure builders, validation,
status, ...) imports without it, so they can be used and tested without an operator framework. And no module of the
operator imports the serve app (or its torch and Ray): the operator image (textgen-operator alone) carries none of
them, and what both sides share is textgen_contract."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import textgen_operator

from tests.operator.tgs_common import ROOT

# The only modules allowed to import kopf: the handlers and the entry point that runs them.
KOPF_MODULES = {"handlers", "__main__"}
# What the serve image has and the operator image must not need.
SERVE_ONLY = ("serve_app", "torch", "ray", "transformers")


def operator_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(textgen_operator.__path__))


def pure_modules() -> list[str]:
    return [m for m in operator_modules() if m not in KOPF_MODULES]


def loaded_after_importing(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    """The modules of `packages` in sys.modules after a fresh interpreter imports `modules`. The repository root and
    operator/ are on its path, so serve_app is importable there: only an import can load it."""
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {packages!r})))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'contract'}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_pure_modules_are_all_there():
    """The list is discovered, so a new module is covered without editing this test; these must be among them."""
    assert {"spec", "validation", "builder", "status", "networkpolicy", "capacity", "pod_customisation",
            "pod_security", "ownership", "render"} <= set(pure_modules())
    assert KOPF_MODULES <= set(operator_modules())


def test_no_module_but_the_handlers_imports_kopf():
    assert loaded_after_importing([f"textgen_operator.{m}" for m in pure_modules()], ("kopf",)) == []


def test_the_handlers_do_import_kopf():
    """The check above can see kopf at all: importing the handlers in the same way does load it."""
    assert "kopf" in loaded_after_importing(["textgen_operator.handlers"], ("kopf",))


def test_no_operator_module_imports_the_serve_app():
    """Every module, the handlers and the entry point too, imports with the contract alone."""
    loaded = loaded_after_importing([f"textgen_operator.{m}" for m in operator_modules()], (*SERVE_ONLY, "textgen_contract"))
    assert [m for m in loaded if m.split(".")[0] in SERVE_ONLY] == []
    assert "textgen_contract" in loaded


def test_the_serve_app_is_visible_to_that_check():
    """The check above can see serve_app at all: importing the app's config in the same way does load it."""
    assert "serve_app.config" in loaded_after_importing(["serve_app.config"], SERVE_ONLY)
