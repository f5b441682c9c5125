"""constraints.txt (`make constraints`) is the one lock of every Python version: it is in step with the three
pyproject.toml files (root, operator/, contract/), complete (every distribution the project's requirements pull in,
with their extras, is pinned; the project's own are not), it is what this venv has, and the Makefile, both
Dockerfiles and the local node's wheelhouse install through it. No network."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

from packaging.requirements import Requirement

from tests.support import import_script

ROOT = Path(__file__).resolve().parents[2]
lock = import_script("hack/deps/constraints.py")

CONSTRAINTS = ROOT / "constraints.txt"


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and lock.canonical(name) == name, f"not a canonical name==version pin: {line}"
            out[name] = version
    return out


def project_requirements() -> list[Requirement]:
    return [Requirement(r) for r in lock.requirements()]


def test_the_lock_is_in_step_with_pyproject():
    header = next(line for line in CONSTRAINTS.read_text().splitlines() if line.startswith(lock.HASH_LINE))
    assert header.removeprefix(lock.HASH_LINE) == lock.dependencies_hash(), \
        "a pyproject.toml's dependencies changed: run `make constraints`"
    locked = pins()
    assert not lock.own_names() & set(locked), "the project's own distributions are built here, never pinned"
    for req in project_requirements():
        name = lock.canonical(req.name)
        assert name in locked, f"{req} is not pinned"
        assert req.specifier.contains(locked[name], prereleases=True), f"{name}=={locked[name]} breaks {req}"


def test_the_lock_is_complete_and_is_what_the_venv_has():
    """Walk the requirements through the installed distributions' metadata (extras and markers applied): each one is
    pinned, at the version installed here (the venv is installed with -c constraints.txt)."""
    locked = pins()
    seen: set[tuple[str, str]] = set()
    todo = [(req, "") for req in project_requirements()]
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        name = lock.canonical(req.name)
        for wanted in [""] + sorted(req.extras):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            assert name in locked, f"{name} (needed through {req}) is not in constraints.txt: run `make constraints`"
            installed = md.version(name)
            assert installed == locked[name], f"{name} {installed} installed, {locked[name]} locked: run `make venv`"
            todo += [(Requirement(r), wanted) for r in md.requires(name) or []]
    assert len({n for n, _ in seen}) > 100  # torch, ray[serve], transformers, kopf, ... and their dependencies


def test_the_requirements_are_every_pyprojects_but_the_projects_own():
    """What the lock is resolved from: the operator's and the serve app's requirements alike, textgen-contract left out
    (both depend on it; an index's textgen-contract would be someone else's)."""
    names = {lock.canonical(r.name) for r in project_requirements()}
    assert {"kopf", "kubernetes", "torch", "ray", "pytest"} <= names
    assert lock.own_names() == {"textgen-serve", "textgen-operator", "textgen-contract"}
    assert not names & lock.own_names()


def test_every_installer_uses_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"\$\(VENV\)/\.installed: pyproject\.toml operator/pyproject\.toml contract/pyproject\.toml "
                     r"constraints\.txt", makefile)
    assert "$(PIP) install -c constraints.txt -e ./contract -e ./operator -e '.[bench,dev]'" in makefile
    operator = (ROOT / "images" / "operator" / "Dockerfile").read_text()
    assert "pip install -c constraints.txt ./contract ./operator" in operator
    serve = (ROOT / "images" / "serve" / "Dockerfile").read_text()
    assert "pip install -c /tmp/deps/constraints.txt -r /tmp/deps/serve.txt" in serve
    assert "pip install -c /tmp/constraints.txt huggingface_hub" in serve  # the weights stage
    images_sh = (ROOT / "hack" / "node" / "images.sh").read_text()
    assert 'pip download --quiet --dest "$WHEELHOUSE" -c "$ROOT/constraints.txt" -r "$reqs"' in images_sh
    # An image is rebuilt when anything it copies changes: the operator's inputs are contract/ and operator/ (no
    # serve_app), the serve image's the root pyproject, serve_app and contract.
    assert "tree_hash images/operator constraints.txt contract operator;" in images_sh
    assert "tree_hash images/serve pyproject.toml constraints.txt serve_app contract;" in images_sh
