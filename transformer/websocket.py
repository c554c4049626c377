"""The transformer's backend of the WebSocket generate protocol (serving/websocket_session.py): a
request is tokenized (its prompt, or its messages through the chat template, with the tools it
offers), checked against the context and streamed by TextGenerator, as the OpenAI routes do, so
that for the same request and seed its deltas concatenate to their text. With tools, its calls
are read as the chat route reads them: text that may be a call is held back, and the calls come
whole on the `done` message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing

from serving.openai_protocol import Usage
from serving.tool_calling import template_tools
from serving.websocket_protocol import Finish, GenerateMessage, TextDelta
from transformer.model import TextModel
from transformer.schemas import TextSamplingFields
from transformer.tool_parsers import StreamedAnswer, parser_for_template


class TextModelBackend:
    def __init__(self, model: TextModel) -> None:
        self.model = model
        # The format of the model's own tool calls, read when tool_choice is "auto".
        self.tool_parser = parser_for_template(model.tokenizer.chat_template)

    async def stream(self, request: GenerateMessage, headers: Mapping[str, str]) -> AsyncIterator[TextDelta | Finish]:
        model = self.model
        model.check_admitting()
        if request.model is not None:
            model.check_model_name(request.model)
        prompt_ids = await model.prompt_ids(request.prompt, request.messages, tools=template_tools(request.tools))
        fields = TextSamplingFields.model_validate(request.sampling_fields())
        text_request = await model.text_request(prompt_ids, fields, logprobs=request.logprobs)
        answer = StreamedAnswer(request, self.tool_parser) if request.effective_tool_choice != "none" else None
        completion_tokens = 0
        async with aclosing(model.generator.stream(text_request, dict(headers))) as chunks:
            async for chunk in chunks:
                completion_tokens += len(chunk.token_ids)
                text, finish_reason, calls = chunk.text, chunk.finish_reason, None
                if answer is not None and finish_reason is None:
                    text = answer.add(text)
                elif answer is not None:
                    text, calls, finish_reason = answer.finish(text, finish_reason)
                if text or (request.logprobs and chunk.token_ids):
                    yield TextDelta(text, chunk.logprobs if request.logprobs else None)
                if finish_reason is not None:
                    yield Finish(finish_reason, model.name, Usage.of(len(prompt_ids), completion_tokens), calls or None)
