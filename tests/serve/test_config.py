"""AppArgs (the operator contract), the local Serve config file, and run_local's config handling."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_app.config import AppArgs
from serve_app.run_local import DEFAULT_CONFIG, load_serve_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_contract():
    a = AppArgs()
    assert (a.model, a.served_model_name, a.fallback_model_dir) == ("gpt2", None, None)
    assert (a.max_batch_size, a.max_tokens_limit, a.default_max_tokens) == (32, 256, 50)
    assert (a.max_queued_requests, a.torch_threads, a.dtype) == (64, None, "float32")


@pytest.mark.parametrize("bad", [
    {"modle": "gpt2"}, {"max_batch_size": 0}, {"max_batch_size": 257}, {"dtype": "int3"},
    {"batch_wait_timeout_s": 0.005}, {"default_max_tokens": 300},
    {"torch_threads": 0}, {"max_tokens_limit": 2000},
])
def test_bad_args_are_rejected(bad):
    with pytest.raises(ValidationError):
        AppArgs(**bad)


def test_local_yaml_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "serve_app.app:build_app" and app.route_prefix == "/" and app.name == "textgen"
    assert {d.name for d in app.deployments} == {"TextGenAPI", "GPT2Model"}
    AppArgs.model_validate(app.args)  # the args satisfy the builder's type


def test_load_serve_config_resolves_paths_and_overrides(tmp_path):
    cfg = load_serve_config(DEFAULT_CONFIG, port=18123, host="127.0.0.2", cpus=1)
    assert cfg["http_options"]["port"] == 18123 and cfg["http_options"]["host"] == "127.0.0.2"
    args = cfg["applications"][0]["args"]
    assert args["model"] == "gpt2"  # a Hub id stays a Hub id
    assert args["fallback_model_dir"] == str(ROOT / ".models" / "gpt2-random-init")
    model = {d["name"]: d for d in cfg["applications"][0]["deployments"]}["GPT2Model"]
    assert model["ray_actor_options"]["num_cpus"] == 1  # capped to the CPUs here
    # The file itself is not modified.
    assert yaml.safe_load(DEFAULT_CONFIG.read_text())["http_options"]["port"] == 8000


def test_build_app_accepts_typed_and_raw_args():
    from ray.serve import Application

    from serve_app.app import build_app

    assert isinstance(build_app(AppArgs(max_batch_size=2)), Application)
    assert isinstance(build_app({"max_batch_size": 2}), Application)
    with pytest.raises(ValidationError):
        build_app({"bogus": 1})
