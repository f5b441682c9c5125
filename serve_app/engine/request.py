"""What a caller submits (`GenerationRequest`), the errors it may get, and the engine's per-request state.

No torch here: the scheduler works on `Sequence` objects without touching tensors.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from typing import Sequence as Seq


class EngineOverloaded(RuntimeError):
    """The waiting queue is full (``max_waiting``); the API should answer 503 + Retry-After."""


class EngineStopped(RuntimeError):
    """The engine was shut down; no new requests are accepted and running ones are ended with this."""


@dataclass(frozen=True)
class GenerationRequest:
    """One generation request in token ids.

    temperature 0 means greedy (argmax); ``stop_token_ids=None`` means the model's EOS token; stop tokens end the
    request and are NOT yielded (``finish_reason == "stop"``); ``ignore_eos`` drops EOS from the stop set.
    """

    prompt_ids: Seq[int]
    max_new_tokens: int = 50
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | None = None
    ignore_eos: bool = False
    request_id: str | None = None


@dataclass(eq=False)
class Sequence:
    """A request inside the engine: its prompt, where it stands in the KV cache, and how it ends.

    ``generator`` is the request's own random generator (None when greedy); ``loop``/``queue`` carry its tokens
    to the asyncio consumer."""

    req: GenerationRequest
    prompt: list[int]
    stops: frozenset[int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    generator: Any
    id: int
    arrival: float = field(default_factory=time.monotonic)
    pos: int = 0  # tokens in the KV cache
    last_token: int = -1  # next token to feed
    generated: int = 0
    emitted: int = 0
    finish_reason: str | None = None
    cancelled: bool = False
    done: bool = False
    first_token_time: float | None = None

    @property
    def label(self) -> str:
        return self.req.request_id or str(self.id)
