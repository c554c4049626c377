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

    from router.auth import ApiKeys, ApiKeysError, require_api_keys
    from router.config import ConfigError, RouterConfig, load_config
    from router.decision_log import DecisionLogError
    from router.features import TokenizerError
    from router.learned_policy import LearnedModelError
    from router.model import RouterModel
    from router.openai_edge import OpenAIEdge, add_openai_edge
    from router.websocket_edge import RoutedGenerationBackend
    from serving.server import (
        add_server_limit_arguments,
        check_server_limits,
        configure_logging,
        describe_server_limits,
        install_http_layers,
    )
    from serving.shutdown import drain_on_signal
    from serving.websocket_session import (
        add_websocket_arguments,
        add_websocket_route,
        check_websocket_arguments,
        session_limits,
    )

logger = logging.getLogger("router")


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
    add_server_limit_arguments(parser)
    parser.add_argument("--api_keys_file", default=None,
                        help="file of API keys, one per line (# comments): /openai/v1/* then requires "
                             "'Authorization: Bearer <key>' (unset: no authentication)")
    add_websocket_arguments(parser)
    # Unset unless given, so that the config's model_name applies by default.
    parser.set_defaults(model_name=None)
    return parser


def build_model(args: argparse.Namespace, config: RouterConfig) -> RouterModel:
    """`--model_name`, when given, overrides the config's."""
    return RouterModel(args.model_name or config.model_name, config, args.tokenizer_dir)


def load_api_keys(args: argparse.Namespace) -> ApiKeys:
    return ApiKeys.from_file(args.api_keys_file) if args.api_keys_file else ApiKeys([])


def install_routes(app: FastAPI, model: RouterModel, args: argparse.Namespace, api_keys: ApiKeys) -> None:
    """Everything the router adds to KServe's app: the shared HTTP layers, the API key check of
    the OpenAI edge, the edge itself, its WebSocket generate route (same keys) and SIGTERM draining."""
    install_http_layers(app, args)
    require_api_keys(app, api_keys)
    edge = OpenAIEdge(model)
    add_openai_edge(app, edge)
    websocket_sessions = add_websocket_route(app, RoutedGenerationBackend(edge), session_limits(args),
                                             api_keys.check_api_key)
    drain_on_signal(app, model, args.grace_period, websocket_sessions)


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    check_server_limits(parser, args)
    check_websocket_arguments(parser, args)
    configure_logging(args, logger.name)
    try:
        api_keys = load_api_keys(args)
        model = build_model(args, load_config(args.config))
        model.load()
    except (ApiKeysError, ConfigError, TokenizerError, LearnedModelError) as exc:
        logger.error("cannot start the router: %s", exc)
        sys.exit(2)
    logger.info("serving router %r on http %d / grpc %d: %s api_keys=%s", model.name, args.http_port,
                args.grpc_port, describe_server_limits(args), "required" if api_keys.required else "off")
    try:
        install_routes(model_server.app, model, args, api_keys)
    except DecisionLogError as exc:
        logger.error("cannot start the router: %s", exc)
        sys.exit(2)
    kserve.ModelServer(grace_period=args.grace_period).start([model])


if __name__ == "__main__":
    main()
