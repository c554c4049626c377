"""The manifests under manifests/: every field of every object exists in the kserve SDK's own model
classes (or the kubernetes client's), graphs pass router.graph_spec's checks and call services
that exist, container args parse with our components' own parsers (the router's in every variant
that patches it), the gateway's router finds its tenants, Redis and spool, and every kustomization
lists files that exist and builds (where kubectl is installed)."""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import pkgutil
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import kserve.models
import kubernetes.client
import pytest
import yaml

import router.__main__ as router_main
import runtime.__main__ as runtime_main
import transformer.__main__ as transformer_main
from devstack import crd_validation
from router.config import RouterConfig, parse_config
from router.graph_condition import condition_matches
from router.gateway.setup import STATE_DIR_VARIABLE, check_gateway_arguments
from router.gateway.tenants import Tenants
from router.graph_spec import DEFAULT_SERVER_WRITE, GraphSpecError, InferenceGraph, RouterType, load_graphs

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
KUSTOMIZATION = "kustomization.yaml"
IMAGE = "kserve-llm-runtime"  # Dockerfile (CPU): transformers, router
GPU_IMAGE = "kserve-llm-runtime-gpu"  # Dockerfile.gpu: the predictors (the ClusterServingRuntime)
IMAGE_TAG = "0.1.0"  # the version in setup.cfg, set by the kustomizations
RUNTIME = "kserve-llm-runtime"
KSERVE_GROUP = "serving.kserve.io"
KUBERNETES_GROUPS = {"", "apps", "batch", "autoscaling", "policy", "networking.k8s.io", "rbac.authorization.k8s.io"}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images", "namespace", "labels"}
MODULES = {"runtime", "transformer", "router", "router.graph"}


def _sdk_classes() -> dict[str, type]:
    """Every model class of the kserve SDK, by name: some (the graph's router timeouts among them)
    are not exported from the package's top level."""
    classes = {}
    for module in pkgutil.iter_modules(kserve.models.__path__):
        for name, value in vars(importlib.import_module(f"kserve.models.{module.name}")).items():
            if inspect.isclass(value) and hasattr(value, "openapi_types"):
                classes[name] = value
    return classes


KSERVE_CLASSES = _sdk_classes()
# Types the SDK names after their Go packages, which the kubernetes client calls by its own names.
GO_TYPE_NAMES = {
    "K8sIoApiAppsV1DeploymentStrategy": "V1DeploymentStrategy",
    "K8sIoApiAutoscalingV2HorizontalPodAutoscalerBehavior": "V2HorizontalPodAutoscalerBehavior",
}
QUANTITIES = {"ResourceQuantity", "V1beta1MetricQuantity"}  # "8Gi", "500m" or a plain number
SCALARS = {"str": str, "int": int, "float": (int, float), "bool": bool, "datetime": str, "date": str, "bytes": str}
# kserve writes `list[X]` and `dict(str, X)`, the kubernetes client `List[X]` and `Dict[str, X]`.
LIST = re.compile(r"[lL]ist\[(.+)\]")
DICT = re.compile(r"(?:dict\(str, (.+)\)|Dict\[str, (.+)\])")


# ---------------------------------------------------------------------------------------------
# Loading: every YAML document, and what each kustomization lists


@dataclass(frozen=True)
class Document:
    path: Path  # relative to manifests/
    index: int
    body: object

    def __str__(self) -> str:
        return f"{self.path}#{self.index}"


@dataclass(frozen=True)
class Kustomization:
    folder: Path
    body: dict

    def files(self, key: str) -> list[Path]:
        entries = self.body.get(key, [])
        paths = [entry["path"] if key == "patches" else entry for entry in entries]
        return [(self.folder / path).resolve() for path in paths]


def load_yaml(path: Path) -> list[object]:
    return [body for body in yaml.safe_load_all(path.read_text()) if body is not None]


def yaml_files() -> list[Path]:
    return sorted(path for path in MANIFESTS.rglob("*") if path.suffix in (".yaml", ".yml"))


def kustomizations() -> list[Kustomization]:
    return [Kustomization(path.parent, load_yaml(path)[0]) for path in yaml_files() if path.name == KUSTOMIZATION]


def documents_of(paths: set[Path]) -> list[Document]:
    return [Document(path.relative_to(MANIFESTS), index, body)
            for path in sorted(paths) for index, body in enumerate(load_yaml(path))]


def listed_files(key: str) -> set[Path]:
    return {path for kustomization in kustomizations() for path in kustomization.files(key) if path.is_file()}


RESOURCES = documents_of(listed_files("resources"))
PATCHES = documents_of(listed_files("patches"))


def kinds(kind: str, documents: list[Document] = RESOURCES) -> list[Document]:
    return [document for document in documents if isinstance(document.body, dict) and document.body.get("kind") == kind]


def named(kind: str, name: str) -> dict:
    [document] = [doc for doc in kinds(kind) if doc.body["metadata"]["name"] == name]
    return document.body


# ---------------------------------------------------------------------------------------------
# The walker: each field against the SDK's openapi_types / attribute_map


def join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def model_class(type_name: str) -> type:
    name = GO_TYPE_NAMES.get(type_name, type_name)
    cls = KSERVE_CLASSES.get(name) or getattr(kubernetes.client, name, None)
    if cls is None:
        raise LookupError(f"neither kserve nor kubernetes defines {type_name}: extend GO_TYPE_NAMES")
    return cls


def field_errors(value: object, type_name: str, path: str) -> list[str]:
    """Where `value` is not a `type_name` as the SDK declares it, one message per wrong field."""
    if type_name == "object":
        return []
    if match := LIST.fullmatch(type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        return [error for i, item in enumerate(value) for error in field_errors(item, match[1], f"{path}[{i}]")]
    if match := DICT.fullmatch(type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {value!r}"]
        item_type = match[1] or match[2]
        return [error for key, item in value.items() for error in field_errors(item, item_type, join(path, key))]
    if type_name in QUANTITIES:
        return [] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else [
            f"{path}: expected a quantity, got {value!r}"]
    if type_name in SCALARS:
        # YAML reads `1` as an int and `"1"` as a str, as the API server does: quote quantities.
        wrong = not isinstance(value, SCALARS[type_name]) or (isinstance(value, bool) and type_name != "bool")
        return [f"{path}: expected {type_name}, got {value!r}"] if wrong else []
    return object_errors(value, model_class(type_name), path)


def object_errors(value: object, cls: type, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected a {cls.__name__} mapping, got {value!r}"]
    attributes = {json_key: attribute for attribute, json_key in cls.attribute_map.items()}
    errors = []
    for key, item in value.items():
        if key not in attributes:
            errors.append(f"{join(path, key)}: {cls.__name__} has no field {key!r}")
        else:
            errors.extend(field_errors(item, cls.openapi_types[attributes[key]], join(path, key)))
    return errors


def kind_class(api_version: str, kind: str) -> type:
    group, _, version = api_version.rpartition("/")
    name = f"{version.capitalize()}{kind}"  # serving.kserve.io/v1beta1 InferenceService: V1beta1InferenceService
    if group == KSERVE_GROUP and name in KSERVE_CLASSES:
        return KSERVE_CLASSES[name]
    if group in KUBERNETES_GROUPS and hasattr(kubernetes.client, name):
        return getattr(kubernetes.client, name)
    raise LookupError(f"no SDK class for {api_version} {kind}")


def manifest_errors(body: dict) -> list[str]:
    """Every field of a Kubernetes object that its SDK class lacks, or holds as another type."""
    cls = kind_class(body.get("apiVersion", ""), body.get("kind", ""))
    name = body.get("metadata", {}).get("name")
    return [f"{body['kind']} {name}: {error}" for error in object_errors(body, cls, "")]


def json_pointer(path: str) -> list[str]:
    return [token.replace("~1", "/").replace("~0", "~") for token in path.split("/")[1:]]


def json_patch_errors(operations: list[dict], cls: type) -> list[str]:
    """JSON patch operations whose path the target's class lacks, or whose value does not fit it."""
    errors = []
    for operation in operations:
        type_name, error = path_type(cls.__name__, json_pointer(operation["path"]))
        if error:
            errors.append(f"{operation['path']}: {error}")
        elif operation["op"] in ("add", "replace", "test"):
            errors.extend(field_errors(operation["value"], type_name, operation["path"]))
        elif operation["op"] != "remove":
            errors.append(f"{operation['path']}: unsupported op {operation['op']!r}")
    return errors


def path_type(type_name: str, tokens: list[str]) -> tuple[str, str | None]:
    for token in tokens:
        if match := LIST.fullmatch(type_name):
            if not (token.isdigit() or token == "-"):
                return type_name, f"{token!r} is not a list index"
            type_name = match[1]
        elif match := DICT.fullmatch(type_name):
            type_name = match[1] or match[2]
        elif type_name in SCALARS or type_name in QUANTITIES or type_name == "object":
            return type_name, f"{type_name} has no field {token!r}"
        else:
            cls = model_class(type_name)
            attributes = {json_key: attribute for attribute, json_key in cls.attribute_map.items()}
            if token not in attributes:
                return type_name, f"{cls.__name__} has no field {token!r}"
            type_name = cls.openapi_types[attributes[token]]
    return type_name, None


# ---------------------------------------------------------------------------------------------
# Kustomizations


def test_every_kustomization_lists_files_that_exist() -> None:
    for kustomization in kustomizations():
        where = kustomization.folder.relative_to(MANIFESTS)
        assert set(kustomization.body) <= KUSTOMIZATION_KEYS, f"{where}: unexpected keys"
        for path in kustomization.files("resources"):
            assert path.is_file() or (path / KUSTOMIZATION).is_file(), f"{where}: {path} does not exist"
        for path in kustomization.files("patches"):
            assert path.is_file(), f"{where}: patch {path} does not exist"


def test_every_manifest_is_listed_in_a_kustomization() -> None:
    listed = listed_files("resources") | listed_files("patches")
    unlisted = [path for path in yaml_files() if path.name != KUSTOMIZATION and path not in listed]
    assert not unlisted, f"`kubectl apply -k` would skip {unlisted}"


@pytest.mark.parametrize("document", [doc for doc in RESOURCES + PATCHES if isinstance(doc.body, dict)], ids=str)
def test_every_field_exists_in_the_sdk(document: Document) -> None:
    assert manifest_errors(document.body) == []


def json_patches() -> list[object]:
    """(operations, target kind) of every JSON patch a kustomization applies."""
    patches = []
    for kustomization in kustomizations():
        for entry, path in zip(kustomization.body.get("patches", []), kustomization.files("patches")):
            if isinstance(operations := load_yaml(path)[0], list):
                target = entry["target"]
                label = f"{path.relative_to(MANIFESTS)}->{target['name']}"
                patches.append(pytest.param(operations, target["kind"], id=label))
    return patches


def apply_json_patch(body: dict, operations: list[dict]) -> dict:
    """`body` as kustomize patches it (add, replace, remove), without kubectl."""
    patched = copy.deepcopy(body)
    for operation in operations:
        *parents, last = json_pointer(operation["path"])
        target = patched
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target[token]
        if isinstance(target, list):
            index = len(target) if last == "-" else int(last)
            if operation["op"] == "remove":
                del target[index]
            elif operation["op"] == "add":
                target.insert(index, copy.deepcopy(operation["value"]))
            else:
                target[index] = copy.deepcopy(operation["value"])
        elif operation["op"] == "remove":
            del target[last]
        else:
            target[last] = copy.deepcopy(operation["value"])
    return patched


def patched(folder: str, kind: str, name: str) -> dict:
    """The `kind` `name` of base/ with the JSON patches of the kustomization in `folder`."""
    [kustomization] = [k for k in kustomizations() if k.folder == MANIFESTS / folder]
    body = copy.deepcopy(named(kind, name))
    for entry, path in zip(kustomization.body.get("patches", []), kustomization.files("patches")):
        if entry.get("target", {}).get("kind") == kind and entry["target"]["name"] == name:
            body = apply_json_patch(body, load_yaml(path)[0])
    return body


@pytest.mark.parametrize(("operations", "kind"), json_patches())
def test_json_patches_name_fields_the_sdk_has(operations: list[dict], kind: str) -> None:
    api_version = kinds(kind)[0].body["apiVersion"]
    assert json_patch_errors(operations, kind_class(api_version, kind)) == []


@pytest.mark.parametrize(
    ("original", "misspelt", "error"),
    [
        ("storageUri:", "storageURI:", "spec.predictor.model.storageURI: V1beta1ModelSpec has no field 'storageURI'"),
        ("  path: /v2/models/llm-small/ready", "  paht: /v2/models/llm-small/ready",
         "spec.predictor.model.readinessProbe.httpGet.paht: V1HTTPGetAction has no field 'paht'"),
        ("minReplicas: 1", 'minReplicas: "1"', "spec.predictor.minReplicas: expected int, got '1'"),
    ],
    ids=["kserve field", "kubernetes field", "type"],
)
def test_the_walker_rejects_a_misspelt_copy(tmp_path: Path, original: str, misspelt: str, error: str) -> None:
    text = (MANIFESTS / "base" / "llm-small.yaml").read_text()
    assert original in text
    copy = tmp_path / "llm-small.yaml"
    copy.write_text(text.replace(original, misspelt, 1))
    assert manifest_errors(load_yaml(copy)[0]) == [f"InferenceService llm-small: {error}"]


def test_json_patch_paths_are_checked_too(tmp_path: Path) -> None:
    text = (MANIFESTS / "knative" / "model-services.yaml").read_text()
    assert "/containers/0/lifecycle" in text
    copy = tmp_path / "model-services.yaml"
    copy.write_text(text.replace("/containers/0/lifecycle", "/containers/0/lifecycles"))
    operations = load_yaml(copy)[0]
    assert json_patch_errors(operations, KSERVE_CLASSES["V1beta1InferenceService"]) == [
        "/spec/transformer/containers/0/lifecycles: V1Container has no field 'lifecycles'"]


# ---------------------------------------------------------------------------------------------
# Built overlays: what `kubectl apply -k` would send


def kustomize(folder: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    return crd_validation.kustomize(folder, kubectl)


def deployment_mode(isvc: dict) -> str | None:
    return isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")


def autoscaler_class(isvc: dict) -> str | None:
    return isvc["spec"]["predictor"].get("annotations", {}).get("serving.kserve.io/autoscalerClass")


def containers_of(body: dict) -> list[dict]:
    spec = body.get("spec", {})
    if body["kind"] == "ClusterServingRuntime":
        return spec["containers"]
    if body["kind"] == "InferenceService":
        return [*spec["predictor"].get("containers", []), *spec.get("transformer", {}).get("containers", [])]
    return []


def image_of(body: dict) -> str:
    """The image a manifest's containers run: the GPU image for the predictors (the
    ClusterServingRuntime's container; every model's predictor asks for a GPU), the CPU image for
    the transformers and the router."""
    return GPU_IMAGE if body["kind"] == "ClusterServingRuntime" else IMAGE


def deployment_mode_errors(isvc: dict) -> list[str]:
    """Features KServe (or Knative) accepts in one deployment mode only."""
    mode = deployment_mode(isvc)
    errors = []
    if isvc["spec"].get("canary") and mode != "Standard":
        errors.append("KServe accepts spec.canary only in Standard mode")
    if "canaryTrafficPercent" in isvc["spec"]["predictor"] and mode != "Knative":
        errors.append("canaryTrafficPercent splits Knative revisions: Knative mode only")
    if autoscaler_class(isvc) == "keda" and mode != "Standard":
        errors.append("KEDA scales Standard-mode Deployments only")
    return errors + (knative_errors(isvc) if mode == "Knative" else [])


def knative_errors(isvc: dict) -> list[str]:
    """Knative drains its pods itself, and refuses the fields that would do it."""
    errors = []
    for component in ("predictor", "transformer"):
        spec = isvc["spec"].get(component, {})
        containers = [spec.get("model", {}), *spec.get("containers", [])]
        if "terminationGracePeriodSeconds" in spec or any("lifecycle" in c for c in containers):
            errors.append(f"{component}: Knative refuses terminationGracePeriodSeconds and lifecycle")
    return errors


def keda_errors(isvc: dict) -> list[str]:
    if autoscaler_class(isvc) != "keda":
        return []
    name = isvc["metadata"]["name"]
    predictor = isvc["spec"]["predictor"]
    queries = [metric["external"]["metric"]["query"] for metric in predictor["autoScaling"]["metrics"]]
    expected = f'vllm:num_requests_waiting{{model_name="{name}"}}'
    return [] if any(expected in query for query in queries) else [f"{name}: KEDA does not scale on {expected}"]


@pytest.mark.parametrize("folder", [k.folder for k in kustomizations()], ids=lambda f: str(f.relative_to(MANIFESTS)))
def test_every_kustomization_builds_into_valid_objects(folder: Path) -> None:
    built = kustomize(folder)
    for body in built:
        assert manifest_errors(body) == []
        for container in containers_of(body):
            assert container["image"] == f"{image_of(body)}:{IMAGE_TAG}", f"{body['metadata']['name']}: no image tag"
        if body["kind"] == "InferenceService":
            assert deployment_mode_errors(body) + keda_errors(body) == []
    knative = any(body["kind"] == "InferenceService" and deployment_mode(body) == "Knative" for body in built)
    for runtime in (body for body in built if body["kind"] == "ClusterServingRuntime"):
        assert not (knative and "lifecycle" in runtime["spec"]["containers"][0]), "Knative refuses preStop hooks"


# ---------------------------------------------------------------------------------------------
# Graphs: router.graph_spec checks what KServe's webhook, CRD and router refuse (a root, one target
# per step, Splitter weights summing to 100, $request/$response, no cycles, ...); these tests add
# what only the whole set of manifests can tell.

GRAPHS = kinds("InferenceGraph")
GRAPH_FILES = sorted({document.path for document in GRAPHS})


def isvc_names() -> set[str]:
    return {document.body["metadata"]["name"] for document in kinds("InferenceService")}


def graph(name: str) -> InferenceGraph:
    [found] = [graph for path in GRAPH_FILES for graph in load_graphs(MANIFESTS / path) if graph.name == name]
    return found


@pytest.mark.parametrize("path", GRAPH_FILES, ids=str)
def test_graphs_follow_kserve_router_rules_and_call_our_services(path: Path) -> None:
    for checked in load_graphs(MANIFESTS / path):
        assert checked.service_names <= isvc_names(), f"{checked.name} names services the manifests lack"


def test_graph_rules_reject_a_broken_copy(tmp_path: Path) -> None:
    text = (MANIFESTS / "graphs" / "ab-test.yaml").read_text()
    copy = tmp_path / "ab-test.yaml"
    copy.write_text(text.replace("weight: 10", "weight: 20"))
    with pytest.raises(GraphSpecError, match="weights sum to 110, not 100"):
        load_graphs(copy)
    copy.write_text(text.replace("serviceName: llm-small-v2", "serviceName: llm-smal"))
    [misnamed] = load_graphs(copy)
    assert misnamed.service_names - isvc_names() == {"llm-smal"}


def condition(graph_name: str, step_name: str) -> str:
    nodes = graph(graph_name).nodes.values()
    return next(step.condition for node in nodes for step in node.steps if step.name == step_name)


def test_the_switch_sends_each_route_to_its_model() -> None:
    routed = {"instances": [{"prompt": "hello"}], "route_score": 0.7}
    assert condition_matches({**routed, "route": "small"}, condition("llm-route", "small"))
    assert not condition_matches({**routed, "route": "large"}, condition("llm-route", "small"))
    assert condition_matches({**routed, "route": "large"}, condition("llm-route", "large"))
    assert not condition_matches({**routed, "route": "small"}, condition("llm-route", "large"))


def test_the_cascade_escalates_only_unsure_answers() -> None:
    escalate = condition("llm-cascade", "large")
    sure = {"text": "4", "finish_reason": "stop", "confidence": -0.4}
    unsure = {"text": "maybe", "finish_reason": "stop", "confidence": -3.2}
    assert not condition_matches({"predictions": [sure]}, escalate)
    assert condition_matches({"predictions": [unsure]}, escalate)
    assert condition_matches({"predictions": [sure, unsure]}, escalate)
    threshold = float(re.fullmatch(r"predictions\.#\(confidence<(-?[\d.]+)\)", escalate)[1])
    assert threshold == router_config().cascade.min_confidence, "the graph and the router disagree"


def request_timeout(service_name: str) -> float:
    """The predictor's --request_timeout: the longest a step on that model may take (0: no model)."""
    isvc = named("InferenceService", service_name)
    return predictor_args(isvc).request_timeout if "model" in isvc["spec"]["predictor"] else 0


def slowest_path(checked: InferenceGraph, node_name: str = "root") -> float:
    node = checked.nodes[node_name]
    durations = [slowest_path(checked, step.node_name) if step.node_name else request_timeout(step.service_name)
                 for step in node.steps]
    return sum(durations) if node.router_type is RouterType.SEQUENCE else max(durations)


@pytest.mark.parametrize("document", GRAPHS, ids=str)
def test_graph_timeouts_are_raised_for_long_generations(document: Document) -> None:
    checked = graph(document.body["metadata"]["name"])
    timeouts = checked.router_timeouts
    slowest = slowest_path(checked)
    assert timeouts.server_write > DEFAULT_SERVER_WRITE
    assert timeouts.server_write >= slowest, f"a {slowest} s generation outlives the graph's response"
    assert timeouts.service_client >= slowest


# ---------------------------------------------------------------------------------------------
# Containers: args our components accept, probes, draining, one image


def parse(parser: argparse.ArgumentParser, args: list[str], where: str) -> argparse.Namespace:
    # Flags in full: argparse would take `--max_queu` for `--max_queue`, and hide the misspelling.
    parser.allow_abbrev = False
    try:
        return parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: {parser.prog} rejects {args}")


def predictor_args(isvc: dict, predictor: dict | None = None) -> argparse.Namespace:
    """The predictor's command line as KServe builds it: the runtime's args, then the service's."""
    name = isvc["metadata"]["name"]
    predictor = predictor or isvc["spec"]["predictor"]
    runtime = named("ClusterServingRuntime", predictor["model"]["runtime"])
    runtime_args = [arg.replace("{{.Name}}", name) for arg in runtime["spec"]["containers"][0]["args"]]
    return parse(runtime_main.build_parser(), runtime_args + predictor["model"].get("args", []), name)


def prestop_seconds(container: dict) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


MODEL_SERVICES = [doc for doc in kinds("InferenceService") if "model" in doc.body["spec"]["predictor"]]


@pytest.mark.parametrize("document", MODEL_SERVICES, ids=str)
def test_predictor_args_parse_and_name_the_model(document: Document) -> None:
    isvc = document.body
    name, predictor = isvc["metadata"]["name"], isvc["spec"]["predictor"]
    assert predictor["model"]["runtime"] == RUNTIME
    args = predictor_args(isvc)
    assert args.model_name == name
    assert predictor["model"]["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{name}/ready"
    runtime = named("ClusterServingRuntime", RUNTIME)["spec"]["containers"][0]
    assert predictor["terminationGracePeriodSeconds"] > prestop_seconds(runtime) + args.grace_period
    assert predictor["timeout"] > args.request_timeout, "the gateway would cut requests before the engine's 504"
    for canary in isvc["spec"].get("canary", []):
        merged_model = {**predictor["model"], **canary["predictor"]["model"]}
        assert predictor_args(isvc, {"model": merged_model}).model_name == name


@pytest.mark.parametrize("document", [doc for doc in MODEL_SERVICES if "transformer" in doc.body["spec"]], ids=str)
def test_transformer_args_parse_and_match_the_predictor(document: Document) -> None:
    isvc = document.body
    name, spec = isvc["metadata"]["name"], isvc["spec"]
    [container] = spec["transformer"]["containers"]
    assert container["command"] == ["python", "-m", "transformer"]
    # KServe appends the predictor's host; the protocol is ours to set.
    injected = ["--predictor_host", f"{name}-predictor.default"]
    args = parse(transformer_main.build_parser(), container["args"] + injected, name)
    assert (args.model_name, args.predictor_protocol) == (name, "v2")
    assert args.max_model_len == predictor_args(isvc).max_model_len
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert env["STORAGE_URI"] == spec["predictor"]["model"]["storageUri"], "the tokenizer must be the model's"
    assert args.tokenizer_dir == "/mnt/models"
    assert container["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{name}/ready"
    assert spec["transformer"]["terminationGracePeriodSeconds"] > prestop_seconds(container) + args.grace_period


def router_config() -> RouterConfig:
    """The router's ConfigMap, validated as the router validates its config file."""
    config_map = named("ConfigMap", "router-config")
    return parse_config(yaml.safe_load(config_map["data"]["router.yaml"]), "router-config")


def router_variants() -> list[str]:
    """base/ and the folders that patch its router (knative/, gateway/)."""
    return ["base", *(str(k.folder.relative_to(MANIFESTS)) for k in kustomizations()
                      if any(entry.get("target", {}).get("name") == "router" for entry in k.body.get("patches", [])))]


def router_container(isvc: dict) -> dict:
    [container] = isvc["spec"]["predictor"]["containers"]
    return container


def router_args(isvc: dict, where: str) -> argparse.Namespace:
    """The router's args, parsed and checked as `python -m router` does at start."""
    parser = router_main.build_parser()
    args = parse(parser, router_container(isvc)["args"], where)
    try:
        check_gateway_arguments(parser, args)
    except SystemExit:
        pytest.fail(f"{where}: python -m router refuses the gateway flags")
    return args


def mounted_volume(isvc: dict, path: str) -> dict:
    """The pod volume that the router's container sees `path` in."""
    [mount] = [m for m in router_container(isvc)["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    [volume] = [v for v in isvc["spec"]["predictor"]["volumes"] if v["name"] == mount["name"]]
    return volume


@pytest.mark.parametrize("folder", router_variants())
def test_router_args_parse_and_its_config_names_the_models(folder: str) -> None:
    isvc = patched(folder, "InferenceService", "router")
    assert router_container(isvc)["command"] == ["python", "-m", "router"]
    args = router_args(isvc, f"{folder}: router")
    assert mounted_volume(isvc, args.config)["configMap"]["name"] == "router-config"
    config = router_config()
    # With no --model_name, KServe's graph posts to /v1/models/<InferenceService name>:predict.
    assert config.model_name == isvc["metadata"]["name"] and args.model_name is None
    assert router_container(isvc)["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{config.model_name}/ready"
    for target in (config.targets.small, config.targets.large):
        assert "transformer" in named("InferenceService", target.model)["spec"]
        assert target.urls == [f"http://{target.model}-transformer.default.svc.cluster.local"]


@pytest.mark.parametrize("folder", router_variants())
def test_the_patched_router_is_what_kustomize_builds(folder: str) -> None:
    [built] = [body for body in kustomize(MANIFESTS / folder)
               if body["kind"] == "InferenceService" and body["metadata"]["name"] == "router"]
    expected = patched(folder, "InferenceService", "router")
    router_container(expected)["image"] = f"{IMAGE}:{IMAGE_TAG}"
    assert built == expected


def test_the_base_router_runs_without_the_gateway() -> None:
    args = router_args(named("InferenceService", "router"), "base: router")
    assert (args.tenants_file, args.api_keys_file, args.redis_url, args.response_cache) == (None, None, None, False)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_gateway_router_finds_its_tenants_redis_and_spool(tmp_path: Path) -> None:
    isvc = patched("gateway", "InferenceService", "router")
    args = router_args(isvc, "gateway: router")
    assert isvc["spec"]["predictor"]["minReplicas"] >= 2, "the variant for replicas that share their state"
    # The tenants file: a key of the mounted Secret, and a file the router loads.
    secret = named("Secret", mounted_volume(isvc, args.tenants_file)["secret"]["secretName"])
    tenants_file = tmp_path / "tenants.yaml"
    tenants_file.write_text(secret["stringData"][Path(args.tenants_file).name])
    assert Tenants.from_file(tenants_file).required
    # The spool on a writable volume, where the state directory points too.
    assert "emptyDir" in mounted_volume(isvc, args.usage_ledger)
    env = {variable["name"]: variable["value"] for variable in router_container(isvc)["env"]}
    assert env[STATE_DIR_VARIABLE] == str(Path(args.usage_ledger).parent)
    # Redis: a Service of ours on the URL's port, in front of the Redis Deployment.
    assert any(arg.startswith("--redis_failure_mode") for arg in router_container(isvc)["args"]), "say it"
    url = urlsplit(args.redis_url)
    service = named("Service", url.hostname)
    assert url.scheme == "redis" and url.port in [port["port"] for port in service["spec"]["ports"]]
    redis = named("Deployment", "router-redis")
    assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])


def test_redis_keeps_the_ledger_on_disk() -> None:
    redis = named("Deployment", "router-redis")
    pod = redis["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["image"] == "redis:7" and container["args"][0] == "redis-server"
    options = dict(zip(container["args"][1::2], container["args"][2::2]))
    assert options["--appendonly"] == "yes" and options["--appendfsync"] in ("always", "everysec")
    assert options["--maxmemory-policy"] == "noeviction", "evicting keys would drop ledger records"
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/data"]
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    named("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    # One pod writes the append-only file at a time.
    assert redis["spec"]["replicas"] == 1 and redis["spec"]["strategy"]["type"] == "Recreate"
    policy = named("NetworkPolicy", "router-redis")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    [rule] = policy["ingress"]
    router_pods = {"serving.kserve.io/inferenceservice": "router"}  # the label KServe gives the pods
    assert any(selects(peer["podSelector"]["matchLabels"], router_pods) for peer in rule["from"])


def test_every_component_keeps_a_replica() -> None:
    """Said explicitly, and never zero: a model's cold start takes minutes."""
    for document in kinds("InferenceService"):
        for component in ("predictor", "transformer"):
            if component in document.body["spec"]:
                assert document.body["spec"][component]["minReplicas"] >= 1, f"{document} {component}"
    for document in kinds("InferenceService", PATCHES):
        assert document.body["spec"]["predictor"].get("minReplicas", 1) >= 1, str(document)
    for document in GRAPHS:
        assert document.body["spec"]["minReplicas"] >= 1, str(document)


def test_each_component_runs_its_image() -> None:
    for document in kinds("ClusterServingRuntime") + kinds("InferenceService"):
        for container in containers_of(document.body):
            expected = image_of(document.body)
            assert container["image"] == expected, f"{document}: kustomize sets the tags of {IMAGE} and {GPU_IMAGE}"
            command = container.get("command", ["python", "-m", "runtime"])
            assert command[:2] == ["python", "-m"] and command[2] in MODULES, f"{document}: {command}"


def test_the_gpu_image_serves_gpu_predictors_only() -> None:
    """Every service on the ClusterServingRuntime (which runs the GPU image) asks for CUDA and a GPU."""
    for document in kinds("InferenceService"):
        model = document.body["spec"]["predictor"].get("model")
        if model is None:
            continue
        assert model["runtime"] == RUNTIME
        assert "--device=cuda" in model["args"], f"{document}: the GPU image serves CUDA predictors"
        assert model["resources"]["limits"]["nvidia.com/gpu"] == "1", str(document)


# ---------------------------------------------------------------------------------------------
# NetworkPolicies: the models' pods take requests only from the router's and the graphs' router
# pods (and their own transformers). Pods are matched by the labels KServe puts on them:
# serving.kserve.io/inferenceservice and component on an InferenceService's pods,
# serving.kserve.io/inferencegraph on a graph's router pods.

ISVC_LABEL = "serving.kserve.io/inferenceservice"
GRAPH_LABEL = "serving.kserve.io/inferencegraph"
MODELS_POLICY = "llm-models"
SERVING_PORTS = {8080, 8081}


def matches(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a pod's labels."""
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {"In": present and labels.get(key) in values, "NotIn": not present or labels[key] not in values,
                "Exists": present, "DoesNotExist": not present}[operator]:
            return False
    return True


def pod_labels(isvc_name: str, component: str) -> dict[str, str]:
    return {ISVC_LABEL: isvc_name, "component": component}


def admitted_ports(policy: dict, labels: dict[str, str]) -> set[int]:
    """The ports a pod of this namespace with `labels` may reach the policy's pods on."""
    ports: set[int] = set()
    for rule in policy["spec"]["ingress"]:
        peers = [peer for peer in rule["from"] if set(peer) == {"podSelector"}]
        if any(matches(peer["podSelector"], labels) for peer in peers):
            ports |= {port["port"] for port in rule["ports"]}
    return ports


def models_behind_the_router() -> set[str]:
    """The services the router's config and the graphs call, the router itself aside."""
    config = router_config()
    graphed = {step["serviceName"] for document in GRAPHS for node in document.body["spec"]["nodes"].values()
               for step in node["steps"] if "serviceName" in step}
    return ({config.targets.small.model, config.targets.large.model} | graphed) - {config.model_name}


def test_the_policy_selects_every_model_behind_the_router_and_not_the_router() -> None:
    policy = named("NetworkPolicy", MODELS_POLICY)
    selector = policy["spec"]["podSelector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    models = models_behind_the_router()
    assert models >= {"llm-small", "llm-large", "llm-small-v2"}
    for name in models:
        spec = named("InferenceService", name)["spec"]
        for component in ("predictor", "transformer"):
            if component in spec:
                assert matches(selector, pod_labels(name, component)), f"{name} {component} is not protected"
    assert not matches(selector, pod_labels(router_config().model_name, "predictor")), "clients call the router"


def test_the_policy_admits_the_router_the_graphs_and_the_models_transformers_only() -> None:
    policy = named("NetworkPolicy", MODELS_POLICY)
    router_pod = pod_labels(router_config().model_name, "predictor")
    assert admitted_ports(policy, router_pod) == SERVING_PORTS
    for document in GRAPHS:
        graph_pod = {GRAPH_LABEL: document.body["metadata"]["name"]}
        assert admitted_ports(policy, graph_pod) == SERVING_PORTS, f"{document}'s router pods"
    for name in models_behind_the_router():
        assert admitted_ports(policy, pod_labels(name, "transformer")) == SERVING_PORTS, f"{name}'s transformer"
        assert admitted_ports(policy, pod_labels(name, "predictor")) == set(), "a predictor calls no model"
    assert admitted_ports(policy, {"app": "anything-else"}) == set()
    # The ports are the ones the containers serve on.
    [container] = named("ClusterServingRuntime", RUNTIME)["spec"]["containers"]
    assert {port["containerPort"] for port in container["ports"]} <= SERVING_PORTS


def test_prometheus_may_scrape_the_models() -> None:
    policy = named("NetworkPolicy", MODELS_POLICY)
    runtime = named("ClusterServingRuntime", RUNTIME)["spec"]
    metrics_port = int(runtime["annotations"]["prometheus.io/port"])
    scrapers = [rule for rule in policy["spec"]["ingress"]
                if any("namespaceSelector" in peer for peer in rule["from"])]
    assert any(metrics_port in {port["port"] for port in rule["ports"]} for rule in scrapers)


@pytest.mark.parametrize("folder", [k.folder for k in kustomizations()], ids=lambda f: str(f.relative_to(MANIFESTS)))
def test_every_install_of_the_models_protects_them(folder: Path) -> None:
    """Every folder that installs the runtime and models carries the policy; graphs/ goes on top of
    one of them (its llm-small-v2 is covered by theirs, as the test above checks)."""
    built = kustomize(folder)
    models = [body["metadata"]["name"] for body in built if body["kind"] == "InferenceService"
              and body["metadata"]["name"] in models_behind_the_router()]
    if not models or not any(body["kind"] == "ClusterServingRuntime" for body in built):
        return
    [policy] = [body for body in built
                if body["kind"] == "NetworkPolicy" and body["metadata"]["name"] == MODELS_POLICY]
    for name in models:
        assert matches(policy["spec"]["podSelector"], pod_labels(name, "predictor")), f"{folder}: {name}"
    knative = any(deployment_mode(body) == "Knative" for body in built if body["kind"] == "InferenceService")
    # Knative's activator and cluster-local gateway deliver the requests into the queue-proxy (8012).
    knative_ports = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]} & {8012}
    assert bool(knative_ports) == knative, f"{folder}: Knative mode needs its data path admitted, others not"
