"""One serving contract (textgen_contract, contract/): the app's AppArgs and the operator's Serving spec derive from it,
and the committed local Serve config is what the operator's builder makes of a default TextGenService."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import textgen_contract as SC
import yaml
from textgen_operator import constants as OC
from textgen_operator.builder import app_args
from textgen_operator.render import render_local_serve_config
from textgen_operator.spec import Serving, TextGenServiceSpec

from serve_app.config import AppArgs

ROOT = Path(__file__).resolve().parents[2]
KNOBS = {"max_batch_size": SC.MAX_BATCH_SIZE, "max_tokens_limit": SC.MAX_TOKENS_LIMIT,
         "default_max_tokens": SC.DEFAULT_MAX_TOKENS, "max_queued_requests": SC.MAX_QUEUED_REQUESTS,
         "torch_threads": SC.TORCH_THREADS}


def bounds(model, name: str) -> tuple:
    f = model.model_fields[name]
    ge = next((m.ge for m in f.metadata if getattr(m, "ge", None) is not None), None)
    le = next((m.le for m in f.metadata if getattr(m, "le", None) is not None), None)
    return f.default, ge, le


def test_the_contract_module_needs_nothing_but_the_standard_library():
    tree = ast.parse((ROOT / "contract" / "textgen_contract" / "__init__.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


@pytest.mark.parametrize("model", [AppArgs, Serving], ids=["app", "operator"])
def test_defaults_and_bounds_come_from_the_contract(model):
    for name, b in KNOBS.items():
        assert bounds(model, name) == (b.default, b.ge, b.le), name
    assert model.model_fields["dtype"].default == SC.DEFAULT_DTYPE


def test_dtype_choices_agree():
    for model in (AppArgs, Serving):
        for d in SC.DTYPES:
            assert model.model_validate({"dtype": d}).dtype == d
    crd = yaml.safe_load((ROOT / "manifests" / "crd" / "textgen.dev_textgenservices.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert tuple(schema["serving"]["properties"]["dtype"]["enum"]) == SC.DTYPES


def test_every_app_arg_is_set_by_the_operator_and_nothing_else():
    full = TextGenServiceSpec.model_validate({
        "model": {"name": "m", "servedModelName": "n", "fallbackModelDir": "/f"},
        "serving": {"torchThreads": 2}})
    assert set(app_args(full)) == set(AppArgs.model_fields)
    assert AppArgs.model_validate(app_args(TextGenServiceSpec())) == AppArgs()  # same defaults both sides


def test_names_and_port_are_the_contract():
    assert (OC.APP_NAME, OC.APP_IMPORT_PATH, OC.MODEL_DEPLOYMENT, OC.INGRESS_DEPLOYMENT, OC.SERVE_PORT) == (
        SC.APP_NAME, SC.APP_IMPORT_PATH, SC.MODEL_DEPLOYMENT, SC.INGRESS_DEPLOYMENT, SC.SERVE_PORT)


def test_default_max_ongoing_requests_follow_the_batch():
    assert Serving().model_max_ongoing_requests == SC.model_max_ongoing_requests(SC.MAX_BATCH_SIZE.default)
    assert Serving.model_validate({"maxBatchSize": 8}).model_max_ongoing_requests == 16
    assert Serving.model_validate({"maxOngoingRequests": 40}).model_max_ongoing_requests == 40


def test_committed_local_serve_config_is_generated():
    committed = (ROOT / "serve_app" / "config" / "local.yaml").read_text()
    assert committed == render_local_serve_config(), "serve_app/config/local.yaml drifted: run `make serve-config`"
    cfg = yaml.safe_load(committed)
    assert cfg["http_options"]["host"] == "127.0.0.1"
    assert AppArgs.model_validate(cfg["applications"][0]["args"]).dtype == SC.DEFAULT_DTYPE
