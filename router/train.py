"""Fit the learned routing policy from data of two kinds, and write it as a safetensors file for
the router's config (`policy.learned_model`):

    python -m router.train --outcomes outcomes.jsonl --out router/learned_router.safetensors
    python -m router.train --decision_log decisions.jsonl --out learned.safetensors   # own traffic

- Labelled outcomes: one JSON object per line, `prompt` (or chat `messages`, optionally
  `max_tokens`), `small_correct` and `large_correct` (booleans). The label is the gain: the large
  model right where the small one is wrong.
- The router's own decision log (`learning.decision_log` in its config): the cascade's verdicts are
  weak labels, so no person labels anything. An answer the cascade kept counts as no gain; one it
  escalated counts as a gain unless the large model's answer agreed with the small one's; an
  explored request (both models answered) counts as a gain when they disagreed. Requests sent
  straight to the large model carry no label and are skipped.

A logistic regression over router.text_features (and with --embeddings, all-MiniLM-L6-v2 sentence
embeddings), its regularization chosen by cross-validated ROC AUC. Then set the threshold for a
share of large calls with `python -m router.calibrate`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ConfigDict, ValidationError

from router.decision_log import LoggedDecision, weak_label
from router.features import RoutingRequest, TokenCounter, TokenizerError
from router.embeddings import EmbeddingsUnavailable, SentenceEmbedder
from router.learned_policy import LearnedModel, request_features
from router.policy import RoutingPolicy
from router.schemas import Instance
from router.text_features import DEFAULT_NUM_BUCKETS, DENSE_FEATURES, FEATURIZER_VERSION, TextFeatures
from serving.errors import describe_validation_errors

REGULARIZATION_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
FOLDS = 5
SEED = 0


class TrainingError(Exception):
    """The data cannot be used: the message says which file and line."""


class LabelledOutcome(Instance):
    """A request and whether each model answered it right."""

    model_config = ConfigDict(extra="allow")

    small_correct: bool
    large_correct: bool


@dataclass(frozen=True, slots=True)
class Example:
    """One training example: a request (or its logged features) and its gain label."""

    request: RoutingRequest | None
    features: TextFeatures | None
    gain: bool
    source: str


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise TrainingError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{path} line {number}: not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise TrainingError(f"{path} line {number}: must be a JSON object")
        yield number, record


def read_outcomes(path: Path) -> list[Example]:
    examples = []
    for number, record in _json_lines(path):
        try:
            outcome = LabelledOutcome.model_validate(record)
        except ValidationError as exc:
            raise TrainingError(f"{path} line {number}: {describe_validation_errors(exc.errors())}") from None
        gain = outcome.large_correct and not outcome.small_correct
        examples.append(Example(outcome.routing_request(), None, gain, "outcomes"))
    return examples


def read_decision_log(path: Path, num_buckets: int) -> tuple[list[Example], Counter[str]]:
    """The log's weakly labelled examples, and how many records were skipped, by reason."""
    examples, skipped = [], Counter()
    for number, record in _json_lines(path):
        try:
            logged = LoggedDecision.model_validate(record)
        except ValidationError as exc:
            raise TrainingError(f"{path} line {number}: {describe_validation_errors(exc.errors())}") from None
        gain = weak_label(logged)
        if gain is None:
            skipped["no label (not answered by the small model first)"] += 1
        elif logged.prompt is not None:
            examples.append(Example(logged.routing_request(), None, gain, "decision log"))
        elif logged.features is not None and logged.features.usable(num_buckets):
            examples.append(Example(None, logged.features.text_features(), gain, "decision log (hashed)"))
        else:
            skipped["hashed features of another featurizer version or size"] += 1
    return examples, skipped


def feature_matrix(examples: list[Example], rules: RoutingPolicy, num_buckets: int,
                   embedder: SentenceEmbedder | None):
    """The examples' features as one sparse matrix: hashed counts, then the dense measures (raw),
    then the embedding when used."""
    from scipy import sparse

    rows, cols, values, dense = [], [], [], []
    for row, example in enumerate(examples):
        features = example.features or request_features(example.request, rules, num_buckets)
        for bucket, count in features.sparse.items():
            rows.append(row)
            cols.append(bucket)
            values.append(count)
        dense.append(features.dense)
    hashed = sparse.csr_matrix((values, (rows, cols)), shape=(len(examples), num_buckets), dtype=np.float32)
    blocks = [hashed, sparse.csr_matrix(np.vstack(dense))]
    if embedder is not None:
        texts = [example.request.text if example.request else "" for example in examples]
        blocks.append(sparse.csr_matrix(embedder.embed(texts)))
    return sparse.hstack(blocks, format="csr")


def _standardizer(matrix, num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    dense = matrix[:, num_buckets:num_buckets + len(DENSE_FEATURES)].toarray()
    mean = dense.mean(axis=0)
    scale = dense.std(axis=0)
    return mean.astype(np.float32), np.where(scale > 1e-6, scale, 1.0).astype(np.float32)


def _standardized(matrix, num_buckets: int, mean: np.ndarray, scale: np.ndarray):
    from scipy import sparse

    start, stop = num_buckets, num_buckets + len(DENSE_FEATURES)
    dense = (matrix[:, start:stop].toarray() - mean) / scale
    return sparse.hstack([matrix[:, :start], sparse.csr_matrix(dense), matrix[:, stop:]], format="csr")


def _classifier(regularization: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=regularization, max_iter=5000, solver="lbfgs")


def cross_validated_auc(matrix, labels: np.ndarray, weights: np.ndarray, num_buckets: int,
                        regularization: float) -> float:
    """Mean ROC AUC over stratified folds, each standardized on its own training part."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=SEED)
    scores = []
    for train, held_out in folds.split(np.zeros(len(labels)), labels):
        mean, scale = _standardizer(matrix[train], num_buckets)
        classifier = _classifier(regularization)
        classifier.fit(_standardized(matrix[train], num_buckets, mean, scale), labels[train],
                       sample_weight=weights[train])
        predicted = classifier.predict_proba(_standardized(matrix[held_out], num_buckets, mean, scale))[:, 1]
        scores.append(roc_auc_score(labels[held_out], predicted))
    return float(np.mean(scores))


def _one_blas_thread():
    """L-BFGS steps over a few thousand weights gain nothing from more BLAS threads, and on a busy
    machine those threads spin against each other: a fit took 130 s with two on two shared cores,
    20 s with one. The limit reaches only libraries already loaded, hence the import first."""
    import sklearn.linear_model  # noqa: F401 - loads scipy's BLAS
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def fit(examples: list[Example], num_buckets: int = DEFAULT_NUM_BUCKETS, embeddings: bool = False,
        token_counter: TokenCounter | None = None, weak_label_weight: float = 1.0,
        log=print) -> LearnedModel:
    """A learned model fitted on `examples`, regularization chosen by cross-validation."""
    labels = np.asarray([example.gain for example in examples], dtype=np.int64)
    if len(set(labels.tolist())) < 2 or min(np.bincount(labels)) < FOLDS:
        raise TrainingError(f"need at least {FOLDS} examples of each label (gain and no gain), got "
                            f"{int(labels.sum())} gain and {int(len(labels) - labels.sum())} no gain")
    embedder = SentenceEmbedder() if embeddings else None
    started = time.perf_counter()
    matrix = feature_matrix(examples, RoutingPolicy(0.5, token_counter=token_counter), num_buckets, embedder)
    weights = np.asarray([1.0 if example.source == "outcomes" else weak_label_weight for example in examples])
    log(f"featurized {len(examples)} examples in {time.perf_counter() - started:.1f} s "
        f"({int(labels.sum())} gain, {len(labels) - int(labels.sum())} no gain)")
    with _one_blas_thread():
        aucs = {regularization: cross_validated_auc(matrix, labels, weights, num_buckets, regularization)
                for regularization in REGULARIZATION_GRID}
        for regularization, auc in aucs.items():
            log(f"  C={regularization:<5g} cross-validated ROC AUC {auc:.4f}")
        best = max(aucs, key=aucs.get)
        mean, scale = _standardizer(matrix, num_buckets)
        classifier = _classifier(best)
        classifier.fit(_standardized(matrix, num_buckets, mean, scale), labels, sample_weight=weights)
    coefficients = classifier.coef_[0].astype(np.float32)
    dense_end = num_buckets + len(DENSE_FEATURES)
    sources = Counter(example.source for example in examples)
    training = {"examples": len(examples), "gain": int(labels.sum()), "sources": dict(sources),
                "regularization": best, "cross_validated_auc": round(aucs[best], 4),
                "featurizer_version": FEATURIZER_VERSION, "buckets": num_buckets,
                "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return LearnedModel(coefficients[:num_buckets], coefficients[num_buckets:dense_end], mean, scale,
                        float(classifier.intercept_[0]), coefficients[dense_end:], training)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m router.train", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--outcomes", type=Path, action="append", default=[],
                        help="JSON lines of labelled outcomes (repeatable)")
    parser.add_argument("--decision_log", type=Path, action="append", default=[],
                        help="the router's decision log, JSON lines (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="the model file to write (.safetensors)")
    parser.add_argument("--embeddings", action="store_true",
                        help="add all-MiniLM-L6-v2 sentence embeddings to the features (slower to score)")
    parser.add_argument("--buckets", type=int, default=DEFAULT_NUM_BUCKETS, help="hashed feature buckets")
    parser.add_argument("--weak_label_weight", type=float, default=1.0,
                        help="the weight of a decision log's weak label against a labelled outcome's")
    parser.add_argument("--tokenizer_dir", default=None,
                        help="count prompt tokens with this tokenizer, as the router will (unset: estimate)")
    return parser


def load_examples(outcomes: Iterable[Path], decision_logs: Iterable[Path], num_buckets: int) -> list[Example]:
    examples = []
    for path in outcomes:
        examples += read_outcomes(path)
    for path in decision_logs:
        logged, skipped = read_decision_log(path, num_buckets)
        examples += logged
        for reason, count in skipped.items():
            print(f"{path}: skipped {count} record(s): {reason}")
    return examples


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.outcomes and not args.decision_log:
        parser.error("give --outcomes and/or --decision_log")
    if args.buckets < 16:
        parser.error(f"--buckets must be >= 16, got {args.buckets}")
    try:
        examples = load_examples(args.outcomes, args.decision_log, args.buckets)
        model = fit(examples, args.buckets, args.embeddings, TokenCounter(args.tokenizer_dir), args.weak_label_weight)
        model.save(args.out)
    except (TrainingError, TokenizerError, EmbeddingsUnavailable, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.out}: {json.dumps(model.training)}")
    print(f"next: python -m router.calibrate PROMPTS.jsonl --large_share 0.3 (with policy.learned_model: {args.out})")


if __name__ == "__main__":
    main()
