"""Extracts the openAPIV3Schema of KServe's CRDs (config/crd/full in the kserve repository) into compact
JSON files that devstack.crd_validation checks the manifests against.

The API server enforces these schemas (required fields, types) and silently prunes fields they do not
name, while the kserve SDK's model classes check neither: only the published CRDs say what a cluster
accepts. Run it against a clone of github.com/kserve/kserve at the release the manifests target:

    python -m devstack.kserve_crd_schemas --git-dir kserve/.git --ref v0.21.0

It writes one `<group>_<plural>.json` per CRD (every served version's schema) and SOURCE.json, which
records the repository, the ref, its commit and `git describe`, and the file each schema came from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import yaml

KSERVE_REPOSITORY = "https://github.com/kserve/kserve"
CRD_FOLDER = "config/crd/full"
GROUP = "serving.kserve.io"
# The kinds manifests/ uses: devstack.crd_validation reports any other KServe kind as unknown, which is
# the cue to add it here and regenerate.
DEFAULT_KINDS = ("InferenceService", "InferenceGraph", "ClusterServingRuntime")
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "shared" / "kserve-crds"
SOURCE_FILE = "SOURCE.json"


def git(git_dir: Path, *arguments: str) -> str:
    """One git command's stdout, against a bare or ordinary repository (no work tree needed)."""
    return subprocess.run(["git", "--git-dir", str(git_dir), *arguments], check=True, capture_output=True,
                          text=True).stdout


def crd_paths(git_dir: Path, commit: str) -> list[str]:
    """Every KServe-group CRD file at the commit, nested folders (llmisvc/, localmodel/) included."""
    listing = git(git_dir, "ls-tree", "-r", "--name-only", commit, CRD_FOLDER).split()
    return sorted(path for path in listing if Path(path).name.startswith(f"{GROUP}_") and path.endswith(".yaml"))


def served_schemas(crd: dict) -> dict[str, dict]:
    """openAPIV3Schema by version name, for the versions the API server serves."""
    return {version["name"]: version["schema"]["openAPIV3Schema"]
            for version in crd["spec"]["versions"] if version.get("served", False)}


def extract(git_dir: Path, ref: str, kinds: set[str], output: Path) -> dict:
    """Writes the kinds' schemas and SOURCE.json under `output`; returns what SOURCE.json records."""
    commit = git(git_dir, "rev-parse", f"{ref}^{{commit}}").strip()
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob("*.json"):  # the folder holds only generated data: no kind left over
        stale.unlink()
    files: dict[str, str] = {}
    for path in crd_paths(git_dir, commit):
        crd = yaml.safe_load(git(git_dir, "show", f"{commit}:{path}"))
        kind = crd["spec"]["names"]["kind"]
        if kind not in kinds:
            continue
        name = f"{crd['spec']['group']}_{crd['spec']['names']['plural']}.json"
        body = {"group": crd["spec"]["group"], "kind": kind, "versions": served_schemas(crd)}
        (output / name).write_text(json.dumps(body, separators=(",", ":"), sort_keys=True) + "\n")
        files[name] = path
    if missing := kinds - {json.loads((output / name).read_text())["kind"] for name in files}:
        raise SystemExit(f"no CRD for {sorted(missing)} under {CRD_FOLDER} at {ref}")
    source = {
        "repository": KSERVE_REPOSITORY,
        "ref": ref,
        "commit": commit,
        "describe": git(git_dir, "describe", "--tags", commit).strip(),
        "files": files,
        "generator": f"python -m devstack.kserve_crd_schemas --ref {ref} --kinds {','.join(sorted(kinds))}",
    }
    (output / SOURCE_FILE).write_text(json.dumps(source, indent=2, sort_keys=True) + "\n")
    return source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--git-dir", type=Path, required=True, help="a clone of the kserve repository")
    parser.add_argument("--ref", required=True, help="the release tag (or commit) the manifests target")
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help="comma-separated CRD kinds")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args()
    source = extract(arguments.git_dir, arguments.ref, set(arguments.kinds.split(",")), arguments.output)
    print(f"{len(source['files'])} schemas from {source['ref']} ({source['describe']}, {source['commit']}) "
          f"in {arguments.output}")


if __name__ == "__main__":
    main()
