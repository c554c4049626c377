"""The transformer: `python -m transformer --model_name llm --tokenizer_dir /mnt/models
--predictor_host HOST:PORT --predictor_protocol v2|grpc-v2` (or `--demo small`) turns text into
token ids for the predictor and back: KServe v1 and v2, the text generate extension, and the
OpenAI-compatible API under /openai/v1."""

from __future__ import annotations

import argparse
import logging
import os

from fastapi import FastAPI

from runtime.cache import add_cache_dir_argument
from runtime.gguf_checkpoint import GGUFCheckpointError, hf_checkpoint_dir
from serving.component import component_parser, exit_if_cannot_start, parse_component_args, serve, start_tracing
from serving.server import describe_server_limits
from serving.tracing import TRANSFORMER_SERVICE
from transformer.generate_routes import add_generate_routes
from transformer.model import TextModel
from transformer.openai_api import add_openai_routes
from transformer.predictor_client import PROTOCOLS, PredictorSettings
from transformer.tokenizer import TextTokenizer, TokenizerLoadError
from transformer.websocket import TextModelBackend

logger = logging.getLogger("transformer")


def build_parser() -> argparse.ArgumentParser:
    parser = component_parser("python -m transformer", __doc__.splitlines()[0], websocket=True)
    # KServe's default is v1, which our predictor serves for clients, not for token streams.
    parser.set_defaults(predictor_protocol="v2")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tokenizer_dir", default="/mnt/models",
                        help="checkpoint directory with tokenizer.json / tokenizer_config.json, or a .gguf "
                             "file (or a directory holding one), converted once into --cache_dir")
    source.add_argument("--demo", choices=("small", "large"), help="the embedded demo model's tokenizer")
    add_cache_dir_argument(parser)
    parser.add_argument("--max_model_len", type=int, default=None,
                        help="context length prompts are checked against (unset: the checkpoint's)")
    parser.add_argument("--predictor_rest_host", default=None,
                        help="host:port of the predictor's REST server, for streams when the protocol is "
                             "grpc-v2 (unset: the predictor host on port 8080)")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.predictor_protocol not in PROTOCOLS:
        parser.error(f"--predictor_protocol must be one of {', '.join(PROTOCOLS)} (token ids travel over v2)")
    if not args.predictor_host:
        parser.error("--predictor_host is required (host:port of the predictor)")
    if args.max_model_len is not None and args.max_model_len < 2:
        parser.error("--max_model_len must be >= 2")


def predictor_settings(args: argparse.Namespace) -> PredictorSettings:
    return PredictorSettings(
        host=args.predictor_host,
        protocol=args.predictor_protocol,
        rest_host=args.predictor_rest_host,
        use_ssl=args.predictor_use_ssl,
        timeout_seconds=args.predictor_request_timeout_seconds,
        retries=args.predictor_request_retries,
        check_ready=args.enable_predictor_health_check,
    )


def tokenizer_dir(args: argparse.Namespace) -> str:
    """--tokenizer_dir (a GGUF file's converted directory, converted on first use), or with --demo
    the demo model's directory (built on first use)."""
    if not args.demo:
        return str(hf_checkpoint_dir(args.tokenizer_dir, args.cache_dir))
    # Imported only when asked for: the demo model is no part of serving a real checkpoint.
    from runtime.demo import build_demo_model

    return str(build_demo_model(args.demo, args.cache_dir))


def install_routes(app: FastAPI, model: TextModel) -> None:
    """The OpenAI API and the text generate extension."""
    add_openai_routes(app, model)
    add_generate_routes(app, model)


def main() -> None:
    # One prompt at a time, on the event loop's thread: the tokenizers thread pool would only add
    # a hand-off to another thread per call.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parse_component_args(parser, logger.name, check_arguments)
    start_tracing(logger, "transformer", TRANSFORMER_SERVICE)
    with exit_if_cannot_start(logger, "transformer", TokenizerLoadError, GGUFCheckpointError):
        tokenizer = TextTokenizer(tokenizer_dir(args), args.max_model_len)
    model = TextModel(args.model_name, tokenizer, predictor_settings(args))
    model.load()
    logger.info("serving model %r on http %d: %s", model.name, args.http_port, describe_server_limits(args))
    serve(model, args, lambda app: install_routes(app, model), websocket=TextModelBackend(model))


if __name__ == "__main__":
    main()
