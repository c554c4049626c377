"""Checks KServe objects against their CRD's openAPIV3Schema the way the API server does: required
fields and types refuse the object, and fields the schema does not name are silently pruned (reported
here as errors, since a pruned field is a setting that never reaches KServe).

The schemas come from devstack.kserve_crd_schemas. Kubernetes' structural-schema extensions are
translated into JSON Schema (OpenAPI 3.0 is draft 4 in this respect):
- an object with `properties` (or with neither `properties` nor `additionalProperties`) drops unknown
  fields, unless `x-kubernetes-preserve-unknown-fields` keeps them;
- `x-kubernetes-int-or-string` takes an integer or a string; `nullable` adds null (a null elsewhere is
  pruned);
- the root's `metadata` (and an `x-kubernetes-embedded-resource`'s) is an ObjectMeta, which the API
  server checks itself rather than through the CRD: a name (or generateName), string labels and
  annotations, and no unknown fields.

    python -m devstack.crd_validation manifests/canary/standard   # errors of a kustomize build
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from devstack.kserve_crd_schemas import DEFAULT_OUTPUT, GROUP, SOURCE_FILE

SCHEMAS_VARIABLE = "KSERVE_CRD_SCHEMAS"  # overrides where the generated schemas are read from
PRUNED = "the API server would silently prune it"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
STRING_LIST = {"type": "array", "items": {"type": "string"}}
OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
        "finalizers": STRING_LIST,
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]},
        "deletionTimestamp": {"type": ["string", "null"]},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "managedFields": {"type": "array", "items": {"type": "object"}},
        "selfLink": {"type": "string"},
    },
    "additionalProperties": False,
    "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}],
}
# Keys that carry sub-schemas which only validate values: they cannot declare fields (a structural
# schema forbids it), so nothing under them prunes.
VALUE_VALIDATIONS = ("allOf", "anyOf", "oneOf")
DROPPED_KEYS = ("nullable", "default", "description", "example")


def json_schema(node: dict, prunes: bool = True) -> dict:
    """The JSON Schema that accepts what the API server keeps of a structural schema's node."""
    schema = {key: value for key, value in node.items()
              if not key.startswith("x-kubernetes-") and key not in DROPPED_KEYS}
    if "properties" in node:
        schema["properties"] = {name: json_schema(child, prunes) for name, child in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        schema["additionalProperties"] = json_schema(node["additionalProperties"], prunes)
    if "items" in node:
        schema["items"] = json_schema(node["items"], prunes)
    for key in VALUE_VALIDATIONS:
        if key in node:
            schema[key] = [json_schema(child, prunes=False) for child in node[key]]
    if "not" in node:
        schema["not"] = json_schema(node["not"], prunes=False)
    if node.get("x-kubernetes-embedded-resource"):
        schema.setdefault("properties", {}).update(
            apiVersion={"type": "string"}, kind={"type": "string"}, metadata=OBJECT_META)
    if node.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}] + [{"type": "null"}] * bool(node.get("nullable"))
    elif node.get("nullable") and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    keeps_unknown = node.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in node
    if prunes and node.get("type") == "object" and not keeps_unknown:
        schema["additionalProperties"] = False
    return schema


def root_schema(open_api_v3_schema: dict) -> dict:
    """A CRD's schema with its root metadata checked as the ObjectMeta the API server decodes."""
    schema = json_schema(open_api_v3_schema)
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata"})
    return schema


def location(path: object) -> str:
    """`spec.canary[0].predictor` for a jsonschema error's path."""
    text = "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)
    return text.lstrip(".") or "(root)"


def describe(error: jsonschema.ValidationError) -> list[str]:
    """One line per problem, naming the field the API server would refuse or drop."""
    where = location(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return [f"{where}.{name}: unknown field, {PRUNED}".removeprefix("(root).") for name in unknown]
    if error.validator == "type" and error.instance is None:  # null where the schema is not nullable
        return [f"{where}: null, {PRUNED}"]
    return [f"{where}: {error.message}"]


@dataclass(slots=True)
class CrdSchemas:
    """The generated schemas of one KServe source (SOURCE.json says which), by apiVersion and kind."""

    directory: Path
    source: dict
    schemas: dict[tuple[str, str], dict]
    validators: dict[tuple[str, str], jsonschema.Draft4Validator] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> CrdSchemas:
        schemas = {}
        for path in sorted(directory.glob("*.json")):
            if path.name == SOURCE_FILE:
                continue
            crd = json.loads(path.read_text())
            for version, schema in crd["versions"].items():
                schemas[(f"{crd['group']}/{version}", crd["kind"])] = schema
        return cls(directory, json.loads((directory / SOURCE_FILE).read_text()), schemas)

    def validator(self, api_version: str, kind: str) -> jsonschema.Draft4Validator:
        key = (api_version, kind)
        if key not in self.validators:
            self.validators[key] = jsonschema.Draft4Validator(root_schema(self.schemas[key]))
        return self.validators[key]

    def errors(self, body: dict) -> list[str]:
        """What the API server would refuse or prune in a KServe object (other groups are not checked)."""
        api_version, kind = body.get("apiVersion", ""), body.get("kind", "")
        if not api_version.startswith(f"{GROUP}/"):
            return []
        if (api_version, kind) not in self.schemas:
            return [f"{kind} {api_version}: no schema in {self.directory} (add the kind and regenerate)"]
        validator = self.validator(api_version, kind)
        found = sorted(validator.iter_errors(body), key=lambda error: list(map(str, error.absolute_path)))
        return [line for error in found for line in describe(error)]


def schemas_directory() -> Path:
    return Path(os.environ.get(SCHEMAS_VARIABLE, DEFAULT_OUTPUT))


def kustomize(folder: Path, kubectl: str) -> list[dict]:
    """The objects `kubectl apply -k folder` would send."""
    built = subprocess.run([kubectl, "kustomize", str(folder)], check=False, capture_output=True, text=True,
                           timeout=60)
    if built.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder}: {built.stderr}")
    return [body for body in yaml.safe_load_all(built.stdout) if body]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="kustomization folders")
    parser.add_argument("--schemas", type=Path, default=schemas_directory())
    arguments = parser.parse_args()
    schemas = CrdSchemas.load(arguments.schemas)
    kubectl = shutil.which("kubectl") or sys.exit("kubectl is not installed")
    failed = False
    for folder in arguments.folders:
        for body in kustomize(folder, kubectl):
            for error in schemas.errors(body):
                failed = True
                print(f"{folder}: {body['kind']} {body['metadata'].get('name')}: {error}")
    source = schemas.source
    print(f"checked against {source['repository']} {source['ref']} ({source['commit']})", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
