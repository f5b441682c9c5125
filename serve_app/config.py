"""Typed arguments of the serve application (``args`` in a Serve config / RayService ``serveConfigV2``).

Defaults and bounds come from `textgen_contract`, shared with the operator: unknown keys are rejected, so a typo in a
TextGenService or a serve config fails the deploy instead of being silently ignored.
"""

from __future__ import annotations

from typing import Literal, Optional

import textgen_contract as C
from pydantic import BaseModel, ConfigDict, Field, model_validator


class AppArgs(BaseModel):
    """Arguments of ``serve_app.app:build_app``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(
        "gpt2", description="Hugging Face Hub id or a local directory (save_pretrained layout)."
    )
    served_model_name: Optional[str] = Field(
        None,
        description="Name reported by /v1/models and in responses (default: derived from `model`). "
        "Ignored when the random-initialised fallback is served: that one is always named honestly.",
    )
    fallback_model_dir: Optional[str] = Field(
        None,
        description="Stand-in model directory used, with a loud warning, when `model` cannot be loaded "
        "(e.g. the Hub is unreachable). Built by `make model`.",
    )
    max_batch_size: int = Field(C.MAX_BATCH_SIZE.default, ge=C.MAX_BATCH_SIZE.ge, le=C.MAX_BATCH_SIZE.le,
                                description="Most requests decoded together in one engine step.")
    max_tokens_limit: int = Field(C.MAX_TOKENS_LIMIT.default, ge=C.MAX_TOKENS_LIMIT.ge, le=C.MAX_TOKENS_LIMIT.le)
    default_max_tokens: int = Field(C.DEFAULT_MAX_TOKENS.default, ge=C.DEFAULT_MAX_TOKENS.ge,
                                    le=C.DEFAULT_MAX_TOKENS.le)
    max_queued_requests: int = Field(
        C.MAX_QUEUED_REQUESTS.default, ge=C.MAX_QUEUED_REQUESTS.ge, le=C.MAX_QUEUED_REQUESTS.le,
        description="Requests waiting for a batch slot (per replica, and per caller of each deployment) before "
        "new ones get 503.")
    torch_threads: Optional[int] = Field(
        C.TORCH_THREADS.default, ge=C.TORCH_THREADS.ge, le=C.TORCH_THREADS.le,
        description="Torch intra-op threads (default: the replica's CPU share).")
    dtype: Literal[C.DTYPES] = Field(  # type: ignore[valid-type]
        C.DEFAULT_DTYPE,
        description="Engine compute dtype. bfloat16 and int8 (dynamically quantized linear layers) change numerics "
        "(guarded by tests/engine/test_quality.py); auto picks bfloat16 where the CPU has native bf16 "
        "(AMX/AVX-512 BF16), else float32.",
    )

    @model_validator(mode="after")
    def _default_within_limit(self) -> "AppArgs":
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds "
                f"max_tokens_limit ({self.max_tokens_limit})"
            )
        return self
