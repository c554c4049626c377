"""The training script in its few-step form, as CI runs it: it writes a checkpoint directory the
engine and the transformer's tokenizer load through their ordinary paths, the same weights again
for the same seed, and a model card."""

from __future__ import annotations

import json

from safetensors.torch import load_file

from runtime.engine import EngineConfig, LLMEngine, SamplingParams
from task_models.train import main
from transformer.tokenizer import ConversationTurn, TextTokenizer


def test_a_few_steps_write_a_checkpoint_that_serves(tmp_path):
    main(["--steps", "3", "--out", str(tmp_path / "a"), "--eval_items", "16", "--log_every", "1"])
    for size in ("small", "large"):
        directory = tmp_path / "a" / size
        training = json.loads((directory / "training.json").read_text())
        assert training["recipe"]["steps"] == 3 and len(training["loss_curve"]) == 3
        assert "| arithmetic |" in (directory / "MODEL_CARD.md").read_text()
        tokenizer = TextTokenizer(directory)
        prompt = tokenizer.encode_chat([ConversationTurn("user", "What is 2 plus 3?")])
        engine = LLMEngine(EngineConfig(model=str(directory), dtype="float32", device="cpu", num_threads=1))
        [output] = engine.generate([prompt], SamplingParams(max_tokens=4, temperature=0.0))
        assert len(output.output_token_ids) >= 1


def test_the_same_seed_gives_the_same_weights(tmp_path):
    for run in ("a", "b"):
        main(["--sizes", "small", "--steps", "3", "--out", str(tmp_path / run), "--eval_items", "0"])
    first = load_file(str(tmp_path / "a" / "small" / "model.safetensors"))
    second = load_file(str(tmp_path / "b" / "small" / "model.safetensors"))
    assert first.keys() == second.keys()
    assert all(first[name].equal(second[name]) for name in first)
