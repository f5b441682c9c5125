"""Incremental detokenization with stop sequences: token ids in, safe text deltas out.

The tokenizer side is `tokenizers`' own `DecodeStream` (linear: each token is decoded once, with the few tokens
before it as context), not a re-decode of the whole output per token. `TextStream` adds what the OpenAI API needs
on top: stop sequences that may straddle tokens, never half a character or a partial stop sequence on the wire.
"""

from __future__ import annotations

from typing import Any, List, Optional, Protocol, Sequence


class TokenDecoder(Protocol):
    """Turns one token id at a time into text; `None` while the bytes so far do not end a character."""

    def step(self, token_id: int) -> Optional[str]: ...

    def flush(self) -> str:
        """The text of the tokens held back by `step` (an unfinished character decodes to U+FFFD)."""
        ...


class DecodeStreamDecoder:
    """`TokenDecoder` over a Hugging Face fast tokenizer, using `tokenizers.decoders.DecodeStream`."""

    def __init__(self, tokenizer: Any):
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._backend = tokenizer.backend_tokenizer
        self._stream = DecodeStream(skip_special_tokens=False)
        self._pending: List[int] = []  # ids DecodeStream holds back (an incomplete UTF-8 character so far)

    def step(self, token_id: int) -> Optional[str]:
        piece = self._stream.step(self._backend, int(token_id))
        if piece is None:
            self._pending.append(int(token_id))
            return None
        self._pending.clear()
        return piece

    def flush(self) -> str:
        text = self._tokenizer.decode(self._pending) if self._pending else ""
        self._pending.clear()
        return text


class TextStream:
    """Turns a stream of token ids into text deltas, honouring stop sequences.

    Text that might be the start of a stop sequence is held back until it is resolved, so a client never sees a
    stop sequence; the decoder holds back incomplete UTF-8 characters, so a client never sees half a character.
    Only a stop sequence's length of already-sent text is kept (as look-behind), so each token costs the same.
    """

    def __init__(self, decoder: TokenDecoder, stop: Sequence[str] = ()):
        self._decoder = decoder
        self._stop = [s for s in stop if s]
        self._look_behind = max((len(s) for s in self._stop), default=1) - 1
        self._buf = ""  # decoded text from character `_base` on (not yet sent, plus the look-behind)
        self._base = 0
        self._emitted = 0  # characters of the decoded text already returned
        self._sent: List[str] = []
        self.n_tokens = 0
        self.stopped = False  # a stop sequence was found

    @property
    def text(self) -> str:
        """All text returned so far."""
        return "".join(self._sent)

    def push(self, token_id: int) -> str:
        """Add one generated token; return the newly safe text (maybe empty)."""
        if self.stopped:
            return ""
        self.n_tokens += 1
        piece = self._decoder.step(token_id)
        if piece:
            self._buf += piece
        return self._advance(final=False)

    def finish(self) -> str:
        """The generation ended: release whatever was held back (unless stopped)."""
        if self.stopped or not self.n_tokens:
            return ""
        self._buf += self._decoder.flush()
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        buf, base = self._buf, self._base
        end = base + len(buf)
        if self._stop:
            # A stop sequence may straddle what was already sent: search from a look-behind before it.
            start = max(base, self._emitted - self._look_behind)
            hits = [i for i in (buf.find(s, start - base) for s in self._stop) if i >= 0]
            if hits:
                self.stopped = True
                return self._emit(base + min(hits))
            if not final:
                end -= _held_back(buf, self._stop, self._emitted - base)
        return self._emit(end) if end > self._emitted else ""

    def _emit(self, end: int) -> str:
        delta = self._buf[self._emitted - self._base:end - self._base]
        self._emitted = end
        self._sent.append(delta)
        keep_from = max(self._base, end - self._look_behind)
        self._buf, self._base = self._buf[keep_from - self._base:], keep_from
        return delta


def _held_back(text: str, stops: Sequence[str], floor: int) -> int:
    """Length of the longest suffix of ``text`` (after ``floor``) that starts some stop sequence."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text) - floor), 0, -1):
            if text.endswith(s[:k]):
                best = max(best, k)
                break
    return best
