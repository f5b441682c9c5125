"""The project's three distributions (root: textgen-serve, operator/: textgen-operator, contract/: textgen-contract)
share one version and split as the images need: the operator's requirements hold nothing of the serve app's, both
depend on the contract at that version, the contract on nothing. No network."""

from __future__ import annotations

import importlib.metadata as md

from packaging.requirements import Requirement

from tests.support import import_script

lock = import_script("hack/deps/constraints.py")

PROJECTS = lock.projects()
SERVE, OPERATOR, CONTRACT = PROJECTS["."], PROJECTS["operator"], PROJECTS["contract"]
# What the serve image needs and the operator image must do without.
SERVE_ONLY = {"ray", "torch", "transformers", "intel-openmp", "fastapi", "uvicorn"}


def names(requirements: list[str]) -> set[str]:
    return {lock.canonical(Requirement(r).name) for r in requirements}


def test_one_version_for_all_three():
    assert {p["name"] for p in PROJECTS.values()} == {"textgen-serve", "textgen-operator", "textgen-contract"}
    assert len({p["version"] for p in PROJECTS.values()}) == 1, {p["name"]: p["version"] for p in PROJECTS.values()}


def test_the_operator_and_the_app_need_this_version_of_the_contract():
    version = CONTRACT["version"]
    for project in (SERVE, OPERATOR):
        (req,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "textgen-contract"]
        assert str(req.specifier) == f"=={version}", (project["name"], str(req))


def test_the_split_follows_the_images():
    assert CONTRACT["dependencies"] == [] and not CONTRACT.get("optional-dependencies")
    assert not names(OPERATOR["dependencies"]) & SERVE_ONLY
    assert not OPERATOR.get("optional-dependencies")
    assert SERVE_ONLY <= names(SERVE["dependencies"])
    assert "textgen-operator" not in names(SERVE["dependencies"])
    assert OPERATOR["scripts"] == {"textgen-operator": "textgen_operator.__main__:main"}


def test_the_venv_has_the_three_distributions_installed():
    """make venv installs each from its own pyproject (editable): the metadata pip recorded is that pyproject's."""
    for project in PROJECTS.values():
        dist = md.distribution(project["name"])
        assert dist.version == project["version"], project["name"]
        assert names(dist.requires or []) >= names(project["dependencies"]), project["name"]
