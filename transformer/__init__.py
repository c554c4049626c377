"""The tokenizer transformer: text <-> token ids, chat templates, the OpenAI-compatible API."""
