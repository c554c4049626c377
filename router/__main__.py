"""The router: `python -m router --config router.yaml` serves the routing decision as a KServe
model (v1/v2 predict, for an InferenceGraph's Switch) and an OpenAI-compatible edge that routes,
streams and falls back (/openai/v1), with /metrics."""

from __future__ import annotations

import argparse
import logging
import sys

from router.cli import CONFIG_FLAG, config_flag_hidden_from_kserve

with config_flag_hidden_from_kserve():
    import kserve
    from fastapi import FastAPI
    from kserve import model_server

    from router.config import ConfigError, RouterConfig, load_config
    from router.features import TokenizerError
    from router.model import RouterModel
    from router.openai_edge import OpenAIEdge, add_openai_edge
    from serving.server import configure_logging, install_http_layers
    from serving.shutdown import drain_on_signal

logger = logging.getLogger("router")

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_GRACE_PERIOD = 30


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m router",
        description=__doc__.splitlines()[0],
        parents=[model_server.parser],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(CONFIG_FLAG, required=True, help="the router's YAML config (see router/router.yaml)")
    parser.add_argument("--tokenizer_dir", default=None,
                        help="a Hugging Face tokenizer directory to count prompt tokens with "
                             "(unset: estimated from the text's length)")
    parser.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="largest request body; larger ones get 413")
    parser.add_argument("--grace_period", type=int, default=DEFAULT_GRACE_PERIOD,
                        help="seconds in-flight requests get to finish after SIGTERM")
    # Unset unless given, so that the config's model_name applies by default.
    parser.set_defaults(model_name=None)
    return parser


def build_model(args: argparse.Namespace, config: RouterConfig) -> RouterModel:
    """`--model_name`, when given, overrides the config's."""
    return RouterModel(args.model_name or config.model_name, config, args.tokenizer_dir)


def install_routes(app: FastAPI, model: RouterModel, args: argparse.Namespace) -> None:
    """Everything the router adds to KServe's app: the shared HTTP layers, the OpenAI edge and
    SIGTERM draining."""
    install_http_layers(app, args)
    add_openai_edge(app, OpenAIEdge(model))
    drain_on_signal(app, model)


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.max_body_bytes < 1:
        parser.error("--max_body_bytes must be >= 1")
    configure_logging(args, logger.name)
    try:
        model = build_model(args, load_config(args.config))
        model.load()
    except (ConfigError, TokenizerError) as exc:
        logger.error("cannot start the router: %s", exc)
        sys.exit(2)
    logger.info("serving router %r on http %d / grpc %d: max_body_bytes=%d grace_period=%ds",
                model.name, args.http_port, args.grpc_port, args.max_body_bytes, args.grace_period)
    install_routes(model_server.app, model, args)
    kserve.ModelServer(grace_period=args.grace_period).start([model])


if __name__ == "__main__":
    main()
