"""The router's YAML configuration: its targets (the small and the large model), the policy's
threshold and weights, the cascade and the timeouts. Unknown fields are errors, and every error
names the field and what it allows."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from router.policy import Route, check_weights
from serving.errors import describe_validation_errors


class ConfigError(Exception):
    """The configuration file is missing, not YAML, or not valid: the message says where."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Target(_Section):
    model: str = Field(min_length=1, description="the model name the target serves (OpenAI `model`, KServe name)")
    urls: list[str] = Field(min_length=1, description="base URLs of the target's replicas")

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1].strip("/")) == 0:
                raise ValueError(f"must be http:// or https:// URLs with a host, got {url!r}")
        return [url.rstrip("/") for url in urls]


class Targets(_Section):
    small: Target
    large: Target

    def of(self, route: Route) -> Target:
        return self.small if route is Route.SMALL else self.large


class PolicyConfig(_Section):
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="score >= threshold -> large; set by router.calibrate")
    weights: dict[str, float] = Field(default_factory=dict, description="overrides of the features' weights")

    @field_validator("weights")
    @classmethod
    def _known_features(cls, weights: dict[str, float]) -> dict[str, float]:
        check_weights(weights)
        return weights


class CascadeConfig(_Section):
    enabled: bool = True
    # A confidence is the least likely token's log-probability, so never above 0.
    min_confidence: float = Field(-2.5, le=0.0, description="escalate when the small model's confidence is below")


class TimeoutsConfig(_Section):
    connect_seconds: float = Field(5.0, gt=0)
    request_seconds: float = Field(600.0, gt=0)


class RouterConfig(_Section):
    model_name: str = Field("router", min_length=1, description="the KServe model name of the router itself")
    targets: Targets
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)


def parse_config(data: object, source: str = "the router config") -> RouterConfig:
    """Validate already-parsed YAML; ConfigError names each wrong field (`policy.threshold: ...`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a YAML mapping with at least `targets`, got {type(data).__name__}")
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_errors(exc.errors())}") from None


def load_config(path: str | Path) -> RouterConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the router config {str(path)!r}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path))
