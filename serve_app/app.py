"""The Ray Serve application: a FastAPI ingress (``TextGenAPI``) in front of the model (``GPT2Model``,
serve_app.model_deployment).

``build_app`` is the typed application builder named by ``import_path: serve_app.app:build_app`` in a
Serve config or a RayService ``serveConfigV2``; its ``args`` are validated by ``serve_app.config.AppArgs``.

The two deployments scale independently: the ingress is light (parsing, validation, SSE), the model
deployment owns the weights and a continuous-batching ``GenerationEngine``. The ingress reaches the
model through a streaming DeploymentHandle; every generation is a stream of small event dicts
(``start`` | ``error``, ``delta``..., ``end``), aggregated by the ingress for non-streaming answers.

Never a bare 500: bad input is a 4xx; overload (``BackPressureError``, bounded queues), a stopped or dead engine,
a replica that died mid-way are 503 with ``Retry-After``; a model that sends nothing for ``GENERATION_TIMEOUT_S``
(shorter than the HTTP request timeout) is a 504.
"""

import asyncio
import json
import logging
from typing import Any, Dict, Optional

import textgen_contract as contract
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from serve_app.config import AppArgs
from serve_app.http_body import read_body
from serve_app.model_deployment import GPT2Model, torch_threads_for  # noqa: F401 - re-exported
from serve_app.textproc import (
    RequestError,
    completion_body,
    error_body,
    new_completion_id,
    now,
    parse_completion_request,
    parse_json_body,
    parse_query_string,
    resolve_max_tokens,
    sse_event,
)

logger = logging.getLogger("ray.serve")

RETRY_AFTER_S = 1
HEALTH_TIMEOUT_S = 5.0
# Longest wait for the model's next event: answered with 504 before Serve's own request timeout answers 408.
GENERATION_TIMEOUT_S = contract.REQUEST_TIMEOUT_S - 30


class GenerationFailed(Exception):
    """The model's stream ended in an error: ``response`` is what the client gets."""

    def __init__(self, response: JSONResponse):
        super().__init__(response.status_code)
        self.response = response


# --------------------------------------------------------------------------- the HTTP API

api = FastAPI(
    title="textgen",
    description="GPT-2 text generation on Ray Serve: /generate, OpenAI-style /v1/completions.",
)


def _error(status: int, body: Dict[str, Any], retry_after: bool = False) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if retry_after or status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _overloaded(exc: BaseException) -> JSONResponse:
    return _error(503, error_body(f"server overloaded, retry later ({type(exc).__name__})",
                                  type="server_overloaded", code="overloaded"))


def _unavailable(exc: BaseException) -> JSONResponse:
    return _error(503, error_body(f"the model is unavailable, retry later ({type(exc).__name__})",
                                  type="server_unavailable", code="model_unavailable"))


def _timed_out() -> JSONResponse:
    return _error(504, error_body(f"the model sent nothing for {GENERATION_TIMEOUT_S} s", type="server_timeout",
                                  code="generation_timeout"))


async def _next_event(gen) -> Optional[Dict[str, Any]]:
    """The model's next event (None at the end); any failure becomes `GenerationFailed` with a 503/504 answer."""
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    try:
        return await asyncio.wait_for(gen.__anext__(), GENERATION_TIMEOUT_S)
    except StopAsyncIteration:
        return None
    except asyncio.CancelledError:  # the client went away: free the engine slot
        gen.cancel()
        raise
    except asyncio.TimeoutError:
        gen.cancel()
        raise GenerationFailed(_timed_out()) from None
    except (BackPressureError, DeploymentUnavailableError) as exc:
        gen.cancel()
        raise GenerationFailed(_overloaded(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the replica died or failed: the client may retry elsewhere
        logger.warning("model call failed: %r", exc)
        gen.cancel()
        raise GenerationFailed(_unavailable(exc)) from None


async def _events(gen):
    """The model's events until its end; an error event (even mid-way) becomes `GenerationFailed`."""
    while (ev := await _next_event(gen)) is not None:
        if ev["event"] == "error":
            gen.cancel()
            raise GenerationFailed(_error(ev["status"], ev["body"]))
        yield ev


@serve.deployment(name=contract.INGRESS_DEPLOYMENT, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
@serve.ingress(api)
class TextGenAPI:
    """HTTP ingress: parsing and validation, OpenAI shapes, SSE; generation happens in GPT2Model."""

    def __init__(self, model: DeploymentHandle, args: Dict[str, Any]):
        self.model = model
        self.args = AppArgs.model_validate(args)
        self._info: Optional[Dict[str, Any]] = None

    async def _model_info(self, timeout: float = HEALTH_TIMEOUT_S) -> Dict[str, Any]:
        if self._info is None:
            self._info = await asyncio.wait_for(self.model.info_dict.remote(), timeout)
        return self._info

    async def _generate_text(self, req: Dict[str, Any]):
        """Non-streaming generation: (start event, text, end event), or raise `GenerationFailed`."""
        first, events, _ = await self._start(req)
        text, end = [], {}
        async for ev in events:
            if ev["event"] == "delta":
                text.append(ev["text"])
            elif ev["event"] == "end":
                end = ev
        return first, "".join(text), end

    async def _start(self, req: Dict[str, Any]):
        """Call the model: (its first event, the rest of its events, the call), or raise `GenerationFailed`."""
        gen = self.model.options(stream=True).generate.remote(req)
        events = _events(gen)
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            raise GenerationFailed(_unavailable(RuntimeError("the model returned no events"))) from None
        return first, events, gen

    # ---------------------------------------------------------------- GET /generate
    @api.get("/generate")
    async def generate(self, request: Request):
        try:
            q = parse_query_string(request.scope.get("query_string", b""))
            query = q.get("query")
            if query is None:
                raise RequestError("missing required query parameter 'query'", param="query", code="missing")
            if not query.strip():
                raise RequestError("query parameter 'query' must not be empty", param="query", code="invalid_value")
            req = self._gen_params(q, param="query")
            req["prompt"] = query
        except RequestError as e:
            return _error(e.status, e.body())
        try:
            _, text, _ = await self._generate_text(req)
        except GenerationFailed as failed:
            return failed.response
        return [{"generated_text": query + text}]

    def _gen_params(self, q: Dict[str, str], *, param: str) -> Dict[str, Any]:
        """Optional sampling knobs of /generate (query parameters), validated like the OpenAI ones."""
        data: Dict[str, Any] = {"prompt": "x"}
        for key in ("max_tokens", "temperature", "top_p", "seed"):
            if key in q:
                data[key] = q[key]
        body = parse_completion_request(data)
        return {
            "max_tokens": resolve_max_tokens(body.max_tokens, default=self.args.default_max_tokens,
                                             limit=self.args.max_tokens_limit),
            "temperature": body.temperature,
            "top_p": body.top_p,
            "seed": body.seed,
            "stop": [],
            "stream": False,
            "prompt_param": param,
        }

    # ---------------------------------------------------------------- POST /v1/completions
    @api.post("/v1/completions")
    async def completions(self, request: Request):
        try:
            body = parse_completion_request(parse_json_body(await read_body(request)))
            max_tokens = resolve_max_tokens(body.max_tokens, default=self.args.default_max_tokens,
                                            limit=self.args.max_tokens_limit)
            if not body.prompt_text:
                raise RequestError("'prompt' must not be empty", param="prompt", code="invalid_value")
        except RequestError as e:
            return _error(e.status, e.body())
        try:
            info = await self._model_info()
        except Exception as exc:  # noqa: BLE001 - model not up yet
            return _overloaded(exc)
        name = info["card"]["id"]
        if body.model is not None and body.model != name:
            return _error(404, error_body(
                f"The model '{body.model}' does not exist; this server serves '{name}' (see /v1/models).",
                param="model", code="model_not_found"))
        cid = new_completion_id()
        req = {"prompt": body.prompt_text, "max_tokens": max_tokens, "temperature": body.temperature,
               "top_p": body.top_p, "seed": body.seed, "stop": body.stop_list, "id": cid,
               "stream": body.stream}
        created = now()
        try:
            if not body.stream:
                first, text, end = await self._generate_text(req)
                return completion_body(id=cid, created=created, model=name, text=text,
                                       finish_reason=end.get("finish_reason"), prompt_tokens=first["prompt_tokens"],
                                       completion_tokens=end.get("completion_tokens", 0))
            first, events, gen = await self._start(req)
        except GenerationFailed as failed:
            return failed.response
        return StreamingResponse(
            self._sse(events, gen, cid=cid, created=created, model=name, prompt_tokens=first["prompt_tokens"]),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sse(self, events, gen, *, cid: str, created: int, model: str, prompt_tokens: int):
        def chunk(text: str, finish_reason: Optional[str], usage: Optional[dict] = None) -> bytes:
            body = {"id": cid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
            if usage is not None:
                body["usage"] = usage
            return sse_event(body)

        finished = False
        try:
            async for ev in events:
                if ev["event"] == "delta":
                    yield chunk(ev["text"], None)
                elif ev["event"] == "end":
                    n = ev["completion_tokens"]
                    yield chunk("", ev["finish_reason"], {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                                          "total_tokens": prompt_tokens + n})
            finished = True
        except GenerationFailed as failed:  # headers are sent: report in-band, with the status it would have had
            err = json.loads(failed.response.body)
            err["error"]["status"] = failed.response.status_code
            yield sse_event(err)
        finally:
            if not finished:
                gen.cancel()  # client went away (or failure): free the engine slot
        yield sse_event("[DONE]")

    # ---------------------------------------------------------------- models, health, stats
    @api.get("/v1/models")
    async def models(self):
        try:
            info = await self._model_info()
        except Exception as exc:  # noqa: BLE001
            return _overloaded(exc)
        return {"object": "list", "data": [info["card"]]}

    @api.get("/healthz")
    async def healthz(self):
        from ray.serve.exceptions import BackPressureError

        try:
            info = await asyncio.wait_for(self.model.info_dict.remote(), HEALTH_TIMEOUT_S)
        except BackPressureError:
            if self._info is not None:  # loaded, and busy: still healthy (the queue bound is doing its job)
                return {"status": "ok", "model": self._info["card"]["id"], "busy": True}
            return _error(503, {"status": "unavailable", "reason": "BackPressureError"})
        except Exception as exc:  # noqa: BLE001 - not loaded yet, or unreachable
            return _error(503, {"status": "unavailable", "reason": type(exc).__name__})
        self._info = self._info or info
        if not info.get("engine_alive"):
            return _error(503, {"status": "unavailable", "reason": info.get("engine_problem") or "engine stopped"})
        return {"status": "ok", "model": info["card"]["id"]}

    @api.get("/stats")
    async def stats(self):
        """Engine counters of one model replica (batch-size histogram, tokens, RSS): for operators and tests."""
        try:
            return await asyncio.wait_for(self.model.stats.remote(), HEALTH_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001
            return _overloaded(exc)


# --------------------------------------------------------------------------- the builder


def build_app(args: AppArgs) -> Application:
    """Typed application builder (``import_path: serve_app.app:build_app``)."""
    if not isinstance(args, AppArgs):  # called directly with a dict
        args = AppArgs.model_validate(args or {})
    backpressure = {"status_code": 503, "retry_after_s": RETRY_AFTER_S}
    raw = args.model_dump()
    model = GPT2Model.options(
        # Enough requests in the replica to keep the engine's batch full while the next ones arrive.
        max_ongoing_requests=contract.model_max_ongoing_requests(args.max_batch_size),
        max_queued_requests=args.max_queued_requests,
        backpressure_config=backpressure,
    ).bind(raw)
    return TextGenAPI.options(
        max_queued_requests=args.max_queued_requests,
        backpressure_config=backpressure,
    ).bind(model, raw)
