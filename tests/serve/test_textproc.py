"""Unit tests of the pure request/response helpers (no Ray, no model)."""

import json

import pytest

from serve_app.textproc import (
    RequestError,
    check_prompt_length,
    completion_body,
    parse_completion_request,
    parse_json_body,
    parse_query_string,
    resolve_max_tokens,
    sse_event,
)


def test_query_string_decodes_utf8_and_plus():
    q = parse_query_string(b"query=Hello%20friend%2C%20how&x=a+b&query=second&caf%C3%A9=%E2%9C%93")
    assert q["query"] == "Hello friend, how"  # first value wins
    assert q["x"] == "a b"
    assert q["café"] == "✓"


@pytest.mark.parametrize("raw", [b"query=%FF", b"query=abc%C3", b"query=\xff\xfe", b"%FF=1"])
def test_query_string_rejects_bad_utf8(raw):
    with pytest.raises(RequestError) as e:
        parse_query_string(raw)
    assert e.value.status == 400
    assert e.value.body()["error"]["code"] == "invalid_encoding"


@pytest.mark.parametrize("raw,code", [
    (b"", "invalid_json"), (b"  ", "invalid_json"), (b"{bad", "invalid_json"),
    (b"\xff\xfe{}", "invalid_encoding"), (b'{"prompt": "\xc3"}', "invalid_encoding"),
])
def test_json_body_errors(raw, code):
    with pytest.raises(RequestError) as e:
        parse_json_body(raw)
    assert e.value.status == 400 and e.value.code == code


def test_completion_request_defaults_and_list_prompt():
    r = parse_completion_request({"prompt": ["hi"], "stop": "\n", "future_field": 1})
    assert r.prompt_text == "hi" and r.stop_list == ["\n"] and r.temperature == 1.0 and not r.stream


@pytest.mark.parametrize("body,param", [
    ({}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "temperature": -0.1}, "temperature"),
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_p": 1.01}, "top_p"),
    ({"prompt": "x", "max_tokens": "many"}, "max_tokens"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "stop": [""]}, "stop"),
])
def test_completion_request_rejects(body, param):
    with pytest.raises(RequestError) as e:
        parse_completion_request(body)
    assert e.value.status == 400
    assert e.value.param == param, e.value.message


def test_non_object_body_rejected():
    with pytest.raises(RequestError):
        parse_completion_request([1, 2])


def test_max_tokens_bounds():
    assert resolve_max_tokens(None, default=50, limit=256) == 50
    assert resolve_max_tokens(256, default=50, limit=256) == 256
    for bad in (0, -1, 257):
        with pytest.raises(RequestError) as e:
            resolve_max_tokens(bad, default=50, limit=256)
        assert e.value.param == "max_tokens"


def test_prompt_length_against_context():
    check_prompt_length(974, 50, 1024)
    with pytest.raises(RequestError) as e:
        check_prompt_length(975, 50, 1024)
    assert e.value.code == "context_length_exceeded" and "1025" in e.value.message
    with pytest.raises(RequestError):
        check_prompt_length(0, 5, 1024)


def test_payload_shapes():
    body = completion_body(id="cmpl-1", created=1, model="m", text="t", finish_reason="length",
                           prompt_tokens=2, completion_tokens=3)
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert body["choices"][0]["finish_reason"] == "length" and body["object"] == "text_completion"
    assert sse_event("[DONE]") == b"data: [DONE]\n\n"
    assert json.loads(sse_event({"a": 1})[6:]) == {"a": 1}


def test_oversized_inputs_rejected_without_tokenizing():
    from serve_app.textproc import MAX_BODY_BYTES, check_prompt_chars

    check_prompt_chars("x" * 1024 * 128, 1024)
    with pytest.raises(RequestError) as e:
        check_prompt_chars("x" * (1024 * 128 + 1), 1024)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(RequestError) as e:
        parse_json_body(b" " * (MAX_BODY_BYTES + 1))
    assert e.value.status == 413
