"""Serves an InferenceGraph manifest locally with the semantics of KServe's router:
`python -m router.graph GRAPH.yaml --service NAME=URL ...` (the app is in graph_server, the
routing in graph_executor)."""

from __future__ import annotations

import argparse
import logging
import random
import re
import signal
from collections.abc import Mapping, Sequence
from types import FrameType
from urllib.parse import urlsplit

import uvicorn

from router.graph_server import GRAPH_MAX_BODY_BYTES, ServerDeadlines, create_app
from router.graph_spec import GraphSpecError, InferenceGraph, load_graph
from serving.connection_limits import (
    ConnectionLimits,
    add_connection_limit_arguments,
    check_connection_limits,
    connection_limits,
    use_connection_limits,
)
from serving.shutdown import DRAIN_SIGNALS, drain_on_signal

# Named, not __name__: run with -m, this module is __main__.
logger = logging.getLogger("router.graph")

DEFAULT_PORT = 8080  # KServe's constants.RouterPort
# The path KServe's controller appends to an InferenceService's URL, by its protocol.
PREDICT_PATHS = {"v1": "/v1/models/{name}:predict", "v2": "/v2/models/{name}/infer"}


def service_url(name: str, base_url: str, protocol: str) -> str:
    """A service's step URL: `base_url` plus the predict path KServe would use for an
    InferenceService of that name, or `base_url` verbatim when it has a path of its own."""
    if urlsplit(base_url).path.strip("/"):
        return base_url
    return base_url.rstrip("/") + PREDICT_PATHS[protocol].format(name=name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m router.graph",
        description="Serve an InferenceGraph manifest locally with the semantics of KServe's router.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("graph", help="YAML file holding one InferenceGraph (serving.kserve.io/v1alpha1)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--service", action="append", default=[], metavar="NAME=URL",
                        help="where the InferenceService a step's serviceName names listens, e.g. "
                             "small=http://127.0.0.1:9001 (the predict path is appended unless the URL has one)")
    parser.add_argument("--protocol", choices=sorted(PREDICT_PATHS), default="v1",
                        help="the protocol of the services, which decides the predict path")
    parser.add_argument("--propagate_header", action="append", default=[], metavar="PATTERN",
                        help="forward the request headers whose names this regular expression finds "
                             "(KServe's router.headers.propagate; by default none, not even Authorization)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the Splitter's draws (unset: random)")
    parser.add_argument("--max_body_bytes", type=int, default=GRAPH_MAX_BODY_BYTES,
                        help="largest request body; larger ones get 413")
    add_connection_limit_arguments(parser)
    parser.add_argument("--log_level", choices=["debug", "info", "warning", "error"], default="info",
                        help="debug logs every step")
    return parser


def _parse_services(parser: argparse.ArgumentParser, entries: Sequence[str], protocol: str) -> dict[str, str]:
    urls: dict[str, str] = {}
    for entry in entries:
        name, separator, base_url = entry.partition("=")
        parts = urlsplit(base_url)
        if not separator or not name or parts.scheme not in ("http", "https") or not parts.netloc:
            parser.error(f"--service {entry!r}: expected NAME=URL with an http(s) URL")
        if name in urls:
            parser.error(f"--service {name} is given twice")
        urls[name] = service_url(name, base_url, protocol)
    return urls


def _compile_patterns(parser: argparse.ArgumentParser, patterns: Sequence[str]) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            parser.error(f"--propagate_header {pattern!r} is not a regular expression: {error}")
    return compiled


def _log_startup(graph: InferenceGraph, service_urls: Mapping[str, str], patterns: Sequence[re.Pattern[str]],
                 deadlines: ServerDeadlines, limits: ConnectionLimits) -> None:
    logger.info("InferenceGraph %r: %d node(s)", graph.name, len(graph.nodes))
    for name, node in graph.nodes.items():
        steps = ", ".join(step.target + (f" [{step.condition}]" if step.condition else "") for step in node.steps)
        logger.info("  node %s (%s): %s", name, node.router_type.value, steps)
    for name, url in sorted(service_urls.items()):
        logger.info("  service %s -> %s", name, url)
    service_client = graph.router_timeouts.service_client
    logger.info("timeouts: read %s s, write %s s, idle %s s, per step %s s; propagated headers: %s",
                deadlines.read or "no limit", deadlines.write or "no limit", deadlines.idle,
                service_client or "no limit", ", ".join(pattern.pattern for pattern in patterns) or "none")
    logger.info("connections: %s", limits.describe())


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        graph = load_graph(args.graph)
    except (OSError, GraphSpecError) as error:
        parser.error(str(error))
    if args.max_body_bytes < 1:
        parser.error("--max_body_bytes must be >= 1")
    check_connection_limits(parser, args)
    service_urls = _parse_services(parser, args.service, args.protocol)
    patterns = _compile_patterns(parser, args.propagate_header)
    rng = random.Random(args.seed) if args.seed is not None else None
    try:
        app = create_app(graph, service_urls, patterns, rng, args.max_body_bytes)
    except ValueError as error:
        parser.error(f"{error}: give it with --service NAME=URL")
    for unused in sorted(service_urls.keys() - graph.service_names):
        logger.warning("--service %s: no step of the graph names it", unused)
    deadlines = ServerDeadlines.of(graph)
    limits = connection_limits(args)
    _log_startup(graph, service_urls, patterns, deadlines, limits)
    use_connection_limits(limits)
    drain_on_signal(app, app.state.readiness)
    # Uvicorn shuts down gracefully on SIGTERM, then raises the signal again to the handler it
    # found: exit 0 there, as KServe's router does once its server has shut down.
    for sig in DRAIN_SIGNALS:
        signal.signal(sig, _exit_after_shutdown)
    uvicorn.run(app, host=args.host, port=args.port, timeout_keep_alive=deadlines.idle,
                log_level=args.log_level)


def _exit_after_shutdown(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main()
