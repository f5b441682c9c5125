"""tools/make_model.py outputs and the honest model naming of serve_app.loading."""

import json

import pytest

from serve_app.loading import describe, hub_reachable, load_model
from tests.support import import_script


def test_tiny_model_has_the_real_gpt2_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's own ids
    assert tok.encode(" the") == [262]
    assert tok.eos_token_id == 50256 and len(tok) == 50257
    text = "Hello friend, how are you? ünïcödé ✓"
    assert tok.decode(tok.encode(text)) == text


def test_tiny_model_config_and_marker(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert (cfg["model_type"], cfg["n_layer"], cfg["n_embd"], cfg["n_head"]) == ("gpt2", 2, 64, 2)
    assert cfg["vocab_size"] == 50257 and cfg["n_positions"] == 1024
    assert (tiny_model_dir / "model.safetensors").is_file()
    marker = json.loads((tiny_model_dir / "textgen.json").read_text())
    assert marker["random_init"] is True and marker["served_model_name"].endswith("random-init")


def test_make_model_is_idempotent(tiny_model_dir):
    make_model = import_script("tools/make_model.py")
    before = (tiny_model_dir / "model.safetensors").stat().st_mtime_ns
    assert make_model.main(["--out", str(tiny_model_dir.parent), "--only", "gpt2-tiny-random-init"]) == 0
    assert (tiny_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_random_init_dir_is_never_called_gpt2(tiny_model_dir):
    info = describe(str(tiny_model_dir), "gpt2", fallback=False)
    assert info.name == "gpt2-tiny-random-init" and info.random_init
    assert "RANDOM" in info.description


def test_offline_hub_falls_back_loudly_and_honestly(tiny_model_dir, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tiny_model_dir.parent / "no-hf-cache"))  # nothing cached
    assert hub_reachable() is False
    caplog.set_level("WARNING", logger="ray.serve")
    model, tok, info = load_model("gpt2", fallback_model_dir=str(tiny_model_dir), served_model_name="gpt2")
    assert info.fallback and info.random_init and info.name == "gpt2-tiny-random-init"
    assert info.context_length == 1024 and info.eos_token_id == 50256
    assert "COULD NOT BE LOADED" in caplog.text and "gpt2-tiny-random-init" in caplog.text


def test_offline_hub_without_fallback_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match="cannot load model 'gpt2'"):
        load_model("gpt2", fallback_model_dir=None, served_model_name=None)
