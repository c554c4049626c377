"""The checkpoint's tokenizer and chat template, loaded offline and without torch (the transformer
holds no model), plus the context limit that prompts are checked against before anything reaches
the predictor."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

# Texts longer than this are tokenized in a worker thread, so a huge prompt does not stall every
# other stream on the event loop; shorter ones cost less than the thread hop.
INLINE_TOKENIZE_CHARS = 16_384
INLINE_DECODE_TOKENS = INLINE_TOKENIZE_CHARS // 4
# A chat template runs in Python (jinja2) once per message: many short messages cost as much as
# a long text (10,000 one-word messages take tens of milliseconds).
INLINE_TEMPLATE_MESSAGES = 64
# tokenizer_config.json's model_max_length is a huge sentinel when the checkpoint does not set it.
UNSET_MODEL_MAX_LENGTH = 10**9


class TokenizerLoadError(RuntimeError):
    """The directory holds no usable tokenizer."""


class ChatTemplateError(ValueError):
    """The messages cannot be rendered: no template, or the template refused them."""


class UnencodableTextError(ValueError):
    """The text has a lone surrogate (JSON can carry one, as "\\ud800"): it is not Unicode text,
    and has no UTF-8 form for the tokenizer to read."""


@dataclass(frozen=True, slots=True)
class ConversationTurn:
    """A chat message reduced to what a chat template reads."""

    role: str
    content: str
    # An assistant's tool calls (as templates read them) and a tool message's call id.
    tool_calls: tuple[dict, ...] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def template_form(self) -> dict:
        message = {"role": self.role, "content": self.content}
        if self.tool_calls is not None:
            message["tool_calls"] = list(self.tool_calls)
        for field in ("tool_call_id", "name"):
            if (value := getattr(self, field)) is not None:
                message[field] = value
        return message


class TextTokenizer:
    """Text <-> token ids for one checkpoint directory."""

    def __init__(self, directory: str | Path, max_model_len: int | None = None) -> None:
        directory = Path(directory)
        if not (directory / "tokenizer.json").is_file():
            raise TokenizerLoadError(f"no tokenizer.json in {directory} (a fast tokenizer is required)")
        try:
            self._tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TokenizerLoadError(f"cannot load the tokenizer in {directory}: {exc}") from None
        # Hot paths (prompt encoding, per-token decoding) call the Rust tokenizer directly: what
        # the transformers wrapper adds costs several times the work itself on a short prompt.
        # Set as the wrapper sets it for every call: no truncation, no padding, special-token
        # text in a prompt read as the special token.
        self._backend = self._tokenizer.backend_tokenizer
        self._backend.no_truncation()
        self._backend.no_padding()
        self._backend.encode_special_tokens = False
        self.max_model_len = max_model_len or _context_limit(directory, self._tokenizer.model_max_length)
        self.has_chat_template = bool(self._tokenizer.chat_template)
        logger.info(
            "tokenizer from %s: vocabulary %d, context limit %d tokens, chat template %s",
            directory, len(self._tokenizer), self.max_model_len, "yes" if self.has_chat_template else "no",
        )

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    def encode(self, text: str) -> list[int]:
        """A completion prompt's ids, with the special tokens the tokenizer adds (e.g. BOS)."""
        return self._encode_ids(text, add_special_tokens=True)

    @property
    def chat_template(self) -> str | None:
        return self._tokenizer.chat_template

    def encode_chat(self, messages: list[ConversationTurn], add_generation_prompt: bool = True,
                    tools: list[dict] | None = None) -> list[int]:
        """A conversation rendered by the checkpoint's chat template, with the tools offered (as
        OpenAI's {"type": "function", "function": {...}}, which templates that know tools read).
        The template writes its own special tokens, so none are added on top (that would double
        the BOS)."""
        if not self.has_chat_template:
            raise ChatTemplateError("this model has no chat template; use the completions API with a plain prompt")
        conversation = [message.template_form() for message in messages]
        try:
            text = self._tokenizer.apply_chat_template(
                conversation, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except Exception as exc:  # jinja2 raises TemplateError subclasses, and raise_exception() in templates
            raise ChatTemplateError(f"the chat template refused these messages: {exc}") from None
        return self._encode_ids(text, add_special_tokens=False)

    def _encode_ids(self, text: str, add_special_tokens: bool) -> list[int]:
        # The batch call's "fast" variant skips the character offsets, a third of the work for
        # ids alone (one text: no thread pool is involved with TOKENIZERS_PARALLELISM=false,
        # which the transformer sets).
        try:
            return self._backend.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids
        except TypeError:
            # The Rust tokenizer cannot take a str without a UTF-8 form, and says so with an
            # unrelated message; checked only then, so that valid text pays nothing for it.
            check_encodable(text)
            raise

    async def encode_async(self, text: str) -> list[int]:
        if len(text) <= INLINE_TOKENIZE_CHARS:
            return self.encode(text)
        return await asyncio.to_thread(self.encode, text)

    async def encode_chat_async(self, messages: list[ConversationTurn], add_generation_prompt: bool = True,
                                tools: list[dict] | None = None) -> list[int]:
        if (len(messages) <= INLINE_TEMPLATE_MESSAGES and not tools
                and sum(len(message.content) for message in messages) <= INLINE_TOKENIZE_CHARS):
            return self.encode_chat(messages, add_generation_prompt)
        return await asyncio.to_thread(self.encode_chat, messages, add_generation_prompt, tools)

    def decode(self, token_ids: list[int]) -> str:
        """Text of the ids, special tokens skipped (what a client reads), spaces as decoded (no
        clean-up: it would make streamed deltas differ from the whole text)."""
        return self._backend.decode(token_ids, skip_special_tokens=True)

    async def decode_async(self, token_ids: list[int]) -> str:
        if len(token_ids) <= INLINE_DECODE_TOKENS:
            return self.decode(token_ids)
        return await asyncio.to_thread(self.decode, token_ids)

    def token_text(self, token_id: int) -> str:
        """One token on its own, as OpenAI's logprobs show it (special tokens included)."""
        return self._backend.decode([token_id], skip_special_tokens=False)


def check_encodable(text: str) -> None:
    """Raise UnencodableTextError if `text` has a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnencodableTextError(
            f"the text has a lone surrogate (U+{ord(text[exc.start]):04X}), which is not Unicode text: "
            "send the character whole (both halves of a surrogate pair) or leave it out"
        ) from None


def _context_limit(directory: Path, tokenizer_limit: int) -> int:
    """The checkpoint's context length: config.json's max_position_embeddings (what the predictor
    uses too), else the tokenizer's model_max_length."""
    config_path = directory / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            if isinstance(config.get(key), int) and config[key] > 0:
                return config[key]
    if 0 < tokenizer_limit < UNSET_MODEL_MAX_LENGTH:
        return tokenizer_limit
    raise TokenizerLoadError(f"cannot tell the context length of the model in {directory}: pass --max_model_len")
