"""Load GPT-2 (or the honest stand-in) and decide what it is called. No Ray in here.

Resolution order for ``AppArgs.model``:
1. an existing local directory: load it (a ``textgen.json`` marker written by ``make model`` says
   when its weights are random-initialised; then the reported name says so);
2. a Hub id: load it from the local Hugging Face cache or, when the Hub answers, from the Hub.
   When the Hub is unreachable (checked with a short TCP probe so it fails fast, or skipped when
   ``HF_HUB_OFFLINE=1``), or loading fails, and ``fallback_model_dir`` is set: load the stand-in
   and log a LOUD warning. The stand-in is always reported under its own honest name.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

logger = logging.getLogger("ray.serve")

BANNER = "!" * 78


@dataclass
class ModelInfo:
    """What is being served, as reported by /v1/models and in every response."""

    name: str
    source: str
    random_init: bool
    description: str
    fallback: bool = False
    context_length: int = 1024
    eos_token_id: Optional[int] = None
    extra: dict = field(default_factory=dict)

    def as_model_card(self, created: int) -> dict:
        return {
            "id": self.name,
            "object": "model",
            "created": created,
            "owned_by": "textgen-operator",
            "description": self.description,
            "random_init": self.random_init,
            "source": self.source,
            "context_length": self.context_length,
        }


def read_marker(path: Path) -> Optional[dict]:
    marker = path / "textgen.json"
    if marker.is_file():
        try:
            return json.loads(marker.read_text())
        except ValueError:
            return None
    return None


def describe(source: str, served_model_name: Optional[str], *, fallback: bool) -> ModelInfo:
    """Decide the reported name and description of a model source (pure, testable)."""
    path = Path(source)
    marker = read_marker(path) if path.is_dir() else None
    if marker and marker.get("random_init"):
        name = marker.get("served_model_name") or "gpt2-random-init"
        if not name.endswith("random-init"):
            name += "-random-init"
        return ModelInfo(name=name, source=str(path), random_init=True, fallback=fallback,
                         description=marker.get("description", "random-initialised weights"))
    if fallback:
        # A fallback without a marker is still not the model that was asked for.
        return ModelInfo(name=(served_model_name or path.name) + "-fallback", source=str(path),
                         random_init=False, fallback=True,
                         description=f"fallback model loaded from {path}")
    name = served_model_name or (path.name if path.is_dir() else source)
    return ModelInfo(name=name, source=source, random_init=False, description=f"{name} ({source})")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Fast check that the Hugging Face Hub answers at all (TCP connect), honouring HF_HUB_OFFLINE."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _load_from(source: str, *, dtype: str, local_only: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, local_files_only=local_only)
    model.eval()
    return model, tok


def load_model(model: str, *, fallback_model_dir: Optional[str], served_model_name: Optional[str],
               dtype: str = "float32") -> tuple[Any, Any, ModelInfo]:
    """Load the model and tokenizer; return them with the honest ``ModelInfo``."""
    t0 = time.monotonic()
    error: Optional[BaseException] = None
    if Path(model).is_dir():
        m, tok = _load_from(model, dtype=dtype, local_only=True)
        info = describe(model, served_model_name, fallback=False)
    else:
        m = tok = info = None
        try:  # the local HF cache first: no network at all
            m, tok = _load_from(model, dtype=dtype, local_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means "not cached"
            error = exc
        if m is None and hub_reachable():
            try:
                m, tok = _load_from(model, dtype=dtype, local_only=False)
                error = None
            except Exception as exc:  # noqa: BLE001
                error = exc
        elif m is None:
            error = RuntimeError("the Hugging Face Hub is unreachable (or HF_HUB_OFFLINE=1) "
                                 f"and '{model}' is not in the local cache")
        if m is not None:
            info = describe(model, served_model_name, fallback=False)
        else:
            if not fallback_model_dir:
                raise RuntimeError(f"cannot load model '{model}': {error}") from error
            m, tok = _load_from(fallback_model_dir, dtype=dtype, local_only=True)
            info = describe(fallback_model_dir, served_model_name, fallback=True)
            logger.warning(
                "\n%s\n!!! MODEL '%s' COULD NOT BE LOADED: %s\n!!! SERVING THE FALLBACK %s AS '%s'\n"
                "!!! %s\n%s", BANNER, model, error, fallback_model_dir, info.name, info.description,
                BANNER,
            )
    cfg = m.config
    info.context_length = int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", 1024))
    info.eos_token_id = tok.eos_token_id
    if info.random_init and not info.fallback:
        logger.warning("\n%s\n!!! SERVING RANDOM-INITIALISED WEIGHTS from %s as '%s' (not GPT-2)\n%s",
                       BANNER, info.source, info.name, BANNER)
    logger.info("loaded %s from %s in %.1fs", info.name, info.source, time.monotonic() - t0)
    return m, tok, info
