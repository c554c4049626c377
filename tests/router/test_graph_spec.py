"""Reading and checking InferenceGraph manifests: what KServe's webhook and CRD refuse, and what
they let through that would fail every request, each with a message that says where."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from router.graph_spec import (
    Dependency,
    GraphSpecError,
    RouterType,
    StepData,
    load_graph,
    load_graphs,
    parse_graph,
)
from tests.router.graph_fakes import graph_manifest, sequence

CASCADE_YAML = """\
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata:
  name: llm-cascade
  namespace: models
spec:
  minReplicas: 1
  resources:
    requests: {cpu: 100m}
  routerTimeouts:
    serverWrite: 600
    serviceClient: 300
  nodes:
    root:
      routerType: Sequence
      steps:
        - name: small
          serviceName: llm-small
        - name: large
          serviceName: llm-large
          condition: predictions.#(confidence<-2)
          dependency: Hard
    canary:
      routerType: Splitter
      steps:
        - serviceName: llm-large
          weight: 90
        - serviceUrl: http://llm-large-next.models.svc.cluster.local/v1/models/llm-large:predict
          weight: 10
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "graph.yaml"
    path.write_text(text)
    return path


def test_a_manifest_as_kubectl_takes_it(tmp_path: Path) -> None:
    graph = load_graph(write(tmp_path, CASCADE_YAML))
    assert graph.name == "llm-cascade"
    assert graph.service_names == {"llm-small", "llm-large"}
    root = graph.nodes["root"]
    assert root.router_type is RouterType.SEQUENCE
    small, large = root.steps
    assert (small.name, small.service_name, small.data, small.dependency) == ("small", "llm-small", StepData.REQUEST,
                                                                              Dependency.SOFT)
    assert (large.condition, large.dependency) == ("predictions.#(confidence<-2)", Dependency.HARD)
    assert [step.weight for step in graph.nodes["canary"].steps] == [90, 10]
    timeouts = graph.router_timeouts
    assert (timeouts.server_read, timeouts.server_write, timeouts.server_idle, timeouts.service_client) == (60, 600,
                                                                                                          180, 300)


def test_kserve_default_timeouts() -> None:
    graph = parse_graph(graph_manifest({"root": {"routerType": "Sequence", "steps": [{"serviceName": "a"}]}}))
    timeouts = graph.router_timeouts
    assert (timeouts.server_read, timeouts.server_write, timeouts.server_idle, timeouts.service_client) == (60, 60,
                                                                                                          180, None)
    assert graph.timeout is None


def test_load_graphs_skips_other_documents_of_a_file(tmp_path: Path) -> None:
    other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n"
    second = CASCADE_YAML.replace("llm-cascade", "second")
    path = write(tmp_path, other + CASCADE_YAML + "---\n" + second)
    assert [graph.name for graph in load_graphs(path)] == ["llm-cascade", "second"]
    with pytest.raises(GraphSpecError, match="expected one document of kind InferenceGraph, found 2"):
        load_graph(path)
    assert load_graphs(write(tmp_path, other)) == []


def test_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, CASCADE_YAML.replace("routerType: Splitter", "routerType: Split"))
    with pytest.raises(GraphSpecError, match=f"{path}: spec.nodes.canary.routerType: Input should be 'Sequence', "
                                             "'Switch', 'Splitter' or 'Ensemble'"):
        load_graphs(path)


VALID = graph_manifest({
    "root": sequence({"serviceName": "a"}, {"nodeName": "pick", "data": "$response"}),
    "pick": {"routerType": "Switch", "steps": [{"serviceName": "b", "condition": "[@this].#(route==b)"}]},
})


def edited(edit: dict[str, Any]) -> dict[str, Any]:
    manifest = copy.deepcopy(VALID)
    manifest["spec"]["nodes"].update(edit)
    return manifest


@pytest.mark.parametrize(("manifest", "message"), [
    (graph_manifest({"start": sequence({"serviceName": "a"})}), "has no node named 'root'"),
    (edited({"root": sequence({"name": "x"})}), "node 'root' step 0 ('x') needs exactly one of serviceName, "
                                                "serviceUrl, nodeName; it has none"),
    (edited({"root": sequence({"serviceName": "a", "nodeName": "pick"})}), "it has serviceName, nodeName"),
    (edited({"root": sequence({"serviceName": "a"}, {"nodeName": "nowhere"})}),
     "node 'root' step 1: nodeName 'nowhere' is not a node of the graph"),
    (edited({"root": sequence({"serviceUrl": "llm-small.models.svc/v1/models/m:predict"})}), "is not an http(s) URL"),
    (edited({"root": {"routerType": "Splitter", "steps": [{"serviceName": "a", "weight": 60},
                                                          {"serviceName": "b", "weight": 30}]}}),
     "the Splitter's weights sum to 90, not 100"),
    (edited({"root": {"routerType": "Splitter", "steps": [{"serviceName": "a", "weight": 100},
                                                          {"serviceName": "b"}]}}), "Splitter step 1 has no weight"),
    (edited({"root": {"routerType": "Splitter", "steps": [{"serviceName": "a", "weight": 110},
                                                          {"serviceName": "b", "weight": -10}]}}),
     "Splitter step 1 has a negative weight"),
    (edited({"root": {"routerType": "Splitter", "steps": [{"serviceName": "a", "weight": "100"}]}}),
     "spec.nodes.root.steps.0.weight: Input should be a valid integer"),
    (edited({"root": {"routerType": "Switch", "steps": [{"serviceName": "a"}]}}), "a Switch step needs a condition"),
    (edited({"root": sequence({"serviceName": "a", "condition": "route"})}),
     "the first step of a Sequence cannot have a condition"),
    (edited({"root": sequence()}), "node 'root' has no steps"),
    (edited({"root": sequence({"name": "s", "serviceName": "a"}, {"name": "s", "serviceName": "b"})}),
     "has more than one step named 's'"),
    (edited({"root": {"routerType": "Sequential", "steps": [{"serviceName": "a"}]}}),
     "spec.nodes.root.routerType: Input should be 'Sequence', 'Switch', 'Splitter' or 'Ensemble'"),
    # KServe reads any other value as $request; refused here so that the mistake shows.
    (edited({"root": sequence({"serviceName": "a"}, {"serviceName": "b", "data": "$response.predictions"})}),
     "spec.nodes.root.steps.1.data: Input should be '$request' or '$response'"),
    (edited({"root": sequence({"serviceNmae": "a"})}), "spec.nodes.root.steps.0.serviceNmae: unknown field"),
    (edited({"root": sequence({"serviceName": "a", "dependency": "hard"})}),
     "dependency: Input should be 'Soft' or 'Hard'"),
    (edited({"root": sequence({"nodeName": "root"})}), "has a cycle of nodes: root -> root"),
    (edited({"pick": sequence({"nodeName": "loop"}), "loop": sequence({"nodeName": "pick"})}),
     "has a cycle of nodes: pick -> loop -> pick"),
    (graph_manifest({"root": sequence({"serviceName": "a"})}, router_timeouts={"serverWrite": -1}),
     "spec.routerTimeouts.serverWrite: Input should be greater than or equal to 0"),
    (graph_manifest({"root": sequence({"serviceName": "a"})}, router_timeouts={"serverWirte": 5}),
     "spec.routerTimeouts.serverWirte: unknown field"),
    ({**VALID, "apiVersion": "serving.kserve.io/v1beta1"}, "expected apiVersion serving.kserve.io/v1alpha1"),
    ({**VALID, "metadata": {"name": "LLM_graph"}}, "metadata.name 'LLM_graph' must consist of lower case"),
    ({key: value for key, value in VALID.items() if key != "spec"}, "spec: Field required"),
])
def test_refused_with_a_clear_message(manifest: dict[str, Any], message: str) -> None:
    with pytest.raises(GraphSpecError, match=re.escape(message)):
        parse_graph(manifest)


def test_the_valid_example_passes() -> None:
    assert set(parse_graph(VALID).nodes) == {"root", "pick"}


def test_a_node_reached_twice_is_no_cycle() -> None:
    manifest = edited({"root": sequence({"nodeName": "pick"}, {"nodeName": "pick"})})
    assert parse_graph(manifest).nodes["root"].steps[1].node_name == "pick"
