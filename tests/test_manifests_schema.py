"""Every object of every kustomize build under manifests/ passes the openAPIV3Schema of KServe's CRDs
(config/crd/full in the kserve repository) as the API server enforces it: required fields, types, and
no field it would silently prune. The kserve SDK's classes that tests/test_manifests.py checks
against know the field names, but not which are required nor what the server drops.

The schemas are generated data (devstack/kserve_crd_schemas.py, SOURCE.json says from which commit),
read from shared/kserve-crds or $KSERVE_CRD_SCHEMAS; without them these tests skip."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from devstack.crd_validation import PRUNED, CrdSchemas, schemas_directory
from tests.test_manifests import MANIFESTS, kustomizations, kustomize

REGENERATE = "python -m devstack.kserve_crd_schemas --git-dir <a kserve clone> --ref <the release>"


@pytest.fixture(scope="module")
def schemas() -> CrdSchemas:
    directory = schemas_directory()
    if not directory.is_dir():
        pytest.skip(f"no KServe CRD schemas in {directory}: {REGENERATE}")
    return CrdSchemas.load(directory)


def built(folder: str, kind: str, name: str) -> dict:
    [body] = [body for body in kustomize(MANIFESTS / folder)
              if body["kind"] == kind and body["metadata"]["name"] == name]
    return body


@pytest.mark.parametrize("folder", [k.folder for k in kustomizations()], ids=lambda f: str(f.relative_to(MANIFESTS)))
def test_every_kustomization_passes_kserves_crds(schemas: CrdSchemas, folder: Path) -> None:
    errors = [f"{body['kind']} {body['metadata']['name']}: {error}"
              for body in kustomize(folder) for error in schemas.errors(body)]
    assert errors == [], f"refused or pruned by {schemas.source['repository']} {schemas.source['commit']}"


def test_the_canary_names_its_container(schemas: CrdSchemas) -> None:
    """The CRD requires spec.canary[].predictor.model.name (KServe's CRD generation removes that
    requirement from spec.predictor.model only): without it the API server refuses the service."""
    isvc = built("canary/standard", "InferenceService", "llm-small-tokens")
    del isvc["spec"]["canary"][0]["predictor"]["model"]["name"]
    assert schemas.errors(isvc) == ["spec.canary[0].predictor.model: 'name' is a required property"]


@pytest.mark.parametrize(("field", "value", "error"), [
    ("storageURI", "hf://Qwen/Qwen2.5-1.5B-Instruct", f"spec.predictor.model.storageURI: unknown field, {PRUNED}"),
    ("runtime", 7, "spec.predictor.model.runtime: 7 is not of type 'string'"),
])
def test_misspelt_and_mistyped_fields_are_found(schemas: CrdSchemas, field: str, value: object, error: str) -> None:
    isvc = copy.deepcopy(built("base", "InferenceService", "llm-small"))
    isvc["spec"]["predictor"]["model"][field] = value
    assert schemas.errors(isvc) == [error]
