"""What every component's `__main__` does the same way: KServe's logging format for our loggers,
and the HTTP layers (bounded bodies, disconnect cancellation, Retry-After, JSON by default, our
error statuses) on KServe's app."""

from __future__ import annotations

import argparse
import logging

from fastapi import FastAPI
from kserve import logging as kserve_logging

from serving.errors import add_exception_handlers
from serving.middleware import ClientConnectionMiddleware, DefaultJSONContentTypeMiddleware, RetryAfterMiddleware


def configure_logging(args: argparse.Namespace, logger_name: str) -> None:
    """KServe's logging setup, and its format for the component's own logger too."""
    if not args.configure_logging:
        return
    kserve_logging.configure_logging(args.log_config_file)
    kserve_logger = logging.getLogger(kserve_logging.KSERVE_LOGGER_NAME)
    logger = logging.getLogger(logger_name)
    logger.handlers = list(kserve_logger.handlers)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def install_http_layers(app: FastAPI, max_body_bytes: int) -> None:
    app.add_middleware(ClientConnectionMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(RetryAfterMiddleware)
    app.add_middleware(DefaultJSONContentTypeMiddleware)
    add_exception_handlers(app)
