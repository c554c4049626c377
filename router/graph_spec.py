"""The InferenceGraph manifest (serving.kserve.io/v1alpha1) read into dataclasses and checked:
what KServe's admission webhook refuses, what its CRD schema refuses (unknown fields, wrong
types), and the mistakes both let through that make KServe's router fail every request (a
nodeName that names no node, a cycle, a Switch step without a condition, ...).

`load_graphs(path)` is what tests of the project's manifests call on every YAML file."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import ConfigDict, Field, StrictBool, StrictInt, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from serving.errors import describe_validation_errors

API_VERSION = "serving.kserve.io/v1alpha1"
KIND = "InferenceGraph"
ROOT_NODE = "root"
# KServe's webhook: lower-case alphanumerics and '-', starting with a letter.
GRAPH_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# KServe's defaults (pkg/constants: RouterTimeoutsServerRead, ...ServerWrite, ...ServerIdle), seconds.
DEFAULT_SERVER_READ = 60
DEFAULT_SERVER_WRITE = 60
DEFAULT_SERVER_IDLE = 180

# Unknown fields are refused, as `kubectl apply` does with strict field validation: a misspelt
# `serviceNmae` must not silently turn a step into one without a target.
_STRICT = ConfigDict(extra="forbid")


class GraphSpecError(ValueError):
    """An InferenceGraph that KServe would refuse, or whose router could never serve."""


class RouterType(str, Enum):
    SEQUENCE = "Sequence"
    SWITCH = "Switch"
    SPLITTER = "Splitter"
    ENSEMBLE = "Ensemble"


class Dependency(str, Enum):
    SOFT = "Soft"
    HARD = "Hard"


class StepData(str, Enum):
    """What a Sequence step is sent: the graph's input, or the previous step's response."""

    REQUEST = "$request"
    RESPONSE = "$response"


@dataclass(frozen=True, slots=True, kw_only=True, config=_STRICT)
class InferenceStep:
    name: str = ""
    service_name: str = Field("", alias="serviceName")
    service_url: str = Field("", alias="serviceUrl")
    node_name: str = Field("", alias="nodeName")
    data: StepData = StepData.REQUEST
    map_predictions_to_instances: StrictBool = Field(False, alias="mapPredictionsToInstances")
    weight: StrictInt | None = None
    condition: str = ""
    dependency: Dependency = Dependency.SOFT

    @property
    def target(self) -> str:
        """How the logs name what the step calls."""
        if self.node_name:
            return f"node {self.node_name}"
        return f"service {self.service_name}" if self.service_name else self.service_url


@dataclass(frozen=True, slots=True, kw_only=True, config=_STRICT)
class InferenceRouter:
    """One node of the graph."""

    router_type: RouterType = Field(alias="routerType")
    steps: tuple[InferenceStep, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True, config=_STRICT)
class RouterTimeouts:
    """Seconds; 0 means no limit, as in Go's http.Server and http.Client."""

    server_read: StrictInt = Field(DEFAULT_SERVER_READ, alias="serverRead", ge=0)
    server_write: StrictInt = Field(DEFAULT_SERVER_WRITE, alias="serverWrite", ge=0)
    server_idle: StrictInt = Field(DEFAULT_SERVER_IDLE, alias="serverIdle", ge=0)
    service_client: StrictInt | None = Field(None, alias="serviceClient", ge=0)


@dataclass(frozen=True, slots=True, kw_only=True, config=_STRICT)
class InferenceGraphSpec:
    nodes: dict[str, InferenceRouter]
    router_timeouts: RouterTimeouts = Field(default_factory=RouterTimeouts, alias="routerTimeouts")
    # The Knative revision's timeoutSeconds (0: Knative's default): its queue-proxy answers 504 past it.
    timeout: StrictInt | None = Field(None, ge=0)
    # Pod and autoscaling settings: part of a valid manifest, no meaning for a local router.
    resources: dict[str, Any] | None = None
    affinity: dict[str, Any] | None = None
    min_replicas: StrictInt | None = Field(None, alias="minReplicas")
    max_replicas: StrictInt | None = Field(None, alias="maxReplicas")
    scale_target: StrictInt | None = Field(None, alias="scaleTarget")
    scale_metric: str | None = Field(None, alias="scaleMetric")
    tolerations: list[dict[str, Any]] | None = None
    node_selector: dict[str, str] | None = Field(None, alias="nodeSelector")
    node_name: str | None = Field(None, alias="nodeName")
    service_account_name: str | None = Field(None, alias="serviceAccountName")


@dataclass(frozen=True, slots=True, kw_only=True, config=_STRICT)
class InferenceGraphManifest:
    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: dict[str, Any]
    spec: InferenceGraphSpec
    status: dict[str, Any] | None = None  # present in `kubectl get -o yaml` output


@dataclasses.dataclass(frozen=True, slots=True)
class InferenceGraph:
    """A checked graph: what the router executes."""

    name: str
    nodes: dict[str, InferenceRouter]
    router_timeouts: RouterTimeouts
    timeout: int | None

    @property
    def service_names(self) -> set[str]:
        return {step.service_name for node in self.nodes.values() for step in node.steps if step.service_name}


_MANIFEST = TypeAdapter(InferenceGraphManifest)


def load_graphs(path: str | Path) -> list[InferenceGraph]:
    """Every InferenceGraph in a YAML file (other documents are skipped), each checked."""
    with open(path, encoding="utf-8") as file:
        documents = [document for document in yaml.safe_load_all(file) if document]
    graphs = []
    for document in documents:
        if isinstance(document, Mapping) and document.get("kind") == KIND:
            try:
                graphs.append(parse_graph(document))
            except GraphSpecError as error:
                raise GraphSpecError(f"{path}: {error}") from None
    return graphs


def load_graph(path: str | Path) -> InferenceGraph:
    """The one InferenceGraph of a YAML file."""
    graphs = load_graphs(path)
    if len(graphs) != 1:
        raise GraphSpecError(f"{path}: expected one document of kind {KIND}, found {len(graphs)}")
    return graphs[0]


def parse_graph(manifest: Mapping[str, Any]) -> InferenceGraph:
    """A manifest as `kubectl apply` takes it (already parsed from YAML or JSON), checked."""
    try:
        parsed = _MANIFEST.validate_python(manifest)
    except ValidationError as error:
        raise GraphSpecError(describe_validation_errors(_readable(error.errors()))) from None
    name = parsed.metadata.get("name")
    if parsed.api_version != API_VERSION or parsed.kind != KIND:
        raise GraphSpecError(f"expected apiVersion {API_VERSION} and kind {KIND}, "
                             f"got {parsed.api_version} and {parsed.kind}")
    if not isinstance(name, str) or not GRAPH_NAME.fullmatch(name):
        raise GraphSpecError(f"metadata.name {name!r} must consist of lower case alphanumeric characters "
                             "or '-' and start with a letter")
    graph = InferenceGraph(name, parsed.spec.nodes, parsed.spec.router_timeouts, parsed.spec.timeout)
    validate_graph(graph)
    return graph


def _readable(errors: list[dict]) -> list[dict]:
    """pydantic calls an unknown field of a dataclass an "unexpected keyword argument"."""
    return [{**error, "msg": "unknown field"} if error["type"] == "unexpected_keyword_argument" else error
            for error in errors]


def validate_graph(graph: InferenceGraph) -> None:
    if ROOT_NODE not in graph.nodes:
        raise GraphSpecError(f"InferenceGraph {graph.name!r} has no node named {ROOT_NODE!r}, "
                             "where every request starts")
    for node_name, node in graph.nodes.items():
        where = f"InferenceGraph {graph.name!r} node {node_name!r}"
        _check_node(node, where)
        for index, step in enumerate(node.steps):
            _check_step(graph, node, index, step, f"{where} step {index}" + (f" ({step.name!r})" if step.name else ""))
    _check_acyclic(graph)


def _check_node(node: InferenceRouter, where: str) -> None:
    if not node.steps:
        raise GraphSpecError(f"{where} has no steps")
    names = [step.name for step in node.steps if step.name]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise GraphSpecError(f"{where} has more than one step named {duplicates[0]!r}")
    if node.router_type is RouterType.SPLITTER:
        _check_weights(node, where)
    if node.router_type is RouterType.SEQUENCE and node.steps[0].condition:
        # KServe's router matches it against a response that does not exist yet: 500 every time.
        raise GraphSpecError(f"{where}: the first step of a Sequence cannot have a condition "
                             "(conditions are matched against the previous step's response)")


def _check_weights(node: InferenceRouter, where: str) -> None:
    for index, step in enumerate(node.steps):
        if step.weight is None:
            raise GraphSpecError(f"{where}: Splitter step {index} has no weight")
        if step.weight < 0:
            raise GraphSpecError(f"{where}: Splitter step {index} has a negative weight")
    total = sum(step.weight or 0 for step in node.steps)
    if total != 100:
        raise GraphSpecError(f"{where}: the Splitter's weights sum to {total}, not 100")


def _check_step(graph: InferenceGraph, node: InferenceRouter, index: int, step: InferenceStep, where: str) -> None:
    targets = [field for field, value in (("serviceName", step.service_name), ("serviceUrl", step.service_url),
                                          ("nodeName", step.node_name)) if value]
    if len(targets) != 1:
        found = f"has {', '.join(targets)}" if targets else "has none"
        raise GraphSpecError(f"{where} needs exactly one of serviceName, serviceUrl, nodeName; it {found}")
    if step.node_name and step.node_name not in graph.nodes:
        raise GraphSpecError(f"{where}: nodeName {step.node_name!r} is not a node of the graph")
    if step.service_url:
        url = urlsplit(step.service_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise GraphSpecError(f"{where}: serviceUrl {step.service_url!r} is not an http(s) URL")
    if node.router_type is RouterType.SWITCH and not step.condition:
        # An empty GJSON path never exists: the step could never be chosen.
        raise GraphSpecError(f"{where}: a Switch step needs a condition")


def _check_acyclic(graph: InferenceGraph) -> None:
    """KServe's router would recurse through a cycle until the request times out."""
    finished: set[str] = set()

    def visit(node_name: str, path: list[str]) -> None:
        if node_name in path:
            cycle = " -> ".join([*path[path.index(node_name):], node_name])
            raise GraphSpecError(f"InferenceGraph {graph.name!r} has a cycle of nodes: {cycle}")
        if node_name in finished:
            return
        for step in graph.nodes[node_name].steps:
            if step.node_name:
                visit(step.node_name, [*path, node_name])
        finished.add(node_name)

    for node_name in graph.nodes:
        visit(node_name, [])
