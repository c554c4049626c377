"""What the OpenAI edge keeps of its own traffic so that the router can learn from it: which
requests to explore (both models answer, `learning.explore_share`), and a decision log line per
routed request (`learning.decision_log`), with the cascade's verdict and whether the two models'
answers agreed. See router.decision_log for the file and router.train for how it is used."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING

from router.cascade import CascadeTrace
from router.config import LearningConfig
from router.decision_log import CascadeOutcome, DecisionLog, LoggedDecision, PromptLogging, prompt_fields
from router.features import RoutingRequest
from router.learned_policy import LearnedPolicy, request_features
from router.policy import HINT_FEATURE, Decision
from router.text_features import DEFAULT_NUM_BUCKETS, TextFeatures
from router.upstream import Answer

if TYPE_CHECKING:
    from router.model import RouterModel

REQUEST_ID_HEADER = "x-request-id"


class Learning:
    def __init__(self, model: RouterModel, config: LearningConfig, seed: int | None = None) -> None:
        self.model = model
        self.config = config
        self.log = DecisionLog(config.decision_log, model.name) if config.decision_log is not None else None
        self._random = random.Random(seed)

    def explores(self) -> bool:
        """Whether this request is one to explore."""
        return self.config.explore_share > 0 and self._random.random() < self.config.explore_share

    def record(self, decision: Decision, requests: list[RoutingRequest], headers: Mapping[str, str],
               answer: Answer, trace: CascadeTrace) -> None:
        if self.log is None:
            return
        hinted = any(feature.name == HINT_FEATURE for feature in decision.features)
        cascade = None if trace.verdict is None else CascadeOutcome(verdict=trace.verdict.value,
                                                                    confidence=trace.confidence)
        for request in requests:
            features = self._features(request) if self.config.log_prompts is PromptLogging.HASHED else None
            self.log.record(LoggedDecision(
                request_id=headers.get(REQUEST_ID_HEADER), route=decision.route.value,
                decided_by=decision.decided_by, score=None if hinted else decision.score,
                explored=trace.explored, cascade=cascade, answered_by=answer.route.value, agreement=trace.agreement,
                **prompt_fields(request, self.config.log_prompts, features, self._num_buckets()),
            ))

    def _num_buckets(self) -> int:
        policy = self.model.policy
        return policy.model.num_buckets if isinstance(policy, LearnedPolicy) else DEFAULT_NUM_BUCKETS

    def _features(self, request: RoutingRequest) -> TextFeatures:
        policy = self.model.policy
        if isinstance(policy, LearnedPolicy):
            return policy.features_of(request)
        return request_features(request, policy, DEFAULT_NUM_BUCKETS)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
