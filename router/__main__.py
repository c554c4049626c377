"""The router: `python -m router --config router.yaml` serves the routing decision as a KServe
model (v1/v2 predict, for an InferenceGraph's Switch) and an OpenAI-compatible edge that routes,
streams and falls back (/openai/v1), with /metrics."""

from __future__ import annotations

import argparse
import logging

from router.cli import CONFIG_FLAG, config_flag_hidden_from_kserve

with config_flag_hidden_from_kserve():
    from fastapi import FastAPI

    from router.auth import ApiKeys, ApiKeysError, require_api_keys
    from router.config import ConfigError, RouterConfig, load_config
    from router.decision_log import DecisionLogError
    from router.features import TokenizerError
    from router.learned_policy import LearnedModelError
    from router.model import RouterModel
    from router.openai_edge import OpenAIEdge, add_openai_edge
    from router.websocket_edge import RoutedGenerationBackend
    from serving.component import component_parser, exit_if_cannot_start, parse_component_args, serve
    from serving.server import describe_server_limits

logger = logging.getLogger("router")


def build_parser() -> argparse.ArgumentParser:
    parser = component_parser("python -m router", __doc__.splitlines()[0], websocket=True)
    parser.add_argument(CONFIG_FLAG, required=True, help="the router's YAML config (see router/router.yaml)")
    parser.add_argument("--tokenizer_dir", default=None,
                        help="a Hugging Face tokenizer directory to count prompt tokens with "
                             "(unset: estimated from the text's length)")
    parser.add_argument("--api_keys_file", default=None,
                        help="file of API keys, one per line (# comments): /openai/v1/* then requires "
                             "'Authorization: Bearer <key>' (unset: no authentication)")
    # Unset unless given, so that the config's model_name applies by default.
    parser.set_defaults(model_name=None)
    return parser


def build_model(args: argparse.Namespace, config: RouterConfig) -> RouterModel:
    """`--model_name`, when given, overrides the config's."""
    return RouterModel(args.model_name or config.model_name, config, args.tokenizer_dir)


def load_api_keys(args: argparse.Namespace) -> ApiKeys:
    return ApiKeys.from_file(args.api_keys_file) if args.api_keys_file else ApiKeys([])


def install_routes(app: FastAPI, edge: OpenAIEdge, api_keys: ApiKeys) -> None:
    """The OpenAI edge, behind its API key check."""
    require_api_keys(app, api_keys)
    add_openai_edge(app, edge)


def main() -> None:
    parser = build_parser()
    args = parse_component_args(parser, logger.name)
    with exit_if_cannot_start(logger, "router", ApiKeysError, ConfigError, TokenizerError, LearnedModelError):
        api_keys = load_api_keys(args)
        model = build_model(args, load_config(args.config))
        model.load()
    logger.info("serving router %r on http %d / grpc %d: %s api_keys=%s", model.name, args.http_port,
                args.grpc_port, describe_server_limits(args), "required" if api_keys.required else "off")
    with exit_if_cannot_start(logger, "router", DecisionLogError):
        edge = OpenAIEdge(model)
    # The WebSocket generate route routes as the edge does, behind the same keys.
    serve(model, args, lambda app: install_routes(app, edge, api_keys),
          websocket=RoutedGenerationBackend(edge), authorize=api_keys.check_api_key)


if __name__ == "__main__":
    main()
