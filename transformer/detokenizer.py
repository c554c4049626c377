"""Incremental detokenization: the text each new token adds, without ever emitting a character
that a later token would change, and such that the deltas of a stream concatenate to exactly the
text of the whole output.

Decoding one token at a time is wrong twice over: a byte-level token may hold part of a UTF-8
character (decoded alone it is U+FFFD), and tokenizers such as SentencePiece drop or add a
leading space depending on what precedes a token. So each step decodes a short window that
starts a few tokens back (the context that fixes spacing), and emits what the new tokens added to
that window's text, except a trailing run of U+FFFD: it may be a character still incomplete,
which the next tokens turn into the real one. Such a character is at most 3 bytes short, and
decoders show at most one U+FFFD per byte, so at most the last 3 of the run are held back; the
rest are bytes that no later token can complete (a model can emit invalid UTF-8, a random-weight
one for many tokens in a row) and go out as they are, as the whole text shows them."""

from __future__ import annotations

from typing import Protocol

REPLACEMENT_CHARACTER = "\ufffd"
# Tokens of context decoded before the new ones: enough for any tokenizer's spacing rules.
CONTEXT_TOKENS = 5
# The most U+FFFD that an incomplete UTF-8 character decodes to (one per byte of its 3 at most).
MAX_INCOMPLETE_CHARACTERS = 3


class Decoder(Protocol):
    def decode(self, token_ids: list[int]) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, prompt_tail: list[int] | None = None) -> None:
        """`prompt_tail`: the prompt's last tokens, so that the first output token is decoded in
        context (its leading space is kept or dropped as in the full text)."""
        self._tokenizer = tokenizer
        self._token_ids: list[int] = list(prompt_tail or [])[-CONTEXT_TOKENS:]
        # The window decoded at each step is _token_ids[_window_start:]; its first _emitted
        # characters are the context's or already emitted; tokens up to _shown_offset have
        # all of their text emitted.
        self._window_start = 0
        self._shown_offset = len(self._token_ids)
        self._emitted = len(tokenizer.decode(self._token_ids)) if self._token_ids else 0
        self.text = ""

    def push(self, new_token_ids: list[int]) -> str:
        """The text the new tokens complete (possibly empty while a character is incomplete)."""
        self._token_ids.extend(new_token_ids)
        window_text = self._tokenizer.decode(self._token_ids[self._window_start:])
        trailing = len(window_text) - len(window_text.rstrip(REPLACEMENT_CHARACTER))
        final = len(window_text) - min(trailing, MAX_INCOMPLETE_CHARACTERS)
        if final <= self._emitted:
            return ""
        delta = window_text[self._emitted:final]
        self._emitted = final
        if final == len(window_text):
            # All shown: the next window starts a few tokens back (at most back to the last
            # time all was shown), so each step decodes a few tokens, not the whole output.
            self._window_start = max(self._shown_offset, len(self._token_ids) - CONTEXT_TOKENS)
            self._shown_offset = len(self._token_ids)
            self._emitted = len(self._tokenizer.decode(self._token_ids[self._window_start:]))
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end of the output: whatever is still held back (an incomplete character is
        emitted as U+FFFD, as a full decode would show it)."""
        window_text = self._tokenizer.decode(self._token_ids[self._window_start:])
        delta = window_text[self._emitted:]
        self._emitted = len(window_text)
        self._shown_offset = len(self._token_ids)
        self.text += delta
        return delta
