"""Incremental detokenization: the text each new token adds, without ever emitting a broken
UTF-8 sequence, and such that the deltas of a stream concatenate to exactly the text of the
whole output.

Decoding one token at a time is wrong twice over: a byte-level token may hold half a UTF-8
character (decoded alone it is U+FFFD), and tokenizers such as SentencePiece drop or add a
leading space depending on what precedes a token. So each step decodes a short window that
starts a few tokens back (the context that fixes spacing), and emits what the new tokens added to
that window's text, unless the text ends in an incomplete character, in which case it waits for
the next token."""

from __future__ import annotations

from typing import Protocol

REPLACEMENT_CHARACTER = "\ufffd"
# Tokens of context decoded before the new ones: enough for any tokenizer's spacing rules.
CONTEXT_TOKENS = 5


class Decoder(Protocol):
    def decode(self, token_ids: list[int]) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, prompt_tail: list[int] | None = None) -> None:
        """`prompt_tail`: the prompt's last tokens, so that the first output token is decoded in
        context (its leading space is kept or dropped as in the full text)."""
        self._tokenizer = tokenizer
        self._token_ids: list[int] = list(prompt_tail or [])[-CONTEXT_TOKENS:]
        # Text up to `_read_offset` has been emitted; `_prefix_offset` starts the context window.
        self._prefix_offset = 0
        self._read_offset = len(self._token_ids)
        self.text = ""

    def push(self, new_token_ids: list[int]) -> str:
        """The text the new tokens complete (possibly empty while a character is incomplete)."""
        self._token_ids.extend(new_token_ids)
        prefix_text = self._tokenizer.decode(self._token_ids[self._prefix_offset:self._read_offset])
        full_text = self._tokenizer.decode(self._token_ids[self._prefix_offset:])
        if full_text.endswith(REPLACEMENT_CHARACTER) or len(full_text) <= len(prefix_text):
            return ""
        delta = full_text[len(prefix_text):]
        self._prefix_offset = max(self._read_offset, len(self._token_ids) - CONTEXT_TOKENS)
        self._read_offset = len(self._token_ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end of the output: whatever is still held back (an incomplete character is
        emitted as U+FFFD, as a full decode would show it)."""
        prefix_text = self._tokenizer.decode(self._token_ids[self._prefix_offset:self._read_offset])
        full_text = self._tokenizer.decode(self._token_ids[self._prefix_offset:])
        self._read_offset = len(self._token_ids)
        delta = full_text[len(prefix_text):] if len(full_text) > len(prefix_text) else ""
        self.text += delta
        return delta
