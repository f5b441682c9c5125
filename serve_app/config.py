"""Typed arguments of the serve application (``args`` in a Serve config / RayService ``serveConfigV2``).

The contract with the operator lives in HACKING.md: unknown keys are rejected, so a typo in a
TextGenService or a serve config fails the deploy instead of being silently ignored.
"""

from __future__ import annotations

from typing import Literal, Optional

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
    max_batch_size: int = Field(16, ge=1, le=512)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=10)
    max_tokens_limit: int = Field(256, ge=1, le=1023)
    default_max_tokens: int = Field(50, ge=1, le=1023)
    max_queued_requests: int = Field(64, ge=1)
    torch_threads: Optional[int] = Field(
        None, ge=1, le=256, description="Torch intra-op threads (default: the replica's CPU share)."
    )
    dtype: Literal["float32", "bfloat16", "int8", "auto"] = Field(
        "float32",
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
