"""The router: `python -m router --config router.yaml` serves the routing decision as a KServe
model (v1/v2 predict, for an InferenceGraph's Switch) and an OpenAI-compatible edge that routes,
streams and falls back (/openai/v1), OpenAI's Files and Batch APIs whose lines it routes the same
way on spare capacity, with /metrics."""

from __future__ import annotations

import argparse
import logging

from router.cli import CONFIG_FLAG, config_flag_hidden_from_kserve

with config_flag_hidden_from_kserve():
    from fastapi import FastAPI

    from router.batch.setup import (
        add_batch_arguments,
        check_batch_arguments,
        install_batch_api,
    )
    from router.config import ConfigError, RouterConfig, load_config
    from router.decision_log import DecisionLogError
    from router.embeddings import EmbeddingsUnavailable
    from router.features import TokenizerError
    from router.gateway.gateway import Gateway
    from router.gateway.setup import (
        ApiKeysError,
        add_gateway_arguments,
        build_gateway,
        check_gateway_arguments,
        install_gateway,
        load_tenants,
    )
    from router.gateway.tenants import TenantsError
    from router.learned_policy import LearnedModelError
    from router.model import RouterModel
    from router.openai_edge import OpenAIEdge, add_openai_edge
    from router.response_metrics import ResponseStatusMiddleware
    from router.websocket_edge import RoutedGenerationBackend
    from serving.component import component_parser, exit_if_cannot_start, parse_component_args, serve, start_tracing
    from serving.server import describe_server_limits
    from serving.tracing import ROUTER_SERVICE

logger = logging.getLogger("router")


def build_parser() -> argparse.ArgumentParser:
    parser = component_parser("python -m router", __doc__.splitlines()[0], websocket=True)
    parser.add_argument(CONFIG_FLAG, required=True, help="the router's YAML config (see router/router.yaml)")
    parser.add_argument("--tokenizer_dir", default=None,
                        help="a Hugging Face tokenizer directory to count prompt tokens with "
                             "(unset: estimated from the text's length)")
    add_gateway_arguments(parser)
    add_batch_arguments(parser)
    # Unset unless given, so that the config's model_name applies by default.
    parser.set_defaults(model_name=None)
    return parser


def build_model(args: argparse.Namespace, config: RouterConfig) -> RouterModel:
    """`--model_name`, when given, overrides the config's."""
    return RouterModel(args.model_name or config.model_name, config, args.tokenizer_dir)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_gateway_arguments(parser, args)
    check_batch_arguments(parser, args)


def install_routes(app: FastAPI, args: argparse.Namespace, edge: OpenAIEdge, gateway: Gateway | None,
                   websocket: RoutedGenerationBackend) -> None:
    """The OpenAI edge and the batch API, behind the gateway when there is one. The batch API
    first: its lifespan is then the innermost, so its worker stops before the edge and the
    gateway it sends lines through. The WebSocket API's subscriptions follow its background
    requests. The responses' statuses are counted outermost, so that every layer's own answers
    (the gateway's 429s, 413s, 500s) count too."""
    def served_models() -> list[str]:
        return [card.id for card in edge.model_cards()]

    websocket.background = install_batch_api(app, args, list(edge.replica_sets.values()), gateway, served_models)
    if gateway is not None:
        install_gateway(app, gateway)
    add_openai_edge(app, edge)
    app.add_middleware(ResponseStatusMiddleware, model_name=edge.model.name)


def main() -> None:
    parser = build_parser()
    args = parse_component_args(parser, logger.name, check_arguments)
    start_tracing(logger, "router", ROUTER_SERVICE)
    with exit_if_cannot_start(logger, "router", ApiKeysError, TenantsError, ConfigError, TokenizerError,
                              LearnedModelError):
        tenants = load_tenants(args)
        model = build_model(args, load_config(args.config))
        model.load()
    logger.info("serving router %r on http %d / grpc %d: %s api_keys=%s", model.name, args.http_port,
                args.grpc_port, describe_server_limits(args), "required" if tenants.required else "off")
    with exit_if_cannot_start(logger, "router", DecisionLogError, EmbeddingsUnavailable):
        edge = OpenAIEdge(model)
        gateway = build_gateway(args, tenants, model.token_counter)
    # The WebSocket generate route routes as the edge does, behind the same gateway.
    websocket = RoutedGenerationBackend(edge, gateway)
    serve(model, args, lambda app: install_routes(app, args, edge, gateway, websocket),
          websocket=websocket, authorize=authorizer(gateway))


def authorizer(gateway: Gateway | None):
    """The WebSocket handshake's key check (None: no keys configured)."""
    if gateway is None or not gateway.tenants.required:
        return None
    return lambda authorization: gateway.tenants.authenticate(authorization) is not None


if __name__ == "__main__":
    main()
