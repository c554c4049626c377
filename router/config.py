"""The router's YAML configuration: its targets (the small and the large model, each with one or
more replicas, its cost per token and whether it serves chat), the policy's threshold and weights,
the cascade, the timeouts, how replicas are balanced and when their circuit breakers open. Unknown
fields are errors, and every error names the field and what it allows."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from router.decision_log import PromptLogging
from router.policy import Route, check_weights
from serving.errors import describe_validation_errors

logger = logging.getLogger(__name__)

# The model name that asks the OpenAI edge to choose the target.
AUTO_MODEL = "auto"


class ConfigError(Exception):
    """The configuration file is missing, not YAML, or not valid: the message says where."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _http_url(url: str) -> str:
    """`url` without its trailing slash; ValueError unless it is an http(s) URL with a host."""
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1].strip("/")) == 0:
        raise ValueError(f"must be http:// or https:// URLs with a host, got {url!r}")
    return url.rstrip("/")


class Replica(_Section):
    """One replica of a target: the base URL of its transformer and, for least-loaded picking,
    the URL of its predictor's Prometheus metrics (`vllm:num_requests_waiting`, ...)."""

    url: str
    metrics_url: str | None = Field(None, description="the predictor's /metrics (unset: load unknown)")

    @field_validator("url", "metrics_url")
    @classmethod
    def _http_urls(cls, url: str | None) -> str | None:
        return None if url is None else _http_url(url)


def _entry_kind(entry: object) -> str:
    return "url" if isinstance(entry, str) else "replica"


# A replica is a plain URL or a mapping; the tag keeps a wrong mapping's errors to the mapping's own.
ReplicaEntry = Annotated[Annotated[str, Tag("url")] | Annotated[Replica, Tag("replica")], Discriminator(_entry_kind)]


class Target(_Section):
    model: str = Field(min_length=1, description="the model name the target serves (OpenAI `model`, KServe name)")
    urls: list[ReplicaEntry] = Field(
        min_length=1, description="the target's replicas: base URLs, or {url, metrics_url} mappings"
    )
    cost_per_token: float | None = Field(
        None, gt=0, description="what one token costs on this target, in a unit both targets share "
                                "(e.g. millions of matmul parameters per token); unset on both: not checked",
    )
    chat: bool = Field(True, description="whether the model serves chat (has a chat template; a base model has none)")

    def serves(self, chat: bool) -> bool:
        """Whether the target can answer a request that is (or is not) a chat."""
        return self.chat or not chat

    def describe(self) -> str:
        cost = "" if self.cost_per_token is None else f"cost {self.cost_per_token:g} per token, "
        return f"{self.model} ({cost}{'chat' if self.chat else 'no chat'})"

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str | Replica]) -> list[str | Replica]:
        return [_http_url(url) if isinstance(url, str) else url for url in urls]

    @property
    def replicas(self) -> list[Replica]:
        return [Replica(url=url) if isinstance(url, str) else url for url in self.urls]


class Targets(_Section):
    small: Target
    large: Target

    @model_validator(mode="after")
    def _models_tell_targets_apart(self) -> Targets:
        # The OpenAI edge sends a request to the target whose model it names.
        if self.small.model == self.large.model:
            raise ValueError(f"small and large serve the same model {self.small.model!r}: give each its own name")
        if AUTO_MODEL in (self.small.model, self.large.model):
            raise ValueError(f"{AUTO_MODEL!r} asks the OpenAI edge to choose: no target's model may be named so")
        return self

    @model_validator(mode="after")
    def _small_costs_no_more(self) -> Targets:
        small, large = self.small.cost_per_token, self.large.cost_per_token
        if (small is None) != (large is None):
            unset = "small" if small is None else "large"
            raise ValueError(f"cost_per_token is set on one target only: set it on {unset} too (or on neither)")
        if small is not None and small > large:
            raise ValueError(f"small costs more per token than large ({small:g} > {large:g}): the cheaper model "
                             f"is the small target, swap them")
        return self

    def of(self, route: Route) -> Target:
        return self.small if route is Route.SMALL else self.large


class PolicyConfig(_Section):
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="score >= threshold -> large; set by router.calibrate")
    weights: dict[str, float] = Field(default_factory=dict, description="overrides of the rule features' weights")
    learned_model: Path | None = Field(
        None, description="a model fitted by router.train (relative to this file); unset: the rule policy"
    )

    @field_validator("weights")
    @classmethod
    def _known_features(cls, weights: dict[str, float]) -> dict[str, float]:
        check_weights(weights)
        return weights

    @model_validator(mode="after")
    def _weights_are_the_rule_policys(self) -> PolicyConfig:
        if self.learned_model is not None and self.weights:
            raise ValueError("weights set the rule policy's score; a learned_model fits its own: drop one of them")
        return self


class CascadeConfig(_Section):
    enabled: bool = True
    # A confidence is the least likely token's log-probability, so never above 0.
    min_confidence: float = Field(-2.5, le=0.0, description="escalate when the small model's confidence is below")
    escalate_on_length: bool = Field(
        False, description="escalate an answer cut short by a limit that is not the client's own max_tokens"
    )


class LearningConfig(_Section):
    """What the router keeps of its own traffic for router.train (nothing by default)."""

    decision_log: Path | None = Field(None, description="JSON lines file of decisions (relative to this file)")
    log_prompts: PromptLogging = Field(PromptLogging.REDACTED, description="full, redacted or hashed")
    explore_share: float = Field(
        0.0, ge=0.0, le=1.0,
        description="share of auto requests answered by both models, so the log learns where the policy would not go",
    )


class TimeoutsConfig(_Section):
    connect_seconds: float = Field(5.0, gt=0)
    request_seconds: float = Field(600.0, gt=0)


class LoadBalancingConfig(_Section):
    # vLLM's metrics move within a second under load; the Gateway API's endpoint picker polls faster
    # still. Each poll is bounded by the interval, so a slow replica cannot hold up the others.
    metrics_interval_seconds: float = Field(1.0, gt=0, description="how often replicas' metrics are polled")


class CircuitBreakersConfig(_Section):
    """When a replica's circuit breaker opens (no request goes to it), for how long, and how it
    closes again (router/breakers.py)."""

    failure_threshold: int = Field(3, ge=1, description="consecutive failures that open it")
    open_seconds: float = Field(5.0, gt=0, description="how long it stays open after its first trip")
    max_open_seconds: float = Field(60.0, gt=0, description="the cap of open_seconds doubled on each repeated trip")
    half_open_probes: int = Field(1, ge=1, description="requests let through at once to test a half-open replica")
    max_waiting: int | None = Field(
        None, ge=1, description="open when the replica's vllm:num_requests_waiting reaches it (unset: off)"
    )
    max_latency_seconds: float | None = Field(
        None, gt=0, description="open when the median time to the first byte of its recent answers (a stream's "
                                "first token; a whole answer comes whole) reaches it (unset: off)",
    )

    @model_validator(mode="after")
    def _cap_is_above_the_first_wait(self) -> CircuitBreakersConfig:
        if self.max_open_seconds < self.open_seconds:
            raise ValueError(f"max_open_seconds ({self.max_open_seconds:g}) is below open_seconds "
                             f"({self.open_seconds:g}): the backoff starts at open_seconds and is capped at "
                             f"max_open_seconds, so set max_open_seconds >= open_seconds")
        return self


class RouterConfig(_Section):
    model_name: str = Field("router", min_length=1, description="the KServe model name of the router itself")
    targets: Targets
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    load_balancing: LoadBalancingConfig = Field(default_factory=LoadBalancingConfig)
    circuit_breakers: CircuitBreakersConfig = Field(default_factory=CircuitBreakersConfig)
    learning: LearningConfig = Field(default_factory=LearningConfig)

    def relative_to(self, directory: Path) -> RouterConfig:
        """The config with its relative file paths read from `directory` (the YAML file's)."""
        policy = self.policy.model_copy(update={"learned_model": _under(directory, self.policy.learned_model)})
        learning = self.learning.model_copy(update={"decision_log": _under(directory, self.learning.decision_log)})
        return self.model_copy(update={"policy": policy, "learning": learning})


def _under(directory: Path, path: Path | None) -> Path | None:
    return path if path is None or path.is_absolute() else directory / path


def parse_config(data: object, source: str = "the router config", directory: Path | None = None) -> RouterConfig:
    """Validate already-parsed YAML; ConfigError names each wrong field (`policy.threshold: ...`).
    Relative paths in it are read from `directory` when given."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a YAML mapping with at least `targets`, got {type(data).__name__}")
    try:
        config = RouterConfig.model_validate(_with_down_seconds_moved(data, source))
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_errors(exc.errors())}") from None
    return config.relative_to(directory) if directory is not None else config


def _with_down_seconds_moved(data: dict, source: str) -> dict:
    """`load_balancing.down_seconds` (how long a replica that refused a connection was skipped)
    is now `circuit_breakers.open_seconds`: an old config keeps working, with a warning."""
    load_balancing, breakers = data.get("load_balancing"), data.get("circuit_breakers") or {}
    if not isinstance(load_balancing, dict) or "down_seconds" not in load_balancing or not isinstance(breakers, dict):
        return data
    if "open_seconds" in breakers:
        raise ConfigError(f"{source}: load_balancing.down_seconds is the deprecated name of "
                          f"circuit_breakers.open_seconds: set only circuit_breakers.open_seconds")
    down_seconds = load_balancing["down_seconds"]
    logger.warning("%s: load_balancing.down_seconds is deprecated, read as circuit_breakers.open_seconds: %s "
                   "(move it there)", source, down_seconds)
    load_balancing = {name: value for name, value in load_balancing.items() if name != "down_seconds"}
    return {**data, "load_balancing": load_balancing, "circuit_breakers": {**breakers, "open_seconds": down_seconds}}


def load_config(path: str | Path) -> RouterConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the router config {str(path)!r}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path), Path(path).parent)
