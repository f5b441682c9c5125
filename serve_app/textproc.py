"""Pure request/response helpers of the serve app (no Ray, no torch): unit-testable.

- strict UTF-8 parsing of query strings and JSON bodies (bad bytes are a 400, never a 500);
- the OpenAI completions request model and its validation against the app's limits;
- OpenAI-shaped error bodies and completion/SSE payloads.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Union
from urllib.parse import unquote_to_bytes

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_STOP_SEQUENCES = 4
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_CHARS_PER_TOKEN = 128  # GPT-2's longest token is 128 bytes: longer prompts cannot fit the context
MAX_STOP_LENGTH = 256
# Below these, sampling breaks numerically (logits / temperature overflow to inf; top_p rounds to 0 in float32 and
# masks every token). Temperature 0 means greedy, so a client wanting "almost greedy" has a way to say it.
MIN_TEMPERATURE = 0.01
MIN_TOP_P = 1e-6


class RequestError(Exception):
    """A client error: becomes an OpenAI-shaped JSON error with ``status`` (4xx)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: Optional[str] = None,
        code: Optional[str] = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> Dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: Optional[str] = None,
    code: Optional[str] = None,
) -> Dict[str, Any]:
    """The OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --------------------------------------------------------------------------- input decoding


def parse_query_string(raw: bytes) -> Dict[str, str]:
    """Parse a raw query string strictly: percent-escapes and raw bytes must be valid UTF-8.

    Starlette's own parser replaces bad bytes with U+FFFD; we want a 400 instead. For repeated
    keys the first value wins. ``+`` means a space (form encoding), as browsers and curl send it.
    """
    params: Dict[str, str] = {}
    if not raw:
        return params
    for part in raw.split(b"&"):
        if not part:
            continue
        key, _, value = part.partition(b"=")
        try:
            k = unquote_to_bytes(key.replace(b"+", b" ")).decode("utf-8")
            v = unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(
                f"query string is not valid UTF-8 (byte {exc.object[exc.start:exc.start + 1]!r} "
                f"at offset {exc.start} of a percent-decoded value)",
                code="invalid_encoding",
            ) from None
        params.setdefault(k, v)
    return params


def parse_json_body(raw: bytes) -> Any:
    """Decode a request body as strict UTF-8 JSON; errors are 400s with a clear message."""
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(f"request body exceeds {MAX_BODY_BYTES} bytes", status=413, code="body_too_large")
    if not raw or not raw.strip():
        raise RequestError("request body is empty; expected a JSON object", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            f"request body is not valid UTF-8 (bad byte at offset {exc.start})",
            code="invalid_encoding",
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="invalid_json",
        ) from None


# --------------------------------------------------------------------------- request model


def find_lone_surrogate(value: Any) -> bool:
    """Whether a decoded JSON value holds a string with a lone UTF-16 surrogate (``"\\ud800"``): valid JSON, but
    not text that can be encoded, tokenized or echoed back."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(find_lone_surrogate(k) or find_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(find_lone_surrogate, value))
    return False


# OpenAI parameters this server cannot honour: accepted only at their neutral value, else a 400 that says so
# (silently ignoring them would answer a different question than the one asked).
_NEUTRAL: Dict[str, Callable[[Any], bool]] = {
    "logprobs": lambda v: v is None,
    "best_of": lambda v: v is None or v == 1,
    "suffix": lambda v: v is None or v == "",
    "logit_bias": lambda v: v is None or v == {},
    "presence_penalty": lambda v: v is None or v == 0,
    "frequency_penalty": lambda v: v is None or v == 0,
    "echo": lambda v: v is None or v is False,
}


def check_supported(data: Dict[str, Any]) -> None:
    for key, neutral in _NEUTRAL.items():
        if key in data and not neutral(data[key]):
            got = repr(data[key])[:80]
            raise RequestError(f"'{key}' is not supported by this server (got {got}); leave it out",
                               param=key, code="unsupported_parameter")


class CompletionRequest(BaseModel):
    """The subset of OpenAI's ``POST /v1/completions`` that this server implements.

    Unknown fields are ignored (clients send many); OpenAI fields we cannot honour are rejected (`check_supported`).
    """

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: Optional[str] = None
    prompt: Union[str, List[str]]
    max_tokens: Optional[int] = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Optional[Union[str, List[str]]] = None
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    echo: bool = False
    user: Optional[str] = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: Union[str, List[str]]) -> Union[str, List[str]]:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("only a single prompt per request is supported (a string or a one-element list)")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if 0 < v < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return v

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: float) -> float:
        if v < MIN_TOP_P:
            raise ValueError(f"must be at least {MIN_TOP_P}")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Optional[Union[str, List[str]]]) -> Optional[Union[str, List[str]]]:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        for s in stops:
            if not s:
                raise ValueError("stop sequences must be non-empty strings")
            if len(s) > MAX_STOP_LENGTH:
                raise ValueError(f"stop sequences must be at most {MAX_STOP_LENGTH} characters")
        return v

    @property
    def prompt_text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt

    @property
    def stop_list(self) -> List[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def parse_completion_request(data: Any) -> CompletionRequest:
    """Validate a decoded JSON body; pydantic errors become one readable 400."""
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object", code="invalid_json")
    for key, value in data.items():
        if find_lone_surrogate(key) or find_lone_surrogate(value):
            param = key if not find_lone_surrogate(key) else None
            raise RequestError("request holds a lone UTF-16 surrogate (e.g. \\ud800), which is not text",
                               param=param, code="invalid_encoding")
    check_supported(data)
    try:
        return CompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc", ())
        param = str(loc[0]) if loc else None  # the top-level field (unions add member names)
        msg = first.get("msg", "invalid request").removeprefix("Value error, ")
        if first.get("type") == "missing":
            msg = f"missing required parameter '{param}'"
        else:
            msg = f"invalid '{param}': {msg}" if param else msg
        raise RequestError(msg, param=param, code="invalid_value") from None


def resolve_max_tokens(max_tokens: Optional[int], *, default: int, limit: int) -> int:
    """Apply the default and the configured bounds to ``max_tokens``."""
    if max_tokens is None:
        return default
    if max_tokens < 1:
        raise RequestError("'max_tokens' must be at least 1", param="max_tokens", code="invalid_value")
    if max_tokens > limit:
        raise RequestError(
            f"'max_tokens' must be at most {limit} on this server (got {max_tokens})",
            param="max_tokens",
            code="invalid_value",
        )
    return max_tokens


def check_prompt_chars(prompt: str, context: int, *, param: str = "prompt") -> None:
    """Reject, without tokenizing, a prompt too long to fit the context whatever its tokens."""
    if len(prompt) > context * MAX_CHARS_PER_TOKEN:
        raise RequestError(
            f"This model's maximum context length is {context} tokens; the {param} has {len(prompt)} "
            f"characters, far more than fit.",
            param=param,
            code="context_length_exceeded",
        )


def check_prompt_length(n_prompt: int, max_tokens: int, context: int, *, param: str = "prompt") -> None:
    """The prompt plus the tokens to generate must fit the model's context window."""
    if n_prompt == 0:
        raise RequestError(f"'{param}' must not be empty", param=param, code="invalid_value")
    if n_prompt + max_tokens > context:
        raise RequestError(
            f"This model's maximum context length is {context} tokens, but you requested "
            f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the "
            f"completion). Shorten the prompt or reduce max_tokens.",
            param=param,
            code="context_length_exceeded",
        )


# --------------------------------------------------------------------------- responses


def new_completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def completion_body(
    *,
    id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: Optional[str],
    prompt_tokens: int,
    completion_tokens: int,
) -> Dict[str, Any]:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def sse_event(data: Union[Dict[str, Any], str]) -> bytes:
    """One server-sent event: ``data: <json>\\n\\n`` (or a literal such as ``[DONE]``)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode("utf-8")


def now() -> int:
    return int(time.time())
