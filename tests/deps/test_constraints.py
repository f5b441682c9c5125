"""constraints.txt (`make constraints`) is the one lock of every Python version: it is in step with pyproject.toml,
complete (every distribution the project's requirements pull in, with their extras, is pinned), it is what this
venv has, and the Makefile, both Dockerfiles and the local node's wheelhouse install through it. No network."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
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
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(proj["dependencies"])
    for extra in proj["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_the_lock_is_in_step_with_pyproject():
    header = next(line for line in CONSTRAINTS.read_text().splitlines() if line.startswith(lock.HASH_LINE))
    assert header.removeprefix(lock.HASH_LINE) == lock.dependencies_hash(), \
        "pyproject.toml's dependencies changed: run `make constraints`"
    locked = pins()
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


def test_every_installer_uses_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"\$\(VENV\)/\.installed: pyproject\.toml constraints\.txt", makefile)
    assert "$(PIP) install -c constraints.txt -e '.[serve,operator,bench,dev]'" in makefile
    assert "pip install -c constraints.txt '.[operator]'" in (ROOT / "images" / "operator" / "Dockerfile").read_text()
    serve = (ROOT / "images" / "serve" / "Dockerfile").read_text()
    assert "pip install -c /tmp/deps/constraints.txt -r /tmp/deps/serve.txt" in serve
    assert "pip install -c /tmp/constraints.txt huggingface_hub" in serve  # the weights stage
    images_sh = (ROOT / "hack" / "node" / "images.sh").read_text()
    assert 'pip download --quiet --dest "$WHEELHOUSE" -c "$ROOT/constraints.txt" -r "$reqs"' in images_sh
    assert "tree_hash images/serve pyproject.toml constraints.txt serve_app" in images_sh
