"""The shape of every component's `python -m`, as KServe's own model servers have it: a parser
that extends KServe's (`component_parser`), then build the model, `load()` it, and `serve` it."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import kserve
from fastapi import FastAPI
from kserve import model_server

from serving.base_model import ServingModel
from serving.server import add_server_limit_arguments, check_server_limits, configure_logging, install_http_layers
from serving.shutdown import drain_on_signal
from serving.tracing import TracingConfigError, configure_tracing
from serving.websocket_session import (
    Authorizer,
    GenerationBackend,
    add_websocket_arguments,
    add_websocket_route,
    check_websocket_arguments,
    session_limits,
)

LIMITS_GROUP = "limits"
# Where the WebSocket flags are found in parsed arguments.
WEBSOCKET_FLAG_DEST = "ws_max_in_flight"

# A component's own routes on KServe's app.
RouteInstaller = Callable[[FastAPI], None]


def component_parser(prog: str, description: str, *, websocket: bool = False) -> argparse.ArgumentParser:
    """KServe's parser, plus the server limits every component takes (in the `limits` group,
    where a component adds its own: `limits_group`) and, for a component that serves the
    WebSocket generate protocol, its flags."""
    parser = argparse.ArgumentParser(prog=prog, description=description, parents=[model_server.parser],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_server_limit_arguments(parser.add_argument_group(LIMITS_GROUP))
    if websocket:
        add_websocket_arguments(parser)
    return parser


def limits_group(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    return next(group for group in parser._action_groups if group.title == LIMITS_GROUP)


def parse_component_args(parser: argparse.ArgumentParser, logger_name: str,
                         check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
                         ) -> argparse.Namespace:
    """The command line, checked (the server and WebSocket limits, then the component's own
    `check`, which calls parser.error), with logging configured for the component's logger."""
    args = parser.parse_args()
    check_server_limits(parser, args)
    if WEBSOCKET_FLAG_DEST in vars(args):
        check_websocket_arguments(parser, args)
    if check is not None:
        check(parser, args)
    configure_logging(args, logger_name)
    return args


@contextmanager
def exit_if_cannot_start(logger: logging.Logger, component: str, *errors: type[Exception]) -> Iterator[None]:
    """A startup failure of one of these kinds (bad config, missing files) is logged in one line
    and exits 2, without a traceback."""
    try:
        yield
    except errors as exc:
        # stacklevel: the line names the component's own code (past contextlib), as it did inline.
        logger.error("cannot start the %s: %s", component, exc, stacklevel=3)
        sys.exit(2)


def start_tracing(logger: logging.Logger, component: str, service_name: str) -> None:
    """OpenTelemetry traces as the OTEL_* variables ask (serving/tracing.py; off by default),
    under `service_name` unless OTEL_SERVICE_NAME says otherwise; a request for what this runtime
    cannot do (an unknown exporter) exits 2. Before `serve`, which adds the request spans."""
    with exit_if_cannot_start(logger, component, TracingConfigError):
        configure_tracing(service_name)


def serve(model: ServingModel, args: argparse.Namespace, install_routes: RouteInstaller | None = None,
          websocket: GenerationBackend | None = None, authorize: Authorizer | None = None) -> None:
    """Serve a loaded model on KServe's app until SIGTERM: the shared HTTP layers, the
    component's own routes, the WebSocket generate route when it has a `websocket` backend
    (connections checked by `authorize`), draining on the signal (WebSocket sessions included),
    then KServe's ModelServer (blocks)."""
    app = model_server.app
    install_http_layers(app, args)
    if install_routes is not None:
        install_routes(app)
    sessions = None
    if websocket is not None:
        sessions = add_websocket_route(app, websocket, session_limits(args), authorize)
    drain_on_signal(app, model, args.grace_period, sessions)
    kserve.ModelServer(grace_period=args.grace_period).start([model])
