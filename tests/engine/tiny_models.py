"""Tiny random-weight checkpoints of each supported architecture, and prompts for them."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

VOCAB_SIZE = 384

COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

# name -> (config class, model class, extra config fields)
ARCHITECTURES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama_tied": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"tie_word_embeddings": True}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": 24}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 32}),
    # The llama family's other config features that the native reader computes: biases on every
    # projection, Qwen's per-layer sliding window (layer 1 of 2 here), scaled RoPE.
    "llama_bias": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"attention_bias": True, "mlp_bias": True}),
    "qwen2_sliding": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {
        "use_sliding_window": True, "sliding_window": 12, "max_window_layers": 1,
    }),
    "qwen3_bias": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 16, "attention_bias": True}),
    "llama_rope_linear": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {
        "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    }),
    # An original context of 64 puts the 16-dim heads' wavelengths in all three of Llama 3's bands.
    "llama_rope_llama3": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {
        "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64, "rope_theta": 500000.0},
    }),
    # YaRN scales cos and sin too (its attention factor); a 64-token original context ramps the
    # frequencies between extrapolated and interpolated ones within the test prompts' lengths.
    "qwen2_rope_yarn": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {
        "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                            "rope_theta": 10000.0},
    }),
    # Dynamic RoPE is left to transformers' loader (its frequencies follow the batch): our forward
    # over the model transformers built.
    "llama_rope_dynamic": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {
        "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    }),
    # Not in our own-forward family: these run transformers' modules on our paged attention.
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, {"head_dim": 16}),
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, {}),
    # Sliding and full layers (own window and RoPE theta each); the 12-token window is shorter
    # than most test prompts.
    "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM, {
        "head_dim": 16,
        "num_hidden_layers": 3,
        "sliding_window": 12,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
    }),
}
# Read by our own checkpoint reader, without transformers (models/llama_checkpoint.py).
NATIVE_ARCHITECTURES = {"llama", "llama_tied", "mistral", "qwen2", "qwen3", "llama_bias", "qwen2_sliding", "qwen3_bias",
                        "llama_rope_linear", "llama_rope_llama3", "qwen2_rope_yarn"}
OWN_FORWARD_ARCHITECTURES = NATIVE_ARCHITECTURES | {"llama_rope_dynamic"}
# Norm weights and biases drawn at random rather than all equal (biases: zero), so that a forward
# pass applying one of a layer's norms in another's place, or as 1 + weight wrongly, or a bias
# to the wrong projection, differs from transformers. (Not for all: tests of the others rely on
# their greedy outputs as they are.)
RANDOM_NORM_ARCHITECTURES = {"gemma3", "llama_bias", "qwen2_sliding", "qwen3_bias"}


def build_tiny_model(directory: Path, architecture: str, seed: int = 0) -> Path:
    config_class, model_class, extra = ARCHITECTURES[architecture]
    config = config_class(**{**COMMON, **extra})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
        # Random init gives near-uniform logits; larger weights make greedy choices
        # well separated, so float32 rounding differences cannot flip an argmax.
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() > 1:
                    parameter.mul_(4.0)
                elif architecture in RANDOM_NORM_ARCHITECTURES:
                    parameter.add_(torch.randn_like(parameter) * 0.2)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def random_prompts(count: int, min_len: int, max_len: int, seed: int = 0, vocab: int = VOCAB_SIZE) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (count,), generator=generator).tolist()
    # Ids 0-2 are pad/bos/eos: keep prompts clear of them.
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


def add_byte_level_tokenizer(directory: Path) -> Path:
    """A byte-level BPE tokenizer of at most VOCAB_SIZE tokens (pad, bos and eos at COMMON's ids
    0-2), trained on a little JSON, saved into a tiny model's directory: for the tests that need
    text, such as structured outputs. Every byte is a token, so any text can be written."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = ['{"name": "Ada", "age": 36, "tags": ["math", "engine"], "active": true, "score": 9.5}',
              '{"id": 12, "items": [{"sku": "pen", "quantity": 3}], "status": "shipped", "gift": false}',
              '{"location": "Paris", "unit": "celsius", "days": null}'] * 20
    tokenizer.train_from_iterator(corpus, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(str(directory))
    return directory
