"""Static checks of the Dockerfiles (no Docker engine here): pinned bases, non-root users, no secrets, and the
Ray/torch/transformers versions in the serve image matching the operator's CRD defaults and pyproject.toml."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chart.chart_utils import ROOT, crd

IMAGES = ROOT / "images"
DOCKERFILES = {"operator": IMAGES / "operator" / "Dockerfile", "serve": IMAGES / "serve" / "Dockerfile"}


@dataclass
class Stage:
    image: str  # FROM, with ARG defaults substituted
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """A small Dockerfile reader: line continuations, heredocs, ARG defaults, stages."""
    lines = path.read_text().splitlines()
    instructions: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        text = line
        while text.endswith("\\") and i < len(lines):
            text = text[:-1] + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<-?'?\"?([A-Z]+)'?\"?", text)
        if heredoc:  # the heredoc body belongs to this instruction
            body = []
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            text += "\n" + "\n".join(body)
        instr, _, rest = text.strip().partition(" ")
        instructions.append((instr.upper(), rest.strip()))

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instr, rest in instructions:
        if instr == "ARG":
            name, _, default = rest.partition("=")
            scope = stages[-1].instructions if stages else None
            if scope is None:  # a global default may use earlier global ARGs (RAY_IMAGE uses RAY_VERSION)
                global_args[name] = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), default)
            else:
                scope.append((instr, rest))
        elif instr == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], parts[0])
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        else:
            stages[-1].instructions.append((instr, rest))
    return global_args, stages


def stage_args(stage: Stage, global_args: dict[str, str]) -> dict[str, str]:
    out = {}
    for instr, rest in stage.instructions:
        if instr == "ARG":
            name, _, default = rest.partition("=")
            out[name] = default or global_args.get(name, "")
    return out


def pyproject_pins() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = {}
    for dep in data["project"]["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", dep.strip())
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_bases_are_pinned(name):
    _, stages = parse(DOCKERFILES[name])
    stage_names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.image in stage_names:
            continue
        assert "$" not in stage.image, f"unresolved ARG in FROM {stage.image}"
        repo, sep, tag = stage.image.rpartition(":")
        assert sep and "/" not in tag, f"{name}: FROM {stage.image} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: FROM {stage.image} is not a pinned version"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_final_stage_runs_as_numeric_non_root_user(name):
    _, stages = parse(DOCKERFILES[name])
    users = [rest for instr, rest in stages[-1].instructions if instr == "USER"]
    assert users, f"{name}: the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, f"{name}: USER {users[-1]} is not a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) > 0) or gid == "100"


SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|CREDENTIAL|AUTH)", re.I)
SECRET_VALUE = re.compile(r"(hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{20,}|-----BEGIN [A-Z ]*PRIVATE KEY)")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_no_secrets(name):
    text = DOCKERFILES[name].read_text()
    assert not SECRET_VALUE.search(text)
    _, stages = parse(DOCKERFILES[name])
    for stage in stages:
        for instr, rest in stage.instructions:
            if instr in ("ENV", "ARG"):
                for token in shlex.split(rest):
                    key = token.split("=", 1)[0]
                    assert not SECRET_NAME.search(key), f"{name}: {instr} {key} looks like a secret"
            if instr == "RUN":
                assert "--mount=type=secret" not in rest or "env=" not in rest
                assert not re.search(r"(login|--token|HF_TOKEN|HUGGING_FACE_HUB_TOKEN)", rest), rest


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copy_sources_exist_and_context_ignores_state(name):
    _, stages = parse(DOCKERFILES[name])
    for stage in stages:
        for instr, rest in stage.instructions:
            if instr != "COPY" or "--from=" in rest:
                continue
            sources = [t for t in shlex.split(rest) if not t.startswith("--")][:-1]
            for src in sources:
                assert (ROOT / src).exists(), f"{name}: COPY {src}: no such path in the repository"
    ignore = (DOCKERFILES[name].parent / "Dockerfile.dockerignore").read_text().split()
    for path in (".venv", ".cache", ".cluster", ".models", ".git"):
        assert path in ignore


def test_operator_image_is_slim_and_has_no_torch():
    _, stages = parse(DOCKERFILES["operator"])
    assert all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+", s.image) for s in stages)
    runs = " ".join(rest for s in stages for instr, rest in s.instructions if instr == "RUN")
    installs = re.findall(r"pip install ([^&]+)", runs)
    # The operator's and the contract's distributions only: nothing of the serve app is copied or installed.
    assert any("./contract ./operator" in i for i in installs), installs
    assert not any(re.search(r"torch|ray|transformers|\[serve|serve\]|\.\[|serve_app", i) for i in installs), installs
    copies = [rest for s in stages for instr, rest in s.instructions if instr == "COPY"]
    assert not [c for c in copies if "serve_app" in c or "pyproject.toml" in c.split()[:-1]], copies
    assert "! /opt/venv/bin/python -c \"import torch\"" in runs  # the build fails if torch sneaks in
    assert "! /opt/venv/bin/python -c \"import serve_app\"" in runs  # ... or the serve app does
    entry = [rest for instr, rest in stages[-1].instructions if instr == "ENTRYPOINT"]
    assert entry == ['["python", "-m", "textgen_operator"]']


def test_serve_image_versions_match_the_operator_and_pyproject():
    from textgen_operator.constants import RAY_VERSION

    global_args, stages = parse(DOCKERFILES["serve"])
    final = stages[-1]
    assert global_args["RAY_VERSION"] == RAY_VERSION, (
        f"images/serve/Dockerfile RAY_VERSION={global_args['RAY_VERSION']} but textgen_operator.RAY_VERSION="
        f"{RAY_VERSION}")
    assert final.image == f"rayproject/ray:{RAY_VERSION}-py311-cpu"
    pins = pyproject_pins()
    assert pins["ray"] == RAY_VERSION, "pyproject.toml's ray[serve] pin differs from the operator's RAY_VERSION"
    args = stage_args(final, global_args)
    runs = "\n".join(rest for instr, rest in final.instructions if instr == "RUN")
    # Users get CPU-only torch from PyTorch's CPU index unless they override the build arg; its version and every
    # other package's come from constraints.txt, the packages from pyproject.toml's dependencies (ray[serve]==RAY_VERSION)
    # but the project's own textgen-contract, which the image copies as source.
    assert args["TORCH_INDEX_ARGS"] == '"--index-url https://download.pytorch.org/whl/cpu"'
    assert 'pip install --no-deps ${TORCH_INDEX_ARGS} "$(grep \'^torch==\' /tmp/deps/constraints.txt)"' in runs
    assert "pip install -c /tmp/deps/constraints.txt -r /tmp/deps/serve.txt" in runs
    assert "p['dependencies'] if not d.startswith('textgen-contract')" in runs
    assert 'grep -qx "ray\\[serve\\]==${RAY_VERSION}"' in runs
    installs = [seg for seg in re.split(r"&&|\n", runs) if "pip install" in seg]
    assert installs and not [i for i in installs if re.search(r"==[\d$]", i)], "versions belong in constraints.txt"
    # The Python of the base (py311) is the project's: the venv that runs the tests is 3.11 too.
    import sys

    assert sys.version_info[:2] == (3, 11)


def test_serve_image_bakes_gpt2_and_the_app():
    global_args, stages = parse(DOCKERFILES["serve"])
    weights = next(s for s in stages if s.name == "weights")
    wargs = stage_args(weights, global_args)
    assert wargs["MODEL_ID"] == "gpt2"
    body = "\n".join(rest for instr, rest in weights.instructions if instr == "RUN")
    assert "snapshot_download(" in body and "model.safetensors" in body and '"/models/gpt2"' in body
    final = stages[-1]
    copies = [rest for instr, rest in final.instructions if instr == "COPY"]
    # /models comes from the Hub stage unless a build selects the local-directory stage (hack/node/images.sh).
    assert global_args["WEIGHTS_STAGE"] == "weights"
    assert next(s for s in stages if s.name == "weights-selected").image == "weights"
    assert any(c.startswith("--from=weights-selected") and "/models" in c for c in copies)
    assert any("serve_app/ /home/ray/app/serve_app/" in c for c in copies)
    assert any("contract/textgen_contract/ /home/ray/app/textgen_contract/" in c for c in copies)
    runs = "\n".join(rest for instr, rest in final.instructions if instr == "RUN")
    assert "import textgen_contract, serve_app.config" in runs  # the build fails unless both import from the app path
    env = " ".join(rest for instr, rest in final.instructions if instr == "ENV")
    assert "PYTHONPATH=/home/ray/app" in env and "HF_HOME=/models/hf" in env


def test_serve_image_pins_the_weights_and_keeps_code_out_of_the_runtime_users_hands():
    global_args, stages = parse(DOCKERFILES["serve"])
    weights = next(s for s in stages if s.name == "weights")
    assert re.fullmatch(r"[0-9a-f]{40}", stage_args(weights, global_args)["MODEL_REVISION"]), "pin a Hub commit"
    final = stages[-1]
    # The app and the weights are COPY'd without --chown (root's), after `USER root`, and the runtime USER is last.
    copies = [rest for instr, rest in final.instructions
              if instr == "COPY" and re.search(r"/models|serve_app|textgen_contract", rest)]
    assert len(copies) == 3 and not any("--chown" in c for c in copies), copies
    users = [rest for instr, rest in final.instructions if instr == "USER"]
    assert users[-1] == "1000:100" and "root" in users[:-1]
    runs = "\n".join(rest for instr, rest in final.instructions if instr == "RUN")
    assert "chmod -R a+rX,go-w /home/ray/app" in runs and "compileall" in runs
    selected = next(s for s in stages if s.name == "weights-selected")
    assert ("RUN", "chmod -R a+rX,go-w /models") in selected.instructions
    # Intel OpenMP preloaded (serve_app/openmp.py), checked at build time.
    env = " ".join(rest for instr, rest in final.instructions if instr == "ENV")
    assert "LD_PRELOAD=/usr/local/lib/textgen-libiomp5.so" in env
    from serve_app.openmp import replica_env

    wanted = {k: v for k, v in replica_env({}).items() if k != "LD_PRELOAD"}  # the rest as make run's replicas get it
    assert wanted.keys() >= {"KMP_BLOCKTIME", "THP_MEM_ALLOC_ENABLE"}
    for key, value in wanted.items():
        assert f"{key}={value}" in env, f"the serve image must set {key}={value} as serve_app/openmp.py does"
    assert "OMP_WAIT_POLICY" not in env
    assert "loaded_runtime() == 'intel'" in runs


def _properties(node, name):
    """Every schema node of a property called `name`, anywhere in a CRD schema."""
    if isinstance(node, dict):
        for key, child in node.get("properties", {}).items():
            if key == name:
                yield child
            yield from _properties(child, name)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from _properties(node[key], name)


def test_crd_defaults_use_the_same_ray_version_and_serve_image():
    """The CRD's default rayVersion is RAY_VERSION, and its default image is the one `make images` builds."""
    import yaml
    from textgen_operator.constants import DEFAULT_IMAGE, RAY_VERSION

    (version,) = crd()["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    ray_versions = [p.get("default") for p in _properties(schema, "rayVersion")]
    assert ray_versions == [RAY_VERSION], ray_versions
    images = [p.get("default") for p in _properties(schema["properties"]["spec"], "image")]
    assert DEFAULT_IMAGE in images, images
    app_version = yaml.safe_load((ROOT / "charts" / "textgen-operator" / "Chart.yaml").read_text())["appVersion"]
    assert DEFAULT_IMAGE == f"textgen-serve:{app_version}", "mk/deploy.mk's SERVE_IMAGE default differs"
