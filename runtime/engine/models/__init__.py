"""Model forward passes of our own, for the architectures where they are measurably faster
than running transformers' modules; every other architecture runs transformers' classes
on our paged attention through its attention-function registry."""

from .llama_family import LLAMA_FAMILY_TYPES, LlamaFamilyForward, ModelWeights

__all__ = ["LLAMA_FAMILY_TYPES", "LlamaFamilyForward", "ModelWeights"]
