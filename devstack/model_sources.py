"""What the local stack serves as its small and its large model: the trained task models, the demo
models (random weights), or the real models of the real-models extra (runtime/real_models.py). A
source names each size's model, gives its predictor's and transformer's arguments, and says what
the router's config says of it: its cost per token (millions of matmul parameters per token, read
from the checkpoint) and whether it serves chat (the checkpoint has a chat template). The real
models are sized by that cost: the cheaper one is the small target."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from runtime.demo import build_demo_model
from runtime.gguf_checkpoint import hf_checkpoint_dir
from runtime.real_models import REAL_MODELS, gguf_file
from task_models.checkpoint import checkpoint_dir as task_checkpoint_dir
from transformer.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)

SIZES = ("small", "large")
# The real models on a laptop's CPU: float32 weights (0.5 and 1.1 GB) and a KV cache of this size
# each, instead of the engine's 1 GiB default on the CPU, or 90% of a GPU's memory, which two
# predictors on one GPU cannot both take. 256 MiB holds about 5,800 tokens of SmolLM2 and 7,300
# of Gemma: two whole contexts of REAL_CONTEXT_TOKENS each.
REAL_CONTEXT_TOKENS = 2048
REAL_KV_CACHE_BYTES = 256 << 20
REAL_EXTRA_HINT = "pip install -e '.[real-models]'"
JSON_BODY = "-H content-type:application/json -d"


def model_name(size: str) -> str:
    """The InferenceService name of a size's model, as manifests/ name them (the task and the demo
    models are served under it)."""
    return f"llm-{size}"


def matmul_parameters(checkpoint: Path) -> int:
    """The parameters one token's forward pass multiplies by: every weight matrix of the checkpoint,
    less an input embedding that has an LM head of its own (a lookup, not a matmul). A tied
    embedding counts once, as the LM head."""
    shapes: dict[str, list[int]] = {}
    for file in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(file, framework="numpy") as tensors:
            shapes.update({name: tensors.get_slice(name).get_shape() for name in tensors.keys()})
    matrices = {name: shape[0] * shape[1] for name, shape in shapes.items() if len(shape) == 2}
    if "lm_head.weight" in matrices:
        matrices = {name: size for name, size in matrices.items() if not name.endswith("embed_tokens.weight")}
    return sum(matrices.values())


def cost_per_token(checkpoint: Path) -> float:
    """The router's cost_per_token of a checkpoint: millions of matmul parameters per token."""
    return round(matmul_parameters(checkpoint) / 1e6, 2)


class ModelSource(ABC):
    """What each size (small, large) serves."""

    @abstractmethod
    def predictor_args(self, size: str) -> list[str]: ...

    @abstractmethod
    def transformer_args(self, size: str) -> list[str]: ...

    @abstractmethod
    def checkpoint(self, size: str) -> Path:
        """The size's Hugging Face checkpoint directory, which its costs and chat template are read from."""

    @abstractmethod
    def ready_message(self) -> str: ...

    def model_name(self, size: str) -> str:
        return model_name(size)

    def prepare(self) -> None:
        """Work to do once before any component starts (each would do it at once otherwise)."""

    def router_target(self, size: str) -> dict:
        """What the router's config says of the size's target, besides its URLs."""
        checkpoint = self.checkpoint(size)
        return {"model": self.model_name(size), "cost_per_token": cost_per_token(checkpoint),
                "chat": TextTokenizer(checkpoint).has_chat_template}

    def example_calls(self, router: str, graph: str, transformers: Mapping[str, str]) -> list[str]:
        """The "try:" lines for the router's, the graph's and each size's transformer's URL."""
        chat = '{"model": "auto", "messages": [{"role": "user", "content": "What is 23 times 17?"}], "temperature": 0}'
        predict = ('{"instances": [{"messages": [{"role": "user", "content": "What is 7 plus 5?"}], '
                   '"temperature": 0}]}')
        small = self.model_name("small")
        direct = (f'{{"model": "{small}", "messages": [{{"role": "user", "content": "Reverse this list: apple, '
                  f'river, stone, cloud."}}], "temperature": 0}}')
        return [
            "# the router's OpenAI edge (model auto: the policy picks; -i shows the x-route headers):",
            f"curl -si {router}/openai/v1/chat/completions {JSON_BODY} '{chat}'",
            f"python examples/routing_demo.py --url {router}   # easy and hard questions, checked",
            "# the route graph: the router decides, a Switch calls that model's transformer (v1 predict):",
            f"curl -s {graph} {JSON_BODY} '{predict}'",
            f"python examples/graph_client.py --url {graph}",
            "# a transformer directly (OpenAI API, KServe v1/v2):",
            f"curl -s {transformers['small']}/openai/v1/chat/completions {JSON_BODY} '{direct}'",
        ]


class TaskModels(ModelSource):
    """The two trained task models committed under task_models/checkpoints."""

    def predictor_args(self, size: str) -> list[str]:
        return ["--model_dir", str(self.checkpoint(size))]

    def transformer_args(self, size: str) -> list[str]:
        return ["--tokenizer_dir", str(self.checkpoint(size))]

    def checkpoint(self, size: str) -> Path:
        return task_checkpoint_dir(size)

    def ready_message(self) -> str:
        return ("ready: the task models answer arithmetic, reverse lists, and know the places and people of an "
                "invented world (task_models/checkpoints/*/MODEL_CARD.md); greedy (temperature 0) is how they were "
                "measured")


class DemoModels(ModelSource):
    """The embedded demo models: random weights, built on first use."""

    def predictor_args(self, size: str) -> list[str]:
        return ["--demo", size]

    def transformer_args(self, size: str) -> list[str]:
        return ["--demo", size]

    def checkpoint(self, size: str) -> Path:
        return build_demo_model(size)

    def prepare(self) -> None:
        for size in SIZES:
            build_demo_model(size)

    def ready_message(self) -> str:
        return "ready (demo models: random weights, so the text is gibberish):"


TASK_MODELS = TaskModels()
DEMO_MODELS = DemoModels()


@dataclass(frozen=True, slots=True)
class RealCheckpoint:
    """A real model ready to serve: its GGUF file (what the components are given) and the
    checkpoint directory it was converted into."""

    name: str
    gguf_file: Path
    checkpoint: Path


class RealModels(ModelSource):
    """The real models, each size's GGUF file served as it is (converted already, so each component
    finds the conversion in the cache), with a context and a KV cache sized for a laptop."""

    def __init__(self, by_size: Mapping[str, RealCheckpoint]) -> None:
        self.by_size = dict(by_size)

    def model_name(self, size: str) -> str:
        return self.by_size[size].name

    def predictor_args(self, size: str) -> list[str]:
        return ["--model_dir", str(self.by_size[size].gguf_file), "--max_model_len", str(REAL_CONTEXT_TOKENS),
                "--kv_cache_memory", str(REAL_KV_CACHE_BYTES)]

    def transformer_args(self, size: str) -> list[str]:
        return ["--tokenizer_dir", str(self.by_size[size].gguf_file), "--max_model_len", str(REAL_CONTEXT_TOKENS)]

    def checkpoint(self, size: str) -> Path:
        return self.by_size[size].checkpoint

    def ready_message(self) -> str:
        described = ", ".join(f"{size} {self.model_name(size)}" for size in SIZES)
        return (f"ready: the real models ({described}; context {REAL_CONTEXT_TOKENS} tokens). Only a model with a "
                "chat template serves chat: an `auto` chat goes to it, a completion where the policy says")

    def example_calls(self, router: str, graph: str, transformers: Mapping[str, str]) -> list[str]:
        small, large = self.model_name("small"), self.model_name("large")
        completion = '{"model": "auto", "prompt": "12 + 30 =", "max_tokens": 8, "stop": ["\\n"], "temperature": 0}'
        chat = ('{"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France?"}], '
                '"max_tokens": 32, "temperature": 0}')
        code = (f'{{"model": "{large}", "prompt": "def reverse_string(s):", "max_tokens": 24, "stop": ["\\n\\n"], '
                '"temperature": 0}')
        refused = f'{{"model": "{large}", "messages": [{{"role": "user", "content": "Hi!"}}]}}'
        direct = (f'{{"model": "{small}", "messages": [{{"role": "user", "content": "What is the capital of '
                  'Japan?"}], "max_tokens": 32, "temperature": 0}')
        predict = '{"instances": [{"prompt": "12 + 30 =", "max_tokens": 8, "stop": ["\\n"], "temperature": 0}]}'
        return [
            "# the router's OpenAI edge: a completion with model auto (the policy picks; -i shows the x-route headers)",
            f"curl -si {router}/openai/v1/completions {JSON_BODY} '{completion}'",
            "# a chat with model auto goes to a model with a chat template (x-route-reason says when it overrode)",
            f"curl -si {router}/openai/v1/chat/completions {JSON_BODY} '{chat}'",
            f"# {large} by name: it writes Python; a chat to it is refused (400: no chat template)",
            f"curl -s {router}/openai/v1/completions {JSON_BODY} '{code}'",
            f"curl -s {router}/openai/v1/chat/completions {JSON_BODY} '{refused}'",
            "# the route graph: the router decides, a Switch calls that model's transformer (v1 predict):",
            f"curl -s {graph} {JSON_BODY} '{predict}'",
            "# a transformer directly (OpenAI API, KServe v1/v2):",
            f"curl -s {transformers['small']}/openai/v1/chat/completions {JSON_BODY} '{direct}'",
        ]


def prepare_real_models(cache_dir: str | Path | None = None) -> RealModels:
    """The real models from their installed packages, each joined from its parts and converted to a
    checkpoint here, once (later starts find both in the cache), and sized by cost per token.
    RealModelMissing (runtime/real_models.py) when a package is missing, GGUFCheckpointError when
    the packages that convert GGUF files are."""
    prepared = []
    for name in REAL_MODELS:
        started = time.perf_counter()
        logger.info("%s: its GGUF file and converted checkpoint (the first start joins and converts it, once: "
                    "a minute or two)", name)
        gguf = gguf_file(name, cache_dir)
        checkpoint = RealCheckpoint(name, gguf, hf_checkpoint_dir(gguf, cache_dir))
        parameters = matmul_parameters(checkpoint.checkpoint)
        logger.info("%s: ready in %.1f s, %.2f M matmul parameters per token", name, time.perf_counter() - started,
                    parameters / 1e6)
        prepared.append((parameters, checkpoint))
    cheapest_first = [checkpoint for _, checkpoint in sorted(prepared, key=lambda pair: pair[0])]
    models = RealModels(dict(zip(SIZES, cheapest_first)))
    logger.info("by cost per token: small %s, large %s", models.model_name("small"), models.model_name("large"))
    return models
