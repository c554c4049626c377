"""The KServe transformer: tokenization, chat templates, detokenization and the OpenAI API (its own issue)."""
