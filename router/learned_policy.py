"""The learned routing policy: a logistic regression, fitted by `python -m router.train`, of the
probability that the large model answers a request right where the small one does not (the gain
of sending it there), over router.text_features and, optionally, a sentence embedding. That
probability is the score; score >= threshold goes to the large model, the threshold set by
router.calibrate for a share of large calls, as with the rule policy.

The fitted model is a safetensors file: its weights as tensors and what they mean (the featurizer's
version and size, how it was trained) in the header's metadata. No pickle: loading a model file
runs no code. A file that is missing, not safetensors, of another format or with weights that do
not fit its metadata raises LearnedModelError naming the file and the fault."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from router.config import PolicyConfig
from router.embeddings import EMBEDDING_MODEL, EmbeddingsUnavailable, SentenceEmbedder
from router.features import RoutingRequest, TokenCounter
from router.policy import (
    FEATURE_NAMES,
    SCORE_DECIMALS,
    Decision,
    Hint,
    Route,
    RoutingPolicy,
    follow_hint,
)
from router.text_features import DENSE_FEATURES, FEATURIZER_VERSION, TextFeatures, featurize

MODEL_FORMAT = "kserve-llm-runtime/learned-routing-policy/v1"


class LearnedModelError(Exception):
    """The learned policy's model file cannot be used: the message says which file and why."""


@dataclass(frozen=True, slots=True)
class LearnedModel:
    """The fitted weights. Dense features are standardized with the training set's mean and scale
    before their weights apply; `embedding_weights` is empty unless trained with embeddings."""

    sparse_weights: np.ndarray
    dense_weights: np.ndarray
    dense_mean: np.ndarray
    dense_scale: np.ndarray
    bias: float
    embedding_weights: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    training: Mapping[str, object] = field(default_factory=dict)

    @property
    def num_buckets(self) -> int:
        return len(self.sparse_weights)

    @property
    def uses_embeddings(self) -> bool:
        return len(self.embedding_weights) > 0

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        tensors = {
            "sparse_weights": self.sparse_weights.astype(np.float32),
            "dense_weights": self.dense_weights.astype(np.float32),
            "dense_mean": self.dense_mean.astype(np.float32),
            "dense_scale": self.dense_scale.astype(np.float32),
            "bias": np.asarray([self.bias], dtype=np.float32),
            "embedding_weights": self.embedding_weights.astype(np.float32),
        }
        metadata = {
            "format": MODEL_FORMAT,
            "featurizer_version": str(FEATURIZER_VERSION),
            "dense_features": json.dumps(DENSE_FEATURES),
            "embedding_model": EMBEDDING_MODEL if self.uses_embeddings else "",
            "training": json.dumps(dict(self.training)),
        }
        save_file(tensors, str(path), metadata=metadata)
        # safetensors writes the file owner-only; a router running as another user must read it.
        Path(path).chmod(0o644)

    @classmethod
    def load(cls, path: str | Path) -> LearnedModel:
        tensors, metadata = _read(Path(path))
        source = f"the learned routing model {str(path)!r}"
        if metadata.get("format") != MODEL_FORMAT:
            raise LearnedModelError(f"{source} is not a {MODEL_FORMAT} file (format {metadata.get('format')!r}): "
                                    "fit one with `python -m router.train`")
        if metadata.get("featurizer_version") != str(FEATURIZER_VERSION):
            raise LearnedModelError(f"{source} was fitted for featurizer version {metadata.get('featurizer_version')}, "
                                    f"this router has version {FEATURIZER_VERSION}: fit it again with router.train")
        if metadata.get("dense_features") != json.dumps(DENSE_FEATURES):
            raise LearnedModelError(f"{source} was fitted on other dense features: fit it again with router.train")
        missing = sorted({"sparse_weights", "dense_weights", "dense_mean", "dense_scale", "bias",
                          "embedding_weights"} - set(tensors))
        if missing:
            raise LearnedModelError(f"{source} lacks the tensor(s) {', '.join(missing)}")
        if tensors["bias"].shape != (1,):
            raise LearnedModelError(f"{source} is corrupt: bias has shape {list(tensors['bias'].shape)}, expected [1]")
        model = cls(tensors["sparse_weights"], tensors["dense_weights"], tensors["dense_mean"], tensors["dense_scale"],
                    float(tensors["bias"][0]), tensors["embedding_weights"], _training_summary(metadata))
        _check_shapes(model, source)
        return model


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    source = f"the learned routing model {str(path)!r}"
    if not path.is_file():
        raise LearnedModelError(f"{source} does not exist: fit one with `python -m router.train` or unset "
                                "policy.learned_model")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as exc:
        raise LearnedModelError(f"{source} is not a readable safetensors file: {exc}") from None


def _training_summary(metadata: Mapping[str, str]) -> dict:
    try:
        summary = json.loads(metadata.get("training") or "{}")
    except json.JSONDecodeError:
        return {}
    return summary if isinstance(summary, dict) else {}


def _check_shapes(model: LearnedModel, source: str) -> None:
    dense = len(DENSE_FEATURES)
    problems = []
    if model.sparse_weights.ndim != 1 or model.num_buckets == 0:
        problems.append(f"sparse_weights has shape {list(model.sparse_weights.shape)}, expected [buckets]")
    for name in ("dense_weights", "dense_mean", "dense_scale"):
        if getattr(model, name).shape != (dense,):
            problems.append(f"{name} has shape {list(getattr(model, name).shape)}, expected [{dense}]")
    if model.embedding_weights.ndim != 1:
        problems.append(f"embedding_weights has shape {list(model.embedding_weights.shape)}, expected [dimensions]")
    arrays = (model.sparse_weights, model.dense_weights, model.dense_mean, model.dense_scale, model.embedding_weights)
    if not problems and not (all(np.isfinite(array).all() for array in arrays) and math.isfinite(model.bias)):
        problems.append("it holds weights that are not finite numbers")
    if not problems and (model.dense_scale <= 0).any():
        problems.append("dense_scale must be > 0")
    if problems:
        raise LearnedModelError(f"{source} is corrupt: {'; '.join(problems)}")


@dataclass(frozen=True, slots=True)
class LogitPart:
    """One group of features' share of a learned decision, in log-odds."""

    name: str
    logit: float

    @property
    def contribution(self) -> float:
        return self.logit

    def as_dict(self) -> dict:
        return {"logit": round(self.logit, SCORE_DECIMALS)}


def request_features(request: RoutingRequest, rules: RoutingPolicy, num_buckets: int) -> TextFeatures:
    """What the learned policy reads of a request, the rule policy's activations among it."""
    activations = [feature.measurement.activation for feature in rules.measure(request)]
    return featurize(request, activations, num_buckets)


class LearnedPolicy:
    """Decides as RoutingPolicy does (same Decision, same hints), with the learned model's score."""

    def __init__(self, model: LearnedModel, threshold: float, token_counter: TokenCounter | None = None,
                 embedder: SentenceEmbedder | None = None) -> None:
        if model.uses_embeddings and embedder is None:
            embedder = _load_embedder()
        self.model = model
        self.threshold = threshold
        self.embedder = embedder
        # The rule policy measures what its features see; its weights play no part here.
        self.rules = RoutingPolicy(threshold, token_counter=token_counter)

    def features_of(self, request: RoutingRequest) -> TextFeatures:
        return request_features(request, self.rules, self.model.num_buckets)

    def logit_parts(self, request: RoutingRequest) -> list[LogitPart]:
        model = self.model
        features = self.features_of(request)
        sparse = sum(float(model.sparse_weights[bucket]) * count for bucket, count in features.sparse.items())
        standardized = (features.dense - model.dense_mean) / model.dense_scale
        dense = standardized * model.dense_weights
        rules = float(dense[: len(FEATURE_NAMES)].sum())
        structure = float(dense[len(FEATURE_NAMES):].sum())
        parts = [LogitPart("words", sparse), LogitPart("structure", structure), LogitPart("rule_features", rules),
                 LogitPart("bias", model.bias)]
        if model.uses_embeddings:
            embedding = self.embedder.embed([request.text])[0]
            parts.append(LogitPart("embedding", float(embedding @ model.embedding_weights)))
        return parts

    def score(self, request: RoutingRequest) -> float:
        logit = sum(part.logit for part in self.logit_parts(request))
        return round(_sigmoid(logit), SCORE_DECIMALS)

    def decide(self, request: RoutingRequest, hint: Hint | None = None) -> Decision:
        if hint is not None:
            return follow_hint(hint, self.threshold)
        parts = self.logit_parts(request)
        score = round(_sigmoid(sum(part.logit for part in parts)), SCORE_DECIMALS)
        route = Route.LARGE if score >= self.threshold else Route.SMALL
        return Decision(route, score, self.threshold, tuple(parts))


def _load_embedder() -> SentenceEmbedder:
    try:
        return SentenceEmbedder()
    except EmbeddingsUnavailable as exc:
        raise LearnedModelError(f"this learned model uses sentence embeddings: {exc}") from None


def _sigmoid(logit: float) -> float:
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    exp = math.exp(logit)
    return exp / (1.0 + exp)


def load_policy(config: PolicyConfig, token_counter: TokenCounter | None = None) -> RoutingPolicy | LearnedPolicy:
    """The policy the config describes: the learned one when it names a model file, else the rules.
    Raises LearnedModelError when the model file cannot be used."""
    if config.learned_model is None:
        return RoutingPolicy(config.threshold, config.weights, token_counter)
    return LearnedPolicy(LearnedModel.load(config.learned_model), config.threshold, token_counter)
