"""Incremental detokenization: stop sequences and partial characters (toy byte tokens), and the real GPT-2
tokenizer through tokenizers' DecodeStream giving exactly what a whole-sequence decode gives."""

import codecs
import random

import pytest

from serve_app.detokenize import DecodeStreamDecoder, TextStream

VOCAB = {1: b"Hel", 2: b"lo", 3: b" wor", 4: b"ld", 5: b"\n", 6: b"\xe2\x9c", 7: b"\x93", 8: b"END", 9: b"!"}


class ByteTokens:
    """A TokenDecoder over VOCAB's byte tokens: `None` while a UTF-8 character is unfinished."""

    def __init__(self):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token_id):
        return self._utf8.decode(VOCAB[token_id]) or None

    def flush(self):
        return self._utf8.decode(b"", final=True)


def run(ids, stop=()):
    ts = TextStream(ByteTokens(), stop)
    out = []
    for i in ids:
        out.append(ts.push(i))
        if ts.stopped:
            break
    out.append(ts.finish())
    return ts, out


def test_stream_without_stop_is_exact():
    ts, out = run([1, 2, 3, 4])
    assert "".join(out) == "Hello world" == ts.text and ts.n_tokens == 4 and not ts.stopped


def test_stream_holds_back_partial_utf8():
    ts, out = run([1, 6, 7, 9])
    assert out[1] == "" and out[2] == "✓"  # half a character is never emitted
    assert "".join(out) == "Hel✓!"


def test_unfinished_character_at_the_end_becomes_a_replacement_char():
    ts, out = run([1, 6])
    assert "".join(out) == "Hel\ufffd" == ts.text


def test_stop_sequence_spanning_tokens_is_cut():
    ts, out = run([1, 2, 3, 4, 9], stop=["o wo"])
    assert ts.stopped and ts.text == "Hell" and "".join(out) == "Hell"
    assert ts.n_tokens == 3  # generation ended at the token completing the stop sequence


def test_stop_prefix_is_released_when_not_a_stop():
    ts, out = run([1, 2, 9], stop=["lo wor"])
    assert not ts.stopped and "".join(out) == "Hello!"


def test_first_of_several_stops_wins():
    ts, _ = run([1, 2, 3, 5, 4], stop=["\n", "wor"])
    assert ts.text == "Hello " and ts.stopped


def test_stop_found_late_in_a_long_stream():
    ids = [1, 2, 3, 4, 5] * 200 + [8]
    ts, out = run(ids, stop=["END"])
    assert ts.stopped and ts.text == "Hello world\n" * 200 and "".join(out) == ts.text


@pytest.fixture(scope="module")
def gpt2_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_decode_stream_equals_whole_decode_on_random_ids(gpt2_tokenizer):
    # Random ids (what a random-init model emits) split multi-byte characters and form invalid UTF-8: the stream
    # must still add up to exactly what one decode of all ids gives.
    rng = random.Random(7)
    for _ in range(20):
        ids = [rng.randrange(len(gpt2_tokenizer)) for _ in range(rng.randrange(1, 80))]
        ts = TextStream(DecodeStreamDecoder(gpt2_tokenizer))
        streamed = "".join(ts.push(i) for i in ids) + ts.finish()
        assert streamed == gpt2_tokenizer.decode(ids)


def test_decode_stream_never_emits_half_a_character(gpt2_tokenizer):
    ids = gpt2_tokenizer.encode("ok ✓ ünï 日本")
    assert len(ids) > len("ok ✓ ünï 日本".split())  # some characters span several tokens
    ts = TextStream(DecodeStreamDecoder(gpt2_tokenizer), stop=["日本"])
    deltas = [ts.push(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert ts.stopped and ts.text == "ok ✓ ünï "
