"""The transformer's backend of the WebSocket generate protocol (serving/websocket_session.py): a
request is tokenized (its prompt, or its messages through the chat template), checked against the
context and streamed by TextGenerator, as the OpenAI routes do, so that for the same request and
seed its deltas concatenate to their text."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing

from serving.openai_protocol import Usage
from serving.websocket_protocol import Finish, GenerateMessage, TextDelta
from transformer.model import TextModel
from transformer.schemas import TextSamplingFields


class TextModelBackend:
    def __init__(self, model: TextModel) -> None:
        self.model = model

    async def stream(self, request: GenerateMessage, headers: Mapping[str, str]) -> AsyncIterator[TextDelta | Finish]:
        model = self.model
        model.check_admitting()
        if request.model is not None:
            model.check_model_name(request.model)
        prompt_ids = await model.prompt_ids(request.prompt, request.messages)
        fields = TextSamplingFields.model_validate(request.sampling_fields())
        text_request = await model.text_request(prompt_ids, fields, logprobs=request.logprobs)
        completion_tokens = 0
        async with aclosing(model.generator.stream(text_request, dict(headers))) as chunks:
            async for chunk in chunks:
                completion_tokens += len(chunk.token_ids)
                if chunk.text or (request.logprobs and chunk.token_ids):
                    yield TextDelta(chunk.text, chunk.logprobs if request.logprobs else None)
                if chunk.finish_reason is not None:
                    yield Finish(chunk.finish_reason, model.name, Usage.of(len(prompt_ids), completion_tokens))
