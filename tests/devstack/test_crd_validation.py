"""The CRD checker (devstack/crd_validation.py) on small structural schemas, so each rule is seen to
refuse what the API server refuses and keep what it keeps; and the schema extractor
(devstack/kserve_crd_schemas.py) on a git repository holding one CRD."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from devstack.crd_validation import PRUNED, CrdSchemas
from devstack.kserve_crd_schemas import SOURCE_FILE, extract

SCHEMA = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["model"],
            "properties": {
                "model": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "replicas": {"type": "integer", "format": "int32"}},
                },
                "port": {"x-kubernetes-int-or-string": True,
                         "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "config": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "timeout": {"type": "integer", "nullable": True},
                "template": {"type": "object", "properties": {"metadata": {"type": "object"}}},
            },
        },
    },
}
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.serving.kserve.io"},
    "spec": {
        "group": "serving.kserve.io",
        "names": {"kind": "Widget", "plural": "widgets"},
        "versions": [{"name": "v1", "served": True, "schema": {"openAPIV3Schema": SCHEMA}},
                     {"name": "v0", "served": False, "schema": {"openAPIV3Schema": SCHEMA}}],
    },
}


def widget(spec: dict, metadata: dict | None = None) -> dict:
    return {"apiVersion": "serving.kserve.io/v1", "kind": "Widget",
            "metadata": {"name": "w"} if metadata is None else metadata, "spec": spec}


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> CrdSchemas:
    """Widget's schema as the extractor writes it, from a one-commit repository."""
    repository = tmp_path_factory.mktemp("kserve")
    crd_folder = repository / "config" / "crd" / "full"
    crd_folder.mkdir(parents=True)
    (crd_folder / "serving.kserve.io_widgets.yaml").write_text(yaml.safe_dump(CRD))
    for command in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "crd"],
                    ["tag", "v0.21.0"]):
        subprocess.run(["git", *command], cwd=repository, check=True)
    output = tmp_path_factory.mktemp("schemas")
    extract(repository / ".git", "v0.21.0", {"Widget"}, output)
    return CrdSchemas.load(output)


def test_the_extractor_records_its_source_and_keeps_served_versions(schemas: CrdSchemas) -> None:
    source = json.loads((schemas.directory / SOURCE_FILE).read_text())
    assert source["ref"] == "v0.21.0" and source["describe"] == "v0.21.0" and len(source["commit"]) == 40
    assert source["files"] == {"serving.kserve.io_widgets.json": "config/crd/full/serving.kserve.io_widgets.yaml"}
    assert set(schemas.schemas) == {("serving.kserve.io/v1", "Widget")}


def test_a_valid_object_passes(schemas: CrdSchemas) -> None:
    spec = {"model": {"name": "m", "replicas": 2}, "port": "http", "labels": {"a": "b"},
            "config": {"anything": {"goes": [1]}}, "timeout": None}
    assert schemas.errors(widget(spec)) == []
    assert schemas.errors(widget({**spec, "port": 8080})) == []


@pytest.mark.parametrize(("spec", "metadata", "error"), [
    ({"model": {"name": "m", "replicaz": 2}}, None, f"spec.model.replicaz: unknown field, {PRUNED}"),
    ({"model": {"name": "m"}, "template": {"metadata": {"labels": {"a": "b"}}}}, None,
     f"spec.template.metadata.labels: unknown field, {PRUNED}"),
    ({"model": {"name": "m"}}, {"name": "w", "label": {"a": "b"}}, f"metadata.label: unknown field, {PRUNED}"),
    ({"model": {}}, None, "spec.model: 'name' is a required property"),
    ({"model": {"name": "m"}, "canary": {}}, None, f"spec.canary: unknown field, {PRUNED}"),
    ({}, None, "spec: 'model' is a required property"),
    ({"model": {"name": "m", "replicas": "2"}}, None, "spec.model.replicas: '2' is not of type 'integer'"),
    ({"model": {"name": "m"}, "port": 1.5}, None, "spec.port: 1.5 is not valid under any of the given schemas"),
    ({"model": {"name": "m"}, "labels": {"a": 1}}, None, "spec.labels.a: 1 is not of type 'string'"),
    ({"model": {"name": "m", "replicas": None}}, None, f"spec.model.replicas: null, {PRUNED}"),
    ({"model": {"name": "m"}}, {"name": "W"}, "metadata.name: 'W' does not match"),
    ({"model": {"name": "m"}}, {"labels": {}}, "metadata: {'labels': {}} is not valid under any of the given schemas"),
], ids=["pruned", "pruned-under-nested-metadata", "pruned-metadata", "required", "pruned-not-required",
        "required-at-spec", "type", "int-or-string", "map-values", "null", "name", "no-name"])
def test_each_rule_refuses(schemas: CrdSchemas, spec: dict, metadata: dict | None, error: str) -> None:
    errors = schemas.errors(widget(spec, metadata))
    assert len(errors) == 1 and errors[0].startswith(error), errors


def test_unknown_kserve_versions_are_errors_and_other_groups_are_not_checked(schemas: CrdSchemas) -> None:
    assert "no schema" in schemas.errors({**widget({}), "apiVersion": "serving.kserve.io/v0"})[0]
    assert schemas.errors({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {}, "extra": 1}) == []
