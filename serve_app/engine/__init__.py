"""Generation engine: iteration-level (continuous) batching for GPT-2 on CPU, no Ray inside.

One module per job (see bench/ENGINE.md for the design and its measurements):

* `request`   what a caller submits (`GenerationRequest`), the errors it may get, per-request state;
* `scheduler` pure Python: which requests run in the next step, in which KV-cache slots;
* `kv_cache`  the slot-based KV cache tensors;
* `model_runner` the runner interface (+ the stock transformers runner for A/B); `gpt2_runner` + `linear`:
  our batched GPT-2 forward pass;
* `sampler`   greedy / temperature / top-p token choice;
* `core`      `GenerationEngine`: the step loop in a thread and the asyncio streams.

Usage::

    engine = GenerationEngine(model, max_batch_size=16)
    async for token_id in engine.generate(GenerationRequest(prompt_ids=[...], max_new_tokens=50, temperature=0)):
        ...
    engine.stats(); engine.shutdown()

`generate()` submits the request immediately (it is a plain method returning a `GenerationStream`), so
`EngineOverloaded` / `ValueError` are raised at the call, before the first token.
"""

from serve_app.engine.core import BATCH_SIZE_BUCKETS, GenerationEngine, GenerationStream
from serve_app.engine.dtypes import native_bf16, resolve_dtype
from serve_app.engine.request import EngineOverloaded, EngineStopped, GenerationRequest

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "EngineOverloaded",
    "EngineStopped",
    "GenerationEngine",
    "GenerationRequest",
    "GenerationStream",
    "native_bf16",
    "resolve_dtype",
]
